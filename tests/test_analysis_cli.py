"""Trajectory metrics and zones on a hand-built sequence; the generate/trajectory CLI."""

import json

import numpy as np
import pytest

from dllm_jax.analysis.zones import auc, confusion_zones, step_metrics, zscore
from dllm_jax.cli import main
from dllm_jax.weights.convert import save_checkpoint
from dllm_jax.sampling.record import step_stats
from helpers import sharpened, tiny_model


def _hand_built():
    """8 steps over 4 positions and 3 tokens: confident everywhere except at steps 4-5, where
    every still-masked position is uniform (an entropy spike and a margin collapse)."""
    t, n = 8, 4
    probs = np.tile(np.array([0.9, 0.05, 0.05]), (t, n, 1))
    probs[4:6] = 1.0 / 3
    masked = np.ones((t, n), bool)
    masked[:, 0] = False  # position 0 committed before the start: never counted
    probs[:, 0] = [1 / 3, 1 / 3, 1 / 3]
    return probs, masked


def test_step_metrics_match_hand_computation():
    probs, masked = _hand_built()
    m = step_metrics(probs, masked)
    h_conf = -(0.9 * np.log(0.9) + 2 * 0.05 * np.log(0.05))
    h_unif = np.log(3)
    np.testing.assert_allclose(m["entropy"], [h_conf] * 4 + [h_unif] * 2 + [h_conf] * 2,
                               rtol=1e-12)
    np.testing.assert_allclose(m["margin"], [0.85] * 4 + [0.0] * 2 + [0.85] * 2, atol=1e-12)
    expect_roec = np.zeros(8)
    expect_roec[4] = expect_roec[6] = h_unif - h_conf
    np.testing.assert_allclose(m["roec"], expect_roec, atol=1e-12)
    # The sampler's in-graph statistics agree with the analysis module.
    h, cm = step_stats(probs.astype(np.float32), masked)
    np.testing.assert_allclose(np.asarray(h), m["entropy"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(cm), m["margin"], atol=1e-6)


def test_zone_detection_finds_the_spike():
    probs, masked = _hand_built()
    m = step_metrics(probs, masked)
    zones = confusion_zones(m["roec"], m["margin"], threshold=1.0)
    assert [(z.start, z.end) for z in zones] == [(4, 7)]  # margin collapse 4-5, RoEC at 6
    z = zscore(1 - m["margin"])
    assert z[4] > 1 and z[0] < 0
    assert confusion_zones(np.zeros(5), np.ones(5)) == []  # flat profile: no zone
    assert zscore(np.ones(4)).tolist() == [0, 0, 0, 0]


def test_auc():
    assert auc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert auc([1, 1], [1, 0]) == 0.5
    assert np.isnan(auc([1, 2], [1, 1]))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model"
    save_checkpoint(sharpened(tiny_model("llada", seed=2)), path)
    return path


def test_generate_cli_json(ckpt, capsys, tmp_path):
    traj = tmp_path / "t.npz"
    rc = main(["generate", "--model", str(ckpt), "--prompt-ids", "3,4,5;6,7", "--gen-length",
               "8", "--steps", "8", "--block-length", "4", "--json", "--trajectory", str(traj)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["sequences"]) == 2 and len(out["sequences"][0]) == 11
    assert out["text"] is None
    rec = np.load(traj)
    assert rec["step_map"].shape == (2, 8) and rec["entropy"].shape == (2, 8)


def test_trajectory_cli_plot(ckpt, capsys, tmp_path):
    png = tmp_path / "t.png"
    rc = main(["trajectory", "--model", str(ckpt), "--prompt-ids", "3,4,5", "--gen-length", "8",
               "--steps", "8", "--block-length", "8", "--plot", str(png), "--json"])
    assert rc == 0 and png.stat().st_size > 1000
    out = json.loads(capsys.readouterr().out)
    assert len(out["steps"][0]["entropy"]) == 8 and "zones" in out["steps"][0]


@pytest.mark.parametrize("argv,msg", [
    (["--gen-length", "10", "--block-length", "4"], "not divisible by block_length"),
    (["--steps", "3", "--gen-length", "8", "--block-length", "4"], "not divisible by the number"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--remasking", "lowest"], "unknown remasking"),
    (["--alg", "entropy"], "--alg not used by --sampler llada"),
    (["--prompt-ids", "1,x"], "--prompt-ids must look like"),
    (["--prompt-ids", "1,9999"], "outside the vocabulary"),
])
def test_generate_cli_bad_input_one_line(ckpt, capsys, argv, msg):
    base = ["generate", "--model", str(ckpt)]
    if "--prompt-ids" not in argv:
        base += ["--prompt-ids", "1,2"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_generate_cli_missing_model(capsys, tmp_path):
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt-ids", "1"]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_generate_cli_with_text_prompt_and_saved_tokenizer(ckpt, capsys, tmp_path):
    from dllm_jax.tasks import CharTokenizer

    tok_dir = tmp_path / "tok"
    CharTokenizer().save(tok_dir)
    rc = main(["generate", "--model", str(ckpt), "--prompt", "12+34=", "--prompt", "7+8=",
               "--tokenizer", str(tok_dir), "--gen-length", "4", "--steps", "4",
               "--block-length", "4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["text"]) == 2 and all(isinstance(t, str) for t in out["text"])
    assert len(out["sequences"][0]) == 6 + 4  # the longer prompt, left-padded batch


def test_cli_lists_every_command():
    from dllm_jax.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"convert", "generate", "trajectory", "eval", "train", "demo",
                                "serve"}
