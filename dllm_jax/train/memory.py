"""Per-device memory of a sharded SFT train step, measured without materialising anything.

The train state is built with ``jax.eval_shape`` (parameters, AdamW moments, step), every leaf
becomes a ``jax.ShapeDtypeStruct`` carrying its ``NamedSharding``, and the real train step
(:func:`dllm_jax.train.step.make_train_step` with :func:`~dllm_jax.train.step.sft_objective`)
is lowered and compiled for the mesh; XLA's ``memory_analysis()`` of the compiled program then
gives per-device argument, output, alias and temporary bytes. On a machine without
accelerators, simulate the devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
before JAX starts (``scripts/estimate_memory.py`` does this).

Compiling the full 32-layer LLaDA-8B step on a small CPU takes a while, so
:func:`extrapolate` compiles 1- and 2-layer variants of the same shapes and extends the
per-layer slope linearly (every block has identical shapes, so the program grows by one
block's parameters, moments, gradients and saved activations per layer).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dllm_jax.model import sharding as shd
from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import init_model
from dllm_jax.train import lora
from dllm_jax.train import step as st
from dllm_jax.train.config import OptimConfig

GIB = 1024**3


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryReport:
    """Per-device bytes of one compiled train step.

    Attributes:
      num_layers: transformer blocks in the compiled program.
      mesh_shape: ``(data, fsdp, tensor)``.
      global_batch / seq_len / grad_accum: the step's batch ``[global_batch, seq_len]``, split
        into ``grad_accum`` micro-batches.
      params_bytes / opt_bytes: this device's shard of the parameters / optimiser state
        (from the shardings, exact).
      argument_bytes / output_bytes / alias_bytes / temp_bytes: XLA's memory analysis of the
        compiled step (outputs aliased to donated inputs are counted in ``alias_bytes``).
      compile_seconds: lowering + compilation wall time.
    """

    num_layers: int
    mesh_shape: tuple[int, int, int]
    global_batch: int
    seq_len: int
    grad_accum: int
    params_bytes: int
    opt_bytes: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    compile_seconds: float

    @property
    def peak_bytes(self) -> int:
        """Live bytes at the peak: inputs, new outputs not written in place, temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def row(self) -> dict[str, float]:
        """The figures in GiB (for printing and JSON)."""
        return {k: round(getattr(self, k) / GIB, 3) for k in
                ("params_bytes", "opt_bytes", "argument_bytes", "output_bytes", "alias_bytes",
                 "temp_bytes", "peak_bytes")}


def _device_bytes(tree, shardings) -> int:
    """Bytes of one device's shard of every leaf of ``tree`` (largest shard per leaf)."""
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        total += math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
    return total


def abstract_train_inputs(config: ModelConfig, optimizer, mesh: Mesh, global_batch: int,
                          seq_len: int, rules: shd.ShardingRules | None = None,
                          lora_config: lora.LoRAConfig | None = None):
    """Abstract ``(model, optimizer, shardings, state, batch, key, params_fn)`` for compiling
    a train step.

    Nothing is allocated: the model comes from ``nnx.eval_shape``; the state, batch
    (``tokens`` and ``response_mask`` ``[global_batch, seq_len]`` int32) and key are
    ``jax.ShapeDtypeStruct`` with their mesh shardings attached. With an enabled
    ``lora_config`` the parameters are ``{"base", "lora"}`` and the optimiser is masked.
    """
    model = nnx.eval_shape(lambda: init_model(config))
    base = nnx.to_pure_dict(nnx.state(model))
    params = params_sh = params_fn = None
    if lora_config is not None and lora_config.enabled:
        params = jax.eval_shape(lambda b: lora.train_params(b, lora_config, jax.random.PRNGKey(0)),
                                base)
        params_sh = lora.shardings(st.param_shardings(model, mesh, rules), base, lora_config)
        optimizer = lora.masked_optimizer(optimizer, params)
        params_fn = lora.params_fn(lora_config)
    shardings = st.state_shardings(model, optimizer, mesh, rules, params=params,
                                   params_shardings=params_sh)
    state = jax.eval_shape(lambda p: {"params": p, "opt": optimizer.init(p),
                                      "step": jnp.zeros((), jnp.int32)},
                           base if params is None else params)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         state, shardings)
    bsh = NamedSharding(mesh, P(("data", "fsdp")))
    tokens = jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=bsh)
    batch = {"tokens": tokens, "response_mask": tokens}
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P()))
    return model, optimizer, shardings, state, batch, key, params_fn


