"""Trajectory metrics and zones on a hand-built sequence; the generate/trajectory CLI."""

import json
import re

import numpy as np
import pytest
from helpers import sharpened, tiny_model

from dllm_jax.analysis.zones import (
    auc,
    confusion_zones,
    roec,
    step_metrics,
    zone_features,
    zone_report,
    zscore,
)
from dllm_jax.cli import main
from dllm_jax.sampling import DreamConfig, generate
from dllm_jax.sampling.record import Trajectory, step_stats
from dllm_jax.weights.convert import save_checkpoint


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


def test_roec_skips_invalid_steps_and_restarts_at_each_block():
    """Two blocks of 4 steps; steps 2, 5 and 7 committed nothing (their H is garbage)."""
    h = np.array([1.0, 0.5, 9.0, 0.2, 2.0, 9.0, 1.0, 9.0])
    valid = np.array([1, 1, 0, 1, 1, 0, 1, 0], bool)
    expect = [0, 0.5, 0, 0.3, 0, 0, 1.0, 0]  # |0.2 - 0.5| across the gap; 0 at the block start
    np.testing.assert_allclose(roec(h, valid, steps_per_block=4), expect, atol=1e-12)
    np.testing.assert_allclose(roec(h, valid, steps_per_block=4, relative=True),
                               [0, 0.5, 0, 0.6, 0, 0, 0.5, 0], atol=1e-6)
    probs, masked = _hand_built()
    m = step_metrics(probs, masked, valid_T=valid, steps_per_block=4)
    assert (m["entropy"][~valid] == 0).all() and (m["margin"][~valid] == 0).all()
    assert m["roec"][4] == 0 and m["roec"][5] == 0  # block start, then an invalid step


def _insert_invalid_steps(rng, profiles, n_extra):
    """Inserts ``n_extra`` invalid steps with garbage values at random places (the same places
    in every row); returns the padded profiles, the padded valid mask and where each original
    step went."""
    t = profiles[0].shape[1]
    slots = np.sort(rng.choice(t + n_extra, n_extra, replace=False))
    keep = np.setdiff1d(np.arange(t + n_extra), slots)
    padded = []
    for x in profiles:
        out = rng.uniform(-5, 5, (x.shape[0], t + n_extra))
        out[:, keep] = x
        padded.append(out)
    valid = np.zeros((profiles[0].shape[0], t + n_extra), bool)
    valid[:, keep] = True
    return padded, valid, keep


def test_zone_statistics_ignore_inserted_invalid_steps():
    rng = np.random.default_rng(0)
    b, t = 6, 24
    h = rng.uniform(0.5, 2.0, (b, t))
    cm = rng.uniform(0.3, 0.9, (b, t))
    cm[:, 10:12] = 0.02  # a margin collapse: at least one zone per row
    r = np.abs(rng.normal(0, 0.1, (b, t)))
    (hp, cmp, rp), valid, pos = _insert_invalid_steps(rng, [h, cm, r], 9)
    base = zone_features(h, cm, r)
    padded = zone_features(hp, cmp, rp, valid_BT=valid)
    assert base["num_zones"].min() >= 1
    for name in base:
        np.testing.assert_allclose(padded[name], base[name], rtol=1e-12, err_msg=name)
    for row in range(b):
        want = [(int(pos[z.start]), int(pos[z.end - 1]) + 1, z.num_steps, z.peak)
                for z in confusion_zones(r[row], cm[row])]
        got = [(z.start, z.end, z.num_steps, z.peak)
               for z in confusion_zones(rp[row], cmp[row], valid_T=valid[row])]
        assert got == want
        np.testing.assert_allclose(zscore(1 - cmp[row], valid=valid[row])[pos],
                                   zscore(1 - cm[row]), rtol=1e-12)
    correct = np.array([1, 0, 1, 1, 0, 0], bool)

    def traj(hh, cc, rr, vv):
        z = np.zeros_like(hh)
        return Trajectory(step_map=None, confidence=None, entropy=hh, margin=cc, roec=rr,
                          num_committed=z, valid=vv)

    assert zone_report(traj(hp, cmp, rp, valid), correct) == zone_report(
        traj(h, cm, r, np.ones((b, t), bool)), correct)


