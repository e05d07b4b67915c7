"""Per-device memory of the 8B programs, measured by compilation only.

Four programs, each lowered and compiled for a mesh from ``jax.ShapeDtypeStruct`` inputs that
carry their ``NamedSharding`` (nothing is allocated), then read through XLA's
``compiled.memory_analysis()``:

- ``sft``: the train step (:func:`dllm_jax.train.step.make_train_step`) with
  :func:`~dllm_jax.train.step.sft_objective`.
- ``rl``: the same train step with the RL loss of the registry
  (:func:`dllm_jax.programs.losses.make_rl_loss`) on abstract rows (inputs, tokens, attention mask,
  targets, advantages, rollout-policy and reference log-probs).
- ``score``: the scoring of an RL step's rows (one forward over all of them, token
  log-probs), the pass the RL step's row program makes for the rollout policy and the
  reference.
- ``sampler``: one block of the dual-cache sampler: the prefill (logits of the block and every
  layer's keys/values), then a scan of cached steps of the block
  (:meth:`~dllm_jax.model.transformer.Transformer.decode_block`, ``mode="dual"``).

Parameters follow the trainer's logical-axis rules, batches are split over ``(data, fsdp)``
and activations are constrained by the same rules (``sharding.use_mesh``). On a machine
without accelerators, simulate the devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts, or compile for a TPU
slice's devices from ``jax.experimental.topologies`` (needs ``libtpu``;
``scripts/estimate_memory.py --tpu``).

Compiling all 32 layers is slow on a small CPU, so :func:`extrapolate` extends 1- and 2-layer
measurements linearly per layer (every block has identical shapes). That line held to within
9% of the full compile on simulated CPU devices, but not for the TPU compiler, whose peak
moves between phases of the step as layers are added: compile every layer there.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dllm_jax import objectives as obj
from dllm_jax.model import sharding as shd
from dllm_jax.model.config import ModelConfig
from dllm_jax.model.transformer import init_model
from dllm_jax.programs.config import RLConfig
from dllm_jax.programs.losses import make_rl_loss
from dllm_jax.train import lora
from dllm_jax.train import step as st
from dllm_jax.train.config import OptimConfig

GIB = 1024**3
PROGRAMS = ("sft", "rl", "score", "sampler")
_FIELDS = ("params_bytes", "opt_bytes", "resident_bytes", "argument_bytes", "output_bytes",
           "alias_bytes", "temp_bytes")
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryReport:
    """Per-device bytes of one compiled program.

    Attributes:
      program: one of :data:`PROGRAMS`.
      num_layers: transformer blocks in the compiled program.
      mesh_shape: ``(data, fsdp, tensor)``.
      rows / seq_len / grad_accum: the program's batch ``[rows, seq_len]`` (per optimiser step
        for a train step, split into ``grad_accum`` micro-batches).
      lora_rank: 0 for full fine-tuning.
      params_bytes / opt_bytes: this device's shard of the parameters (the train parameters:
        LoRA's base and adapters) / optimiser state, from the shardings (exact).
      resident_bytes: what stays on the device beside the program while it runs and is not
        one of its arguments (RL: the frozen reference parameters, with LoRA the reference
        adapters; the sampler and the scorer inside an RL step: the train state besides the
        parameters they read).
      argument_bytes / output_bytes / alias_bytes / temp_bytes: XLA's memory analysis (outputs
        written in place of donated inputs are counted in ``alias_bytes``).
      compile_seconds: lowering + compilation wall time.
    """

    program: str
    num_layers: int
    mesh_shape: tuple[int, int, int]
    rows: int
    seq_len: int
    grad_accum: int = 1
    lora_rank: int = 0
    params_bytes: int
    opt_bytes: int
    resident_bytes: int = 0
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    compile_seconds: float

    @property
    def peak_bytes(self) -> int:
        """Live bytes of the program at its peak: inputs, new outputs not written in place,
        temporaries."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    @property
    def total_bytes(self) -> int:
        """The device's need while the program runs: its peak plus :attr:`resident_bytes`."""
        return self.peak_bytes + self.resident_bytes

    def row(self) -> dict[str, float]:
        """The byte figures in GiB (for printing and JSON)."""
        names = _FIELDS + ("peak_bytes", "total_bytes")
        return {k: round(getattr(self, k) / GIB, 3) for k in names}