def measure(config: ModelConfig, mesh: Mesh, *, global_batch: int, seq_len: int,
            grad_accum: int = 1, optim: OptimConfig | None = None,
            rules: shd.ShardingRules | None = None,
            lora_config: lora.LoRAConfig | None = None,
            log: Callable[[str], None] = lambda _: None) -> MemoryReport:
    """Compiles the SFT train step for ``config`` on ``mesh`` and reads its memory analysis.

    Args:
      config: model shape (its ``dtype`` is the parameter dtype, its ``remat`` the policy).
      mesh: a ``(data, fsdp, tensor)`` mesh (simulated CPU devices are fine).
      global_batch: rows per step across all devices; must divide by ``data * fsdp`` after
        splitting into ``grad_accum`` micro-batches.
      seq_len: tokens per row.
      grad_accum: micro-batches per step (scanned inside the step).
      optim: optimiser config (AdamW; its moments take the parameter dtype).
      lora_config: train low-rank adapters only (see :mod:`dllm_jax.train.lora`).
    """
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % grad_accum or (global_batch // grad_accum) % dp:
        raise ValueError(f"global_batch {global_batch} must split into {grad_accum} micro-batches "
                         f"each divisible by data*fsdp = {dp}")
    optimizer = st.make_optimizer(optim or OptimConfig(lr=1e-5, total_steps=1000))
    model, optimizer, shardings, state, batch, key, params_fn = abstract_train_inputs(
        config, optimizer, mesh, global_batch, seq_len, rules, lora_config)
    step_fn = st.make_train_step(nnx.graphdef(model), st.sft_objective, optimizer,
                                 grad_accum=grad_accum, mesh=mesh, shardings=shardings,
                                 rules=rules, params_fn=params_fn)
    log(f"compiling {config.num_layers}-layer step on mesh {tuple(mesh.shape.values())}, "
        f"batch {global_batch} x {seq_len} ...")
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch, key).compile()
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    report = MemoryReport(
        num_layers=config.num_layers, mesh_shape=tuple(mesh.shape.values()),
        global_batch=global_batch, seq_len=seq_len, grad_accum=grad_accum,
        params_bytes=_device_bytes(state["params"], shardings["params"]),
        opt_bytes=_device_bytes(state["opt"], shardings["opt"]),
        argument_bytes=int(ma.argument_size_in_bytes), output_bytes=int(ma.output_size_in_bytes),
        alias_bytes=int(ma.alias_size_in_bytes), temp_bytes=int(ma.temp_size_in_bytes),
        compile_seconds=seconds)
    log(f"  compiled in {seconds:.1f}s: {report.row()}")
    return report


def extrapolate(a: MemoryReport, b: MemoryReport, num_layers: int) -> MemoryReport:
    """Linear per-layer extension of two measurements with different layer counts."""
    if a.num_layers == b.num_layers:
        raise ValueError("extrapolate needs two different layer counts")
    span = b.num_layers - a.num_layers

    def ext(name: str) -> int:
        va, vb = getattr(a, name), getattr(b, name)
        return int(round(va + (vb - va) * (num_layers - a.num_layers) / span))

    fields = ("params_bytes", "opt_bytes", "argument_bytes", "output_bytes", "alias_bytes",
              "temp_bytes")
    return dataclasses.replace(b, num_layers=num_layers, compile_seconds=0.0,
                               **{f: ext(f) for f in fields})
