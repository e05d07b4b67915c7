"""Exact resume after SIGKILL, and unfinalised checkpoints are never restored.

The resume test runs this file as a script (a tiny sharded SFT run on 2 CPU devices, checkpoint
every 2 steps) in subprocesses: one uninterrupted run, and one that is SIGKILLed at a random
moment after its first checkpoint, resumed, killed again, and resumed to the end. The final
parameters must equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

STEPS = 24
REPO = Path(__file__).resolve().parents[2]


def _child(out: str, resume: bool) -> None:
    """A tiny training run (runs in a fresh process with 2 CPU devices)."""
    import jax
    from flax import nnx
    from helpers import tiny_model

    from dllm_jax.train import CheckpointConfig, OptimConfig, TrainConfig, Trainer, sft_objective

    cache = os.environ.get("DLLM_JAX_TEST_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    cfg = TrainConfig(seed=3, steps=STEPS, batch_size=8, mesh=(1, 2, 1), log_every=1,
                      optim=OptimConfig(lr=1e-2, warmup_steps=3, total_steps=STEPS,
                                        grad_accum=2),
                      checkpoint=CheckpointConfig(every=2, keep=2))

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([cfg.seed, step])
        tokens = rng.integers(2, 60, (8, 12)).astype(np.int32)
        resp = np.zeros((8, 12), np.int32)
        resp[:, 4:] = 1
        return {"tokens": tokens, "response_mask": resp}

    trainer = Trainer(cfg, tiny_model("llada", seed=0), sft_objective, batch_fn, out,
                      progress=False)
    trainer.run(resume=resume)
    flat = nnx.to_flat_state(nnx.state(trainer.model))
    np.savez(Path(out) / "final.npz",
             **{"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in flat})


def _spawn(out: Path, resume: bool = False) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("DLLM_JAX_TEST_CACHE", str(Path.home() / ".cache" / "dllm_jax_jit"))
    args = [sys.executable, __file__, str(out)] + (["--resume"] if resume else [])
    return subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _complete_steps(ckpt: Path) -> list[int]:
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir()
                  if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file())


def _kill_after_first_checkpoint(proc: subprocess.Popen, ckpt: Path, rng: random.Random,
                                 before: int) -> bool:
    """Waits for a checkpoint newer than ``before``, then SIGKILLs at a random moment.

    Returns True if the process was killed (False if it finished first).
    """
    deadline = time.monotonic() + 120
    while not any(s > before for s in _complete_steps(ckpt)):
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no checkpoint written within 120 s"
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _load(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "final.npz") as f:
        return {k: f[k] for k in f.files}


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    rng = random.Random(time.time_ns())
    ref = _spawn(tmp_path / "ref")
    victim_dir = tmp_path / "victim"
    ckpt = victim_dir / "checkpoints"
    victim = _spawn(victim_dir)
    kills = []
    killed = _kill_after_first_checkpoint(victim, ckpt, rng, before=0)
    kills.append(killed)
    if killed:  # a second kill, after the resumed run has written a newer checkpoint
        resumed = _spawn(victim_dir, resume=True)
        kills.append(_kill_after_first_checkpoint(
            resumed, ckpt, rng, before=max(_complete_steps(ckpt), default=0)))
        if resumed.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(resumed.stdout.read().decode())
    assert kills[0], "the run finished before it could be killed (make STEPS larger)"
    final = _spawn(victim_dir, resume=True)
    out, _ = final.communicate(timeout=300)
    assert final.returncode == 0, out.decode()
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out.decode()

    a, b = _load(tmp_path / "ref"), _load(victim_dir)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # Metrics of the steps replayed after each kill were rewritten, not duplicated.
    steps = [json.loads(ln)["step"] for ln in (victim_dir / "metrics.jsonl").read_text()
             .splitlines()]
    assert steps == list(range(1, STEPS + 1))
    assert _complete_steps(ckpt) == [STEPS - 2, STEPS]  # keep=2


def _small_state(value: float):
    import jax.numpy as jnp

    return {"params": {"w": jnp.full((4, 3), value, jnp.float32)},
            "step": jnp.asarray(int(value), jnp.int32)}


def test_unfinalised_checkpoints_are_skipped(tmp_path):
    import jax
    import pytest

    from dllm_jax.train.checkpoint import Checkpointer, CheckpointError, check_meta, key_data

    key = jax.random.PRNGKey(5)
    meta = {"seed": 5, "rng_key": key_data(key)}
    ck = Checkpointer(tmp_path, keep=5, async_save=False)
    for s in (2, 4):
        ck.save(s, _small_state(s), {**meta, "step": s, "data_cursor": s})
    ck.wait()
    # A save killed before orbax's final rename leaves a temporary directory ...
    # (named ``<step>.orbax-checkpoint-tmp`` by this orbax, with a timestamp by others).
    shutil.copytree(tmp_path / "4", tmp_path / "6.orbax-checkpoint-tmp")
    shutil.copytree(tmp_path / "4", tmp_path / "7.orbax-checkpoint-tmp-1700000000")
    # ... and a directory with a step name but missing pieces (e.g. a half copy) is not whole.
    (tmp_path / "8" / "state").mkdir(parents=True)
    ck2 = Checkpointer(tmp_path, keep=5)
    assert ck2.complete_steps() == [2, 4]
    assert ck2.latest_step() == 4
    state, got = ck2.restore(4, _small_state(0))
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((4, 3), 4.0))
    assert got["data_cursor"] == 4 and int(state["step"]) == 4
    check_meta(got, seed=5, rng_key=key)
    with pytest.raises(CheckpointError, match="seed"):
        check_meta(got, seed=6, rng_key=jax.random.PRNGKey(6))
    ck2.close()
    ck.close()


def test_saving_and_resuming_log_no_warnings(tmp_path, caplog):
    """Saving checkpoints and what a resumed run does with them (shape check, restore) log no
    warning: orbax once warned "Metadata file does not exist" at every resume of a chunked run
    (the demo's SFT), because the shape check read the item through a checkpointer."""
    import logging

    from dllm_jax.train.checkpoint import Checkpointer

    caplog.set_level(logging.INFO)
    ck = Checkpointer(tmp_path, keep=2)
    for s in (2, 4):
        ck.save(s, _small_state(s), {"step": s, "seed": 0, "data_cursor": s})
    ck.close()
    resumed = Checkpointer(tmp_path, keep=2)
    assert resumed.shape_mismatches(4, _small_state(0)) == []
    bigger = {"params": {"w": np.zeros((5, 3), np.float32)}, "step": np.int32(0)}
    assert resumed.shape_mismatches(4, bigger) == ["w: checkpoint (4, 3) vs this run (5, 3)"]
    state, _ = resumed.restore(4, _small_state(0))
    resumed.close()
    assert int(state["step"]) == 4
    assert caplog.records, "orbax's INFO records should reach the log (else this checks nothing)"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))  # helpers.py, as pytest's conftest.py sees it
    _child(sys.argv[1], "--resume" in sys.argv[2:])


