"""Two JAX processes on CPU (gloo collectives, 127.0.0.1 coordinator, 2 devices each) run a
few sharded SFT steps and then a few RL steps through the Trainer and end with the same
parameters as one process with 4 devices. The RL steps roll out under the training mesh (each
process holds and scores its own rollouts; no parameter is gathered).

This file is also the child script: ``python tests/train/test_multiprocess.py OUT NPROC PID PORT``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

STEPS = 4
RL_STEPS = 2
ROWS = 8
REPO = Path(__file__).resolve().parents[2]


def _batch(seed: int, step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, step])
    tokens = rng.integers(2, 60, (ROWS, 12)).astype(np.int32)
    resp = np.zeros((ROWS, 12), np.int32)
    resp[:, 4:] = 1
    return {"tokens": tokens, "response_mask": resp}


def _child(out: str, nproc: int, pid: int, port: int) -> None:
    import jax

    cache = os.environ.get("DLLM_JAX_TEST_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=nproc, process_id=pid)
    from flax import nnx
    from helpers import tiny_model
    from jax.experimental import multihost_utils

    from dllm_jax.train import (
        CheckpointConfig,
        OptimConfig,
        TrainConfig,
        Trainer,
        put_batch,
        sft_objective,
    )

    assert jax.device_count() == 4 and jax.process_count() == nproc
    cfg = TrainConfig(seed=1, steps=STEPS, batch_size=ROWS, mesh=(1, 4, 1), log_every=1,
                      optim=OptimConfig(lr=1e-2, total_steps=STEPS, grad_accum=2),
                      checkpoint=CheckpointConfig(every=2, keep=1))
    n, i = jax.process_count(), jax.process_index()
    rows = ROWS // n

    def local_batch_fn(step: int) -> dict[str, np.ndarray]:  # only this process's rows
        return {k: v[i * rows:(i + 1) * rows] for k, v in _batch(cfg.seed, step).items()}

    trainer = Trainer(cfg, tiny_model("llada", seed=0), sft_objective, local_batch_fn, out,
                      progress=False, local_batch=True)
    trainer.run()
    # The global-batch path (every process passes the whole batch) places the same arrays.
    mesh = trainer.mesh
    g = put_batch(_batch(cfg.seed, 0), mesh)
    loc = put_batch(local_batch_fn(0), mesh, local=True)
    for k in g:
        np.testing.assert_array_equal(multihost_utils.process_allgather(g[k], tiled=True),
                                      multihost_utils.process_allgather(loc[k], tiled=True))
    params = multihost_utils.process_allgather(
        nnx.to_pure_dict(nnx.state(trainer.model)), tiled=True)
    if i == 0:
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        np.savez(Path(out) / "final.npz",
                 **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
    trainer.checkpointer.close()
    # RL from the SFT model on a (data 1, fsdp 2, tensor 2) mesh: fsdp splits the rows across
    # the two processes, tensor within each. Rollouts run on the sharded parameters; each
    # process scores only its own rollouts; nothing gathers the parameters.
    from dllm_jax.programs.config import RLConfig
    from dllm_jax.programs.losses import make_rl_loss
    from dllm_jax.programs.rollouts import RolloutBatcher
    from dllm_jax.sampling import LLaDAConfig

    scored: dict[int, list[int]] = {}

    def reward_fn(step, rollouts, completions):
        scored[step] = [int(r) for r in rollouts]
        return (completions == 7).mean(1) + (completions == 9).mean(1)

    rcfg = RLConfig(prompts_per_step=2, group_size=4, budget=2, selector="atpo",
                    sampler=LLaDAConfig(steps=4, gen_length=4, block_length=4,
                                        temperature=1.0)).resolved()
    batcher = RolloutBatcher(rcfg, lambda s: np.random.default_rng([5, s]).integers(2, 60, (2, 4)),
                             reward_fn, seed=3)
    rl_cfg = TrainConfig(seed=2, steps=RL_STEPS, batch_size=1, mesh=(1, 2, 2), log_every=1,
                         # eps 1e-4: Adam's first updates are ~lr * g / (|g| + eps); with the
                         # default 1e-8, float reduction-order noise on near-zero gradients
                         # (unused embedding rows) becomes lr-sized, so exact comparison needs
                         # a well-conditioned denominator.
                         optim=OptimConfig(lr=1e-2, total_steps=RL_STEPS, schedule="constant",
                                           eps=1e-4),
                         checkpoint=CheckpointConfig(every=RL_STEPS, keep=1))
    gather = multihost_utils.process_allgather

    def no_gather(*args, **kwargs):
        raise AssertionError("building an RL batch gathered arrays onto the host")

    def batch_fn(step):  # rollouts, rewards, rows: no allgather anywhere inside
        multihost_utils.process_allgather = no_gather
        try:
            return batcher(step)
        finally:
            multihost_utils.process_allgather = gather

    rl = Trainer(rl_cfg, trainer.model, make_rl_loss(rcfg, 8), batch_fn, Path(out) / "rl",
                 progress=False)
    batcher.attach(rl)
    rl.run()
    (Path(out) / f"scored_{i}.json").write_text(json.dumps(scored))
    params = multihost_utils.process_allgather(nnx.to_pure_dict(nnx.state(rl.model)), tiled=True)
    if i == 0:
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        np.savez(Path(out) / "final_rl.npz",
                 **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
    rl.checkpointer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out: Path, nproc: int, pid: int, port: int, devices: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("DLLM_JAX_TEST_CACHE", str(Path.home() / ".cache" / "dllm_jax_jit"))
    return subprocess.Popen([sys.executable, __file__, str(out), str(nproc), str(pid), str(port)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_processes_equal_one_process(tmp_path):
    port = _free_port()
    procs = [_spawn(tmp_path / "multi", 2, i, port, 2) for i in range(2)]
    procs.append(_spawn(tmp_path / "single", 1, 0, 0, 4))
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    with np.load(tmp_path / "multi" / "final.npz") as f:
        multi = {k: f[k] for k in f.files}
    with np.load(tmp_path / "single" / "final.npz") as f:
        single = {k: f[k] for k in f.files}
    assert multi.keys() == single.keys() and len(multi) > 5
    for k in multi:
        np.testing.assert_allclose(multi[k], single[k], rtol=0, atol=1e-6, err_msg=k)
    with np.load(tmp_path / "multi" / "final_rl.npz") as f, \
            np.load(tmp_path / "single" / "final_rl.npz") as g, \
            np.load(tmp_path / "single" / "final.npz") as h:
        moved = 0.0
        for k in f.files:
            np.testing.assert_allclose(f[k], g[k], rtol=0, atol=1e-6, err_msg=f"rl {k}")
            moved = max(moved, float(np.abs(g[k] - h[k]).max()))
        assert moved > 0  # the RL steps really changed the parameters
    assert len((tmp_path / "multi" / "rl" / "metrics.jsonl").read_text().splitlines()) == RL_STEPS
    # Each process scored only the rollouts its devices hold: its half of the step's 8.
    halves = [json.loads((tmp_path / "multi" / f"scored_{i}.json").read_text()) for i in range(2)]
    whole = json.loads((tmp_path / "single" / "scored_0.json").read_text())
    for step in map(str, range(RL_STEPS)):
        assert halves[0][step] == [0, 1, 2, 3] and halves[1][step] == [4, 5, 6, 7]
        assert whole[step] == list(range(8))
    # Both ran and checkpointed every step's worth of work.
    assert (tmp_path / "multi" / "checkpoints" / str(STEPS)).is_dir()
    assert len((tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()) == STEPS


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))  # helpers.py, as pytest's conftest.py sees it
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
