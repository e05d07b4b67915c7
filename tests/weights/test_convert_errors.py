"""Bad conversion input: one clear line naming the file and the problem; nothing written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
from helpers import tiny_model

from dllm_jax import weights
from dllm_jax.cli import main
from dllm_jax.weights.safetensors_io import write_safetensors


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("good") / "hf"
    weights.export_hf(tiny_model("qwen2", seed=5), d)
    return d


def _copy(good_dir, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(good_dir, d)
    return d


def _run(hf_dir, out, capsys):
    code = main(["convert", "hf-to-orbax", "--hf-dir", str(hf_dir), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    return code, err


def _rewrite(d, edit):
    """Rewrites model.safetensors after ``edit(dict name -> array)``."""
    from dllm_jax.weights.safetensors_io import SafetensorsFile

    f = SafetensorsFile(d / "model.safetensors")
    tensors = {k: np.array(f.get(k)) for k in f.keys()}
    f.close()
    edit(tensors)
    write_safetensors(d / "model.safetensors",
                      [(k, v.shape, v.dtype) for k, v in tensors.items()], tensors.__getitem__)


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _patch_header(d, edit):
    """Rewrites the JSON header of model.safetensors with ``edit(header) -> header`` (or raw
    bytes), keeping the data bytes as they are."""
    f = d / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    new = edit(json.loads(raw[8:8 + n]))
    blob = new if isinstance(new, bytes) else json.dumps(new).encode()
    f.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _first(header):
    return sorted(k for k in header if k != "__metadata__")[0]


def _set_offsets(shift):
    """Moves the first tensor's data_offsets by ``shift`` (keeping its length)."""
    def edit(h):
        k = _first(h)
        b, e = h[k]["data_offsets"]
        h[k]["data_offsets"] = [b + shift, e + shift]
        return h
    return edit


def _negative_offsets(h):
    k = _first(h)
    b, e = h[k]["data_offsets"]
    h[k]["data_offsets"] = [-(e - b), 0]
    return h


def _second_overlaps(h):
    k = sorted((v["data_offsets"][0], k) for k, v in h.items() if k != "__metadata__")[1][1]
    b, e = h[k]["data_offsets"]
    h[k]["data_offsets"] = [b - 4, e - 4]
    return h