def test_extra_state_is_checkpointed(tmp_path):
    import jax.numpy as jnp
    from helpers import tiny_model

    from dllm_jax.train import CheckpointConfig, OptimConfig, TrainConfig, Trainer, sft_objective

    cfg = TrainConfig(steps=4, batch_size=4, log_every=2,
                      optim=OptimConfig(lr=1e-2, total_steps=4),
                      checkpoint=CheckpointConfig(every=2, keep=1))

    def batch_fn(step):
        rng = np.random.default_rng(step)
        return {"tokens": rng.integers(2, 60, (4, 8)).astype(np.int32),
                "response_mask": np.ones((4, 8), np.int32)}

    box = {"ref": jnp.zeros((3,)), "host": np.zeros((2, 2), np.float32)}

    def get():
        return box

    def put(tree):
        box.update(tree)

    first = Trainer(cfg, tiny_model("llada", seed=0), sft_objective, batch_fn, tmp_path,
                    progress=False, mesh=None)
    first.register_checkpoint_extra(get, put)
    box["ref"], box["host"] = jnp.arange(3.0), np.full((2, 2), 7.0, np.float32)
    first.run()
    final = jax.device_get(first.state["params"])
    box["ref"], box["host"] = jnp.zeros((3,)), np.zeros((2, 2), np.float32)
    again = Trainer(cfg, tiny_model("llada", seed=1), sft_objective, batch_fn, tmp_path,
                    progress=False, mesh=None)
    again.register_checkpoint_extra(get, put)
    assert again.restore_latest() == 4
    np.testing.assert_array_equal(np.asarray(box["ref"]), np.arange(3.0))
    np.testing.assert_array_equal(np.asarray(box["host"]), np.full((2, 2), 7.0))
    for a, b in zip(jax.tree.leaves(again.state["params"]), jax.tree.leaves(final), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_run_directory_guards(tmp_path):
    """An existing run is refused without --resume/--overwrite; a refused resume (changed model
    shape, other seed) names the problem in one line and leaves config.yaml untouched."""
    import pytest
    from helpers import tiny_model

    from dllm_jax.train import CheckpointConfig, OptimConfig, TrainConfig, Trainer, sft_objective
    from dllm_jax.train.checkpoint import CheckpointError

    cfg = TrainConfig(steps=2, batch_size=4, log_every=1,
                      optim=OptimConfig(lr=1e-2, total_steps=2),
                      checkpoint=CheckpointConfig(every=2, keep=1))

    def batch_fn(step):
        rng = np.random.default_rng(step)
        return {"tokens": rng.integers(2, 60, (4, 8)).astype(np.int32),
                "response_mask": np.ones((4, 8), np.int32)}

    def trainer(config, model, tag):
        return Trainer(config, model, sft_objective, batch_fn, tmp_path, progress=False,
                       mesh=None, extra_config={"tag": tag})

    trainer(cfg, tiny_model("llada", seed=0), "first").run()
    written = (tmp_path / "config.yaml").read_text()
    assert "first" in written
    with pytest.raises(CheckpointError, match="already holds a run .*--resume.*--overwrite"):
        trainer(cfg, tiny_model("llada", seed=0), "second").run()
    bigger = tiny_model("llada", seed=0, intermediate_size=96)
    with pytest.raises(CheckpointError, match=r"does not fit .*mlp.*\(32, 64\) vs this run "
                                              r"\(32, 96\)") as e:
        trainer(cfg, bigger, "third").run(resume=True)
    assert "\n" not in str(e.value)
    other_seed = TrainConfig(**{**cfg.__dict__, "seed": cfg.seed + 1})
    with pytest.raises(CheckpointError, match="seed"):
        trainer(other_seed, tiny_model("llada", seed=0), "fourth").run(resume=True)
    assert (tmp_path / "config.yaml").read_text() == written
    trainer(cfg, tiny_model("llada", seed=0), "fifth").run(overwrite=True)
    assert "fifth" in (tmp_path / "config.yaml").read_text()