def test_recorded_roec_has_no_jump_at_gaps_or_block_starts(sharp_dream):
    """Dream's ``origin`` commits nothing at some steps; two blocks of four steps."""
    cfg = DreamConfig(steps=8, max_new_tokens=8, block_length=4, alg="origin", temperature=0.7)
    prompt = np.array([[3, 17, 22, 9, 41], [12, 5, 30, 2, 8]], np.int32)
    traj = generate(sharp_dream, prompt, config=cfg, key=5, record=True).trajectory
    h, r = np.asarray(traj.entropy, np.float64), np.asarray(traj.roec)
    ncom, valid = np.asarray(traj.num_committed), np.asarray(traj.valid)
    np.testing.assert_array_equal(valid, ncom > 0)
    assert (~valid).any() and valid.any(1).all()
    smap = np.asarray(traj.step_map)
    for row in range(2):  # the valid steps are exactly the steps some position was committed at
        assert set(np.flatnonzero(valid[row])) == set(smap[row].tolist())
    expect = np.zeros_like(h)
    for row in range(2):
        prev = None
        for t in range(8):
            if t % 4 == 0:
                prev = None  # a new block: H now averages over other positions
            if valid[row, t]:
                expect[row, t] = 0.0 if prev is None else abs(h[row, t] - h[row, prev])
                prev = t
    np.testing.assert_allclose(r, expect, atol=1e-6)
    assert (np.asarray(traj.entropy)[~valid] == 0).all()
    assert (np.asarray(traj.margin)[~valid] == 0).all()
    # The naive |H_t - H_{t-1}| over all steps would differ: this trajectory has the gaps.
    naive = np.abs(np.diff(h, axis=1, prepend=h[:, :1]))
    assert np.abs(naive - expect).max() > 1.0


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
    page = tmp_path / "t.html"
    rc = main(["trajectory", "--model", str(ckpt), "--prompt-ids", "3,4,5;6,7", "--gen-length",
               "8", "--steps", "8", "--block-length", "8", "--plot", str(png), "--html",
               str(page), "--json"])
    assert rc == 0 and png.stat().st_size > 1000
    out = json.loads(capsys.readouterr().out)
    assert len(out["steps"][0]["entropy"]) == 8 and "zones" in out["steps"][0]
    assert out["steps"][0]["valid"] == [True] * 8
    html = page.read_text()
    # Self-contained: nothing loaded from elsewhere (the SVG namespace URI is only a name).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<link" not in html and "@import" not in html
    assert '"sequences"' in html or "3, 4, 5" in html or len(html) > 2000
    rc = main(["trajectory", "--model", str(ckpt), "--prompt-ids", "3,4,5"])
    assert rc == 2 and "give --plot" in capsys.readouterr().err