def _device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes of one device's shard of every leaf of ``tree`` (largest shard per leaf)."""
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True):
        total += math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
    return total


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def _rows(mesh: Mesh, rows: int, seq_len: int, dtype: Any = jnp.int32) -> jax.ShapeDtypeStruct:
    """``[rows, seq_len]`` split over ``(data, fsdp)`` (``[rows]`` with ``seq_len=0``)."""
    shape = (rows, seq_len) if seq_len else (rows,)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=st.batch_sharding(mesh))


def abstract_model(config: ModelConfig, mesh: Mesh, rules: shd.ShardingRules | None = None):
    """``(model, params, shardings)``: the model from ``nnx.eval_shape`` and its parameters as
    ``ShapeDtypeStruct`` with their mesh shardings."""
    model = nnx.eval_shape(lambda: init_model(config))
    p_sh = st.param_shardings(model, mesh, rules)
    return model, _abstract(nnx.to_pure_dict(nnx.state(model)), p_sh), p_sh


def abstract_train_state(config: ModelConfig, optimizer, mesh: Mesh,
                         rules: shd.ShardingRules | None = None,
                         lora_config: lora.LoRAConfig | None = None):
    """Abstract ``(model, optimizer, shardings, state, params_fn)`` for compiling a train step.

    The state (``{"params", "opt", "step"}``) is ``jax.ShapeDtypeStruct`` with the trainer's
    shardings attached. With an enabled ``lora_config`` the parameters are ``{"base", "lora"}``
    and the optimiser is masked, as the Trainer builds them.
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
    return model, optimizer, shardings, _abstract(state, shardings), params_fn


def sft_batch(mesh: Mesh, rows: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The SFT step's batch: ``tokens`` and ``response_mask`` ``[rows, seq_len]``."""
    return {"tokens": _rows(mesh, rows, seq_len), "response_mask": _rows(mesh, rows, seq_len)}


def rl_batch(mesh: Mesh, rows: int, seq_len: int, *, reference: bool
             ) -> dict[str, jax.ShapeDtypeStruct]:
    """The RL step's rows (a trajectory loss's: one row per selected state): int ``inputs``,
    ``tokens``, ``attention_mask`` and float32 ``targets``, ``old_logp`` (and ``ref_logp``)
    ``[rows, seq_len]``; float32 ``adv`` and ``reward`` ``[rows]``."""
    batch = {k: _rows(mesh, rows, seq_len) for k in ("inputs", "tokens", "attention_mask")}
    floats = ("targets", "old_logp") + (("ref_logp",) if reference else ())
    batch |= {k: _rows(mesh, rows, seq_len, jnp.float32) for k in floats}
    batch |= {k: _rows(mesh, rows, 0, jnp.float32) for k in ("adv", "reward")}
    return batch


def _report(program: str, jitted, args: tuple, log: Log, **fields: Any) -> MemoryReport:
    mesh_shape = fields.pop("mesh_shape")
    log(f"compiling {program} ({fields['num_layers']} layers) on mesh {mesh_shape}, "
        f"{fields['rows']} x {fields['seq_len']} ...")
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    report = MemoryReport(
        program=program, mesh_shape=mesh_shape, compile_seconds=seconds,
        argument_bytes=int(ma.argument_size_in_bytes), output_bytes=int(ma.output_size_in_bytes),
        alias_bytes=int(ma.alias_size_in_bytes), temp_bytes=int(ma.temp_size_in_bytes),
        **fields)
    log(f"  compiled in {seconds:.1f}s: {report.row()}")
    return report


def _mesh_shape(mesh: Mesh) -> tuple[int, int, int]:
    return tuple(mesh.shape[a] for a in shd.MESH_AXES)