CASES = {
    "header_negative_offsets": (lambda d: _patch_header(d, _negative_offsets),
                                "data_offsets [-"),
    "header_is_a_list": (lambda d: _patch_header(d, lambda h: [h]),
                         "corrupt header (a JSON list, not an object)"),
    "header_without_offsets": (lambda d: _patch_header(
        d, lambda h: {**h, _first(h): {k: v for k, v in h[_first(h)].items()
                                       if k != "data_offsets"}}), "data_offsets None"),
    "header_overlapping_tensors": (lambda d: _patch_header(d, _second_overlaps), "overlaps"),
    "header_gap": (lambda d: _patch_header(d, lambda h: {
        k: ({**v, "data_offsets": [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]}
            if k != "__metadata__" else v) for k, v in h.items()}), "gap"),
    "header_size_mismatch": (lambda d: _patch_header(d, lambda h: {
        **h, _first(h): {**h[_first(h)], "shape": [1]}}), "needs 4"),
    "header_not_utf8": (lambda d: _patch_header(d, lambda h: b'{"\xff": 1}'.replace(
        b"\\xff", bytes([255]))), "corrupt header"),
    "nan_weights": (lambda d: _rewrite(d, lambda t: t.__setitem__(
        "model.norm.weight", np.full(t["model.norm.weight"].shape, np.nan, np.float32))),
        "tensor model.norm.weight holds NaN or Inf"),
    "int_weights": (lambda d: _rewrite(d, lambda t: t.__setitem__(
        "model.norm.weight", np.ones(t["model.norm.weight"].shape, np.int32))),
        "tensor model.norm.weight has dtype I32, expected a floating-point tensor"),
    "missing_safetensors": (lambda d: (d / "model.safetensors").unlink(),
                            "no .safetensors files found"),
    "truncated": (lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-100]), "truncated"),
    "wrong_shape": (lambda d: _rewrite(d, lambda t: t.__setitem__(
        "model.layers.0.mlp.up_proj.weight", np.zeros((3, 3), np.float32))),
        "model.layers.0.mlp.up_proj.weight has shape [3, 3], expected [64, 32]"),
    "missing_key": (lambda d: _rewrite(d, lambda t: t.pop("model.norm.weight")),
                    "missing tensor model.norm.weight"),
    "unexpected_key": (lambda d: _rewrite(d, lambda t: t.__setitem__(
        "model.layers.0.extra.weight", np.zeros((2,), np.float32))),
        "unexpected tensor(s): model.layers.0.extra.weight"),
    "model_type": (lambda d: _edit_config(d, model_type="gpt2"),
                   "unsupported model_type 'gpt2'"),
    "rope_scaling": (lambda d: _edit_config(d, rope_scaling={"type": "linear", "factor": 2.0}),
                     "rope scaling"),
    "sliding_window": (lambda d: _edit_config(d, use_sliding_window=True),
                       "sliding-window"),
    "attention_bias": (lambda d: _edit_config(d, model_type="llama", attention_bias=True),
                       "attention bias"),
    "no_config": (lambda d: (d / "config.json").unlink(), "config.json: missing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_and_nothing_written(good_dir, tmp_path, capsys, case):
    d = _copy(good_dir, tmp_path)
    breaker, message = CASES[case]
    breaker(d)
    out = tmp_path / "out"
    code, err = _run(d, out, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert message in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_existing_nonempty_output_is_refused(good_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _run(good_dir, out, capsys)
    assert code == 2 and "output exists and is not empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_good_input_converts_and_round_trips(good_dir, tmp_path, capsys):
    assert _run(good_dir, tmp_path / "ckpt", capsys)[0] == 0
    code = main(["convert", "orbax-to-hf", "--ckpt", str(tmp_path / "ckpt"),
                 "--out", str(tmp_path / "back")])
    assert code == 0
    a = weights.load_hf(good_dir)
    b = weights.load_hf(tmp_path / "back")
    import jax.numpy as jnp

    tokens = jnp.arange(10).reshape(2, 5)
    np.testing.assert_array_equal(np.asarray(a(tokens)), np.asarray(b(tokens)))


def test_bfloat16_conversion_and_sharded_export(good_dir, tmp_path):
    import jax.numpy as jnp

    weights.hf_to_checkpoint(good_dir, tmp_path / "bf16", dtype="bfloat16")
    model = weights.load_checkpoint(tmp_path / "bf16")
    assert model.config.dtype == "bfloat16"
    assert model.layers[0].mlp.up_proj.kernel.get_value().dtype == jnp.bfloat16
    # Multi-file export with an index, then load it back through the index.
    weights.export_hf(model, tmp_path / "sharded", max_shard_bytes=20_000)
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files and len(files) > 3
    again = weights.load_hf(tmp_path / "sharded", dtype="bfloat16")
    tokens = jnp.arange(10).reshape(2, 5)
    np.testing.assert_array_equal(np.asarray(model(tokens), np.float32),
                                  np.asarray(again(tokens), np.float32))


def test_nonfinite_weights_kept_on_request(good_dir, tmp_path, capsys):
    d = _copy(good_dir, tmp_path)
    _rewrite(d, lambda t: t.__setitem__(
        "model.norm.weight", np.full(t["model.norm.weight"].shape, np.inf, np.float32)))
    code = main(["convert", "hf-to-orbax", "--hf-dir", str(d), "--out", str(tmp_path / "o"),
                 "--allow-nonfinite"])
    assert code == 0, capsys.readouterr().err
    norm = weights.load_checkpoint(tmp_path / "o").norm.weight.get_value()
    assert np.isinf(np.asarray(norm)).all()


@pytest.mark.parametrize("field,value,what", [
    ("rope_scaling", {"type": "linear", "factor": 2.0}, "rope scaling"),
    ("use_sliding_window", True, "sliding-window attention"),
    ("partial_rotary_factor", 0.5, "partial rotary embeddings"),
])
def test_llada_config_refuses_math_changing_fields(field, value, what):
    from helpers import tiny_config

    from dllm_jax.errors import ConfigError
    from dllm_jax.model.config import ModelConfig

    hf = tiny_config("llada").to_hf_config()
    ModelConfig.from_hf_config(hf)  # the plain config is accepted
    with pytest.raises(ConfigError, match=f"changes the maths \\({what}\\)"):
        ModelConfig.from_hf_config({**hf, field: value})


def test_stale_temporaries_of_killed_writers_are_removed(good_dir, tmp_path, capsys):
    out = tmp_path / "out"
    dead = tmp_path / ".out.tmp-999999999-abc"  # no such process
    dead.mkdir()
    (dead / "junk").write_bytes(b"x" * 1000)
    live = tmp_path / f".out.tmp-{os.getpid()}-def"  # this process: still alive, kept
    live.mkdir()
    assert _run(good_dir, out, capsys)[0] == 0
    assert not dead.exists() and live.exists()
    mode = out.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask, oct(mode)


def test_sigterm_removes_the_temporary_directory(tmp_path):
    script = (
        "import sys, time\n"
        "from dllm_jax.weights.checkpoint import atomic_output_dir\n"
        "with atomic_output_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'part').write_text('half')\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit,message", [
    (lambda hf: [hf], "expected a JSON object, got a JSON list"),
    (lambda hf: {k: v for k, v in hf.items() if k != "hidden_size"}, "missing field 'hidden_size'"),
    (lambda hf: {**hf, "num_attention_heads": 0}, "num_attention_heads=0 must be a positive"),
    (lambda hf: {**hf, "num_hidden_layers": [2]}, "num_hidden_layers=[2] must be a positive"),
    (lambda hf: {**hf, "rope_theta": "fast"}, "malformed field value"),
])
def test_malformed_config_json_is_one_line(good_dir, tmp_path, capsys, edit, message):
    d = _copy(good_dir, tmp_path)
    hf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(edit(hf)))
    code, err = _run(d, tmp_path / "out", capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err and "config.json" in err, err


def test_output_under_a_file_is_one_line(good_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _run(good_dir, tmp_path / "file" / "out", capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "file" in err, err


def test_disk_full_is_one_line_and_leaves_nothing(good_dir, tmp_path, capsys, monkeypatch):
    import errno

    import orbax.checkpoint as ocp

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", full)
    code, err = _run(good_dir, tmp_path / "out", capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_damaged_checkpoint_is_one_line_and_debug_shows_traceback(good_dir, tmp_path, capsys):
    assert _run(good_dir, tmp_path / "ckpt", capsys)[0] == 0
    for f in (tmp_path / "ckpt" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    args = ["convert", "orbax-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out",
            str(tmp_path / "back")]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot restore the parameters" in err
    assert not (tmp_path / "back").exists()
    with pytest.raises(ValueError, match="cannot restore the parameters"):
        main(["--debug", *args])