@pytest.mark.parametrize("argv,msg", [
    (["--gen-length", "10", "--block-length", "4"], "not divisible by block_length"),
    (["--steps", "3", "--gen-length", "8", "--block-length", "4"], "not divisible by the number"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--remasking", "lowest"], "unknown remasking"),
    (["--alg", "entropy"], "--alg not used by --sampler llada"),
    (["--prompt-ids", "1,x"], "--prompt-ids must look like"),
    (["--prompt-ids", "1,9999"], "outside the vocabulary"),
    (["--gen-length", "8192", "--block-length", "256", "--steps", "32"],
     "exceeds the model's max_position_embeddings"),
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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run's layout: ``<run>/model`` with the generation settings a run on addition
    saves (4 tokens, one per step) and ``<run>/checkpoints/12/state``."""
    from dllm_jax.weights import save_generation_settings

    run = tmp_path_factory.mktemp("run")
    save_checkpoint(sharpened(tiny_model("llada", seed=2)), run / "model")
    save_generation_settings(run / "model", {"gen_length": 4, "steps": 4, "block_length": 4})
    (run / "checkpoints" / "12" / "state").mkdir(parents=True)
    return run


def test_generate_and_trajectory_default_to_the_saved_generation_settings(run_dir, capsys):
    model = str(run_dir / "model")
    base = ["generate", "--model", model, "--prompt-ids", "3,4,5;6,7", "--json"]
    assert main(base) == 0
    out, err = capsys.readouterr()
    saved = json.loads(out)["sequences"]
    assert [len(r) for r in saved] == [3 + 4] * 2  # not the preset's 128 tokens
    assert "dllm_jax_generation.json: --gen-length 4, --steps 4, --block-length 4" in err
    assert main(base + ["--gen-length", "4", "--steps", "4", "--block-length", "4"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["sequences"] == saved and "dllm_jax_generation" not in err
    # An explicit flag wins; --gen-length drops the saved steps and block length with it.
    assert main(base + ["--steps", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)["sequences"][0]) == 3 + 4
    assert "--gen-length 4, --block-length 4" in err and "--steps" not in err
    assert main(base + ["--max-new-tokens", "8", "--steps", "8", "--block-length", "8"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)["sequences"][0]) == 3 + 8 and "dllm_jax_generation" not in err
    assert main(["trajectory", "--model", model, "--prompt-ids", "3,4,5", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["steps"][0]["entropy"]) == 4


def test_model_flag_on_a_run_directory_names_its_model(run_dir, capsys, tmp_path):
    from dllm_jax.errors import ConversionError
    from dllm_jax.weights import from_pretrained

    for given, what in [(run_dir, "a training run directory"),
                        (run_dir / "checkpoints", "inside a training run"),
                        (run_dir / "checkpoints" / "12", "inside a training run"),
                        (run_dir / "checkpoints" / "12" / "state", "inside a training run")]:
        for cmd in ("generate", "trajectory"):
            assert main([cmd, "--model", str(given), "--prompt-ids", "1", "--json"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"dllm-jax: error: {given} is {what}, not a model; use "
                           f"{run_dir / 'model'}"], err
        with pytest.raises(ConversionError, match=f"use {run_dir / 'model'}$"):
            from_pretrained(given)
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints" / "3").mkdir(parents=True)
    assert main(["generate", "--model", str(unfinished / "checkpoints" / "3"),
                 "--prompt-ids", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"use {unfinished / 'model'} (written when the run finishes)")


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


def test_record_keeps_the_top_alternatives_at_commit(sharp_llada):
    """At temperature 0 LLaDA commits the argmax over non-MASK tokens: the first alternative is
    the committed token unless MASK itself was the most probable; probabilities are sorted and
    the committed token's probability is among them."""
    from dllm_jax.sampling import LLaDAConfig, generate

    prompt = np.array([[3, 4, 5, 6], [7, 8, 9, 10]], np.int32)
    cfg = LLaDAConfig(steps=8, gen_length=8, block_length=4)
    out = generate(sharp_llada, prompt, config=cfg, key=0, record=True)
    t = out.trajectory
    ids, probs = np.asarray(t.top_ids), np.asarray(t.top_probs)
    committed = np.asarray(out.sequences)[:, 4:]
    mask_id = sharp_llada.config.mask_token_id
    assert ids.shape == probs.shape == (2, 8, 3)
    assert (np.diff(probs, axis=-1) <= 1e-7).all()
    first = np.where(ids[..., 0] == mask_id, ids[..., 1], ids[..., 0])
    np.testing.assert_array_equal(first, committed)
    conf = np.asarray(t.confidence)
    hit = (ids == committed[..., None])
    np.testing.assert_allclose((probs * hit).sum(-1), conf, atol=1e-6)