def measure_train_step(config: ModelConfig, mesh: Mesh, *, rows: int, seq_len: int,
                       grad_accum: int = 1, optim: OptimConfig | None = None,
                       rl: RLConfig | None = None, rules: shd.ShardingRules | None = None,
                       lora_config: lora.LoRAConfig | None = None,
                       log: Log = lambda _: None) -> MemoryReport:
    """Compiles the train step for ``config`` on ``mesh`` and reads its memory analysis.

    Args:
      config: model shape (its ``dtype`` is the parameter dtype, its ``remat`` the policy).
      mesh: a ``(data, fsdp, tensor)`` mesh (simulated CPU devices or a TPU topology's).
      rows: rows per optimiser step; ``rows / grad_accum`` must divide by ``data * fsdp``.
      seq_len: tokens per row.
      grad_accum: micro-batches per step (scanned inside the step).
      optim: optimiser config (AdamW; its moments take the parameter dtype).
      rl: None: the SFT step; else the RL step with this config's loss (its rollouts are
        ``prompts_per_step * group_size``, each giving ``rows / rollouts`` rows).
      lora_config: train low-rank adapters only (see :mod:`dllm_jax.train.lora`).
    """
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % grad_accum or (rows // grad_accum) % dp:
        raise ValueError(f"rows {rows} must split into {grad_accum} micro-batches each "
                         f"divisible by data*fsdp = {dp}")
    optimizer = st.make_optimizer(optim or OptimConfig(lr=1e-5, total_steps=1000))
    model, optimizer, shardings, state, params_fn = abstract_train_state(
        config, optimizer, mesh, rules, lora_config)
    if rl is None:
        program, loss_fn, batch, resident = "sft", st.sft_objective, sft_batch(
            mesh, rows, seq_len), 0
    else:
        rl = rl.resolved()
        program = "rl"
        loss_fn = make_rl_loss(rl, rl.prompts_per_step * rl.group_size)
        batch = rl_batch(mesh, rows, seq_len, reference=rl.keeps_reference)
        # The reference is a copy of the trained parameters (LoRA: of the adapters only).
        ref, ref_sh = state["params"], shardings["params"]
        if lora_config is not None and lora_config.enabled:
            ref, ref_sh = ref["lora"], ref_sh["lora"]
        resident = _device_bytes(ref, ref_sh) if rl.keeps_reference else 0
    step_fn = st.make_train_step(nnx.graphdef(model), loss_fn, optimizer,
                                 grad_accum=grad_accum, mesh=mesh, shardings=shardings,
                                 rules=rules, params_fn=params_fn)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P()))
    return _report(
        program, step_fn, (state, batch, key), log, num_layers=config.num_layers,
        mesh_shape=_mesh_shape(mesh), rows=rows, seq_len=seq_len, grad_accum=grad_accum,
        lora_rank=lora_config.rank if lora_config is not None else 0,
        params_bytes=_device_bytes(state["params"], shardings["params"]),
        opt_bytes=_device_bytes(state["opt"], shardings["opt"]), resident_bytes=resident)


def measure_score(config: ModelConfig, mesh: Mesh, *, rows: int, seq_len: int,
                  rules: shd.ShardingRules | None = None, resident_bytes: int = 0,
                  log: Log = lambda _: None) -> MemoryReport:
    """Compiles the scoring of ``[rows, seq_len]`` RL rows (token log-probs of ``tokens``
    given ``inputs`` under the attention mask, float32) in one call, as the rollout policy
    scores them."""
    model, params, p_sh = abstract_model(config, mesh, rules)
    graphdef = nnx.graphdef(model)

    def score(params, inputs, tokens, attention_mask):
        m = nnx.merge(graphdef, nnx.State(params))
        with shd.use_mesh(mesh, rules):
            return obj.token_logprobs(obj.aligned(m, inputs, attention_mask), tokens)

    bsh = st.batch_sharding(mesh)
    jitted = jax.jit(score, in_shardings=(p_sh, bsh, bsh, bsh), out_shardings=bsh)
    batch = tuple(_rows(mesh, rows, seq_len) for _ in range(3))
    return _report("score", jitted, (params, *batch), log, num_layers=config.num_layers,
                   mesh_shape=_mesh_shape(mesh), rows=rows, seq_len=seq_len,
                   params_bytes=_device_bytes(params, p_sh), opt_bytes=0,
                   resident_bytes=resident_bytes)


def measure_sampler(config: ModelConfig, mesh: Mesh, *, rows: int, seq_len: int,
                    block_length: int, cached_steps: int = 2,
                    rules: shd.ShardingRules | None = None, resident_bytes: int = 0,
                    log: Log = lambda _: None) -> MemoryReport:
    """Compiles one block of the dual-cache sampler on a ``[rows, seq_len]`` canvas (prompt
    and generation) as the sampler's block loop runs it: the prefill gives the block's logits
    and every layer's keys and values ``[layers, rows, seq_len, K, E]``; then a ``lax.scan``
    of ``cached_steps`` steps recomputes the block against them
    (``decode_block(..., mode="dual")``) and writes its argmax into the canvas. Returns the
    canvas and the last step's float32 block logits."""
    model, params, p_sh = abstract_model(config, mesh, rules)
    graphdef = nnx.graphdef(model)

    def block(params, canvas_BL, attention_mask, start):
        m = nnx.merge(graphdef, nnx.State(params))
        with shd.use_mesh(mesh, rules):
            first, cache = m.prefill(canvas_BL, attention_mask, window=(start, block_length))

            def step(carry, _):
                x_BL, _ = carry
                logits = m.decode_block(x_BL, attention_mask, cache, start, block_length,
                                        "dual").astype(jnp.float32)
                commit = jnp.argmax(logits, axis=-1).astype(x_BL.dtype)
                return (jax.lax.dynamic_update_slice_in_dim(x_BL, commit, start, axis=1),
                        logits), None

            init = (canvas_BL, first.astype(jnp.float32))
            return jax.lax.scan(step, init, None, length=cached_steps)[0]

    bsh, rep = st.batch_sharding(mesh), NamedSharding(mesh, P())
    jitted = jax.jit(block, in_shardings=(p_sh, bsh, bsh, rep), out_shardings=(bsh, bsh))
    start = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    args = (params, _rows(mesh, rows, seq_len), _rows(mesh, rows, seq_len), start)
    return _report("sampler", jitted, args, log, num_layers=config.num_layers,
                   mesh_shape=_mesh_shape(mesh), rows=rows, seq_len=seq_len,
                   params_bytes=_device_bytes(params, p_sh), opt_bytes=0,
                   resident_bytes=resident_bytes)


# Device memory in GiB: TPU v5e, TPU v4, H100 80GB, H200.
CAPACITIES_GIB = {"v5e": 16, "v4": 32, "H100": 80, "H200": 141}
HEADROOM = 0.9  # the runtime, fragmentation and collectives' buffers need the rest


def fit(total_bytes: int, capacity_gib: float) -> str:
    """``yes`` within :data:`HEADROOM` of the capacity, ``tight`` within it, else ``no``."""
    if total_bytes <= HEADROOM * capacity_gib * GIB:
        return "yes"
    return "tight" if total_bytes <= capacity_gib * GIB else "no"


def extrapolate(a: MemoryReport, b: MemoryReport, num_layers: int) -> MemoryReport:
    """Linear per-layer extension of two measurements with different layer counts."""
    if a.num_layers == b.num_layers:
        raise ValueError("extrapolate needs two different layer counts")
    span = b.num_layers - a.num_layers

    def ext(name: str) -> int:
        va, vb = getattr(a, name), getattr(b, name)
        return int(round(va + (vb - va) * (num_layers - a.num_layers) / span))

    return dataclasses.replace(b, num_layers=num_layers, compile_seconds=0.0,
                               **{f: ext(f) for f in _FIELDS})
