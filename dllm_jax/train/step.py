"""The sharded train step: ``jax.jit`` with explicit in/out shardings over the mesh.

Train state is a plain dict ``{"params", "opt", "step"}`` of arrays (``params`` is the model's
pure-dict state), so optax, orbax and shardings all see ordinary pytrees. Parameters follow the
logical-axis rules (FSDP over ``fsdp``, tensor parallel over ``tensor``); the optimiser state
takes each parameter's sharding; the batch is split over ``(data, fsdp)``. Gradient
accumulation runs the micro-batches in a ``lax.scan`` inside the compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dllm_jax.model import sharding as shd
from dllm_jax.objectives import aligned, forward_mask, sft_loss, token_logprobs
from dllm_jax.train.optim import make_optimizer  # noqa: F401  (re-exported: st.make_optimizer)

LossFn = Callable[[nnx.Module, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


def sft_objective(model: nnx.Module, batch: dict[str, jax.Array], key: jax.Array,
                  eps: float = 1e-3) -> tuple[jax.Array, dict]:
    """Masked-diffusion SFT on ``batch = {tokens, response_mask, attention_mask?}``."""
    tokens = batch["tokens"]
    resp = batch["response_mask"]
    noisy, masked, p_mask = forward_mask(key, tokens, resp, model.config.mask_token_id, eps)
    logp = token_logprobs(aligned(model, noisy, batch.get("attention_mask")), tokens)
    return sft_loss(logp, masked, p_mask, resp)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def param_shardings(model: nnx.Module, mesh: Mesh, rules: shd.ShardingRules | None = None):
    """Pure-dict tree of NamedShardings for the model's parameters."""
    state = nnx.state(model)
    return nnx.to_pure_dict(shd.state_shardings(state, mesh, rules))


def state_shardings(model: nnx.Module, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules: shd.ShardingRules | None = None, *, params: Any = None,
                    params_shardings: Any = None) -> dict:
    """Shardings of the whole train state: optimiser moments follow their parameters.

    Args:
      model: the model (concrete or from ``nnx.eval_shape``).
      optimizer: the optax transformation whose state is sharded.
      mesh / rules: where parameters go (logical-axis rules; FSDP over ``fsdp``).
      params / params_shardings: a train-parameter tree other than the model's own (e.g.
        LoRA's ``{"base", "lora"}``, arrays or ``ShapeDtypeStruct``) and its shardings.
    """
    if params is None:
        p_sh = param_shardings(model, mesh, rules)
        params = nnx.to_pure_dict(nnx.state(model))
    else:
        p_sh = params_shardings
    abstract_opt = jax.eval_shape(optimizer.init, params)
    replicated = NamedSharding(mesh, P())
    return {"params": p_sh, "opt": opt_state_shardings(abstract_opt, params, p_sh, replicated),
            "step": replicated}


def _path_key(k: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def opt_state_shardings(abstract_opt: Any, params: Any, params_shardings: Any,
                        default: NamedSharding) -> Any:
    """Each optimiser-state leaf whose key path ends with a parameter's path (and has its
    shape) takes that parameter's sharding — AdamW's ``mu``/``nu`` and masked or
    multi-transform states alike; counts, scalars and anything else get ``default``."""
    by_path = {}
    flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, x), sh in zip(flat_p, jax.tree.leaves(params_shardings), strict=True):
        by_path[tuple(_path_key(k) for k in path)] = (tuple(x.shape), sh)

    def one(path, leaf):
        keys = tuple(_path_key(k) for k in path)
        for i in range(len(keys)):
            hit = by_path.get(keys[i:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(one, abstract_opt)


def init_state(model: nnx.Module, optimizer: optax.GradientTransformation,
               shardings: dict | None = None, *, params: Any = None) -> dict:
    """``{"params", "opt", "step"}`` for the model's parameters (or the given ``params``)."""
    if params is None:
        params = nnx.to_pure_dict(nnx.state(model))
    # Copies: the train step donates its state, which must not delete the model's own arrays.
    params = jax.tree.map(jnp.copy, params)
    state = {"params": params, "opt": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
    return state if shardings is None else jax.device_put(state, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp")))


def split_micro(x: jax.Array, grad_accum: int, mesh: Mesh | None) -> jax.Array:
    """``[B, ...] -> [grad_accum, B / grad_accum, ...]``: micro-batch ``i`` is rows
    ``i * B / grad_accum`` onwards, each micro-batch split over ``(data, fsdp)``.

    The batch arrives with contiguous blocks of rows per device, so a plain reshape would
    leave each micro-batch on a fraction of the devices (which then hold several of its rows
    each); the constraint moves the (small) batch once so that every device works on every
    micro-batch. A micro-batch whose rows do not divide over ``data * fsdp`` keeps the plain
    reshape.
    """
    micro = x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:])
    if mesh is None or micro.shape[1] % (mesh.shape["data"] * mesh.shape["fsdp"]):
        return micro
    return jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, P(None, ("data", "fsdp"))))


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn,
                    optimizer: optax.GradientTransformation, *, grad_accum: int = 1,
                    mesh: Mesh | None = None, shardings: dict | None = None,
                    rules: shd.ShardingRules | None = None, donate: bool = True,
                    params_fn: Callable[[Any], Any] | None = None):
    """Builds ``step(state, batch, key) -> (state, metrics)``.

    The key for step ``s`` should be ``fold_in(base_key, s)`` (the trainer does this) so a
    resumed run draws the same randomness. With ``grad_accum > 1`` every batch array's leading
    dimension is split into that many micro-batches and their gradients averaged (equal to
    the full-batch gradient for a loss that is a mean over equal-sized rows).

    Args:
      graphdef: the model's graph (``nnx.graphdef(model)``).
      loss_fn: ``(model, batch, key) -> (loss, aux)``; scalar ``aux`` entries are averaged over
        micro-batches and returned as metrics.
      optimizer: optax transformation over the state's ``params``.
      grad_accum: micro-batches per step (a ``lax.scan``).
      mesh / shardings / rules: jit with these in/out shardings (``state_shardings``); batch
        rows split over ``(data, fsdp)``. ``mesh=None``: plain single-device jit.
      donate: donate the input state's buffers.
      params_fn: maps the train parameters to the model's parameters (LoRA's merge);
        default identity.
    """

    def loss_of(params, batch, key):
        model = nnx.merge(graphdef, nnx.State(params if params_fn is None else params_fn(params)))
        with shd.use_mesh(mesh, rules):
            return loss_fn(model, batch, key)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def step(state, batch, key):
        params = state["params"]
        if grad_accum == 1:
            (loss, aux), grads = grad_fn(params, batch, key)
        else:
            micro = jax.tree.map(lambda x: split_micro(x, grad_accum, mesh), batch)

            def body(acc, i):
                mb = jax.tree.map(lambda x: x[i], micro)
                (l_i, aux_i), g_i = grad_fn(params, mb, jax.random.fold_in(key, i))
                acc = jax.tree.map(jnp.add, acc, (l_i, aux_i, g_i))
                return acc, None

            zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), key)))
            zero = (zero[0][0], zero[0][1], zero[1])
            (loss, aux, grads), _ = jax.lax.scan(body, zero, jnp.arange(grad_accum))
            loss, aux, grads = jax.tree.map(lambda x: x / grad_accum, (loss, aux, grads))
        updates, opt = optimizer.update(grads, state["opt"], params)
        new = {"params": optax.apply_updates(params, updates), "opt": opt,
               "step": state["step"] + 1}
        metrics = {**aux, "loss": loss, "grad_norm": optax.tree.norm(grads),
                   "update_norm": optax.tree.norm(updates)}
        return new, metrics

    if mesh is None:
        return jax.jit(step, donate_argnums=(0,) if donate else ())
    replicated = NamedSharding(mesh, P())
    return jax.jit(step, in_shardings=(shardings, batch_sharding(mesh), replicated),
                   out_shardings=(shardings, replicated), donate_argnums=(0,) if donate else ())


def model_from_state(graphdef: nnx.GraphDef, state: dict,
                     params_fn: Callable[[Any], Any] | None = None) -> nnx.Module:
    """The model holding the train state's parameters (merged through ``params_fn``)."""
    params = state["params"]
    return nnx.merge(graphdef, nnx.State(params if params_fn is None else params_fn(params)))


def put_batch(batch: dict[str, Any], mesh: Mesh | None, *,
              local: bool = False) -> dict[str, jax.Array]:
    """Places a host batch on the mesh, split over ``(data, fsdp)``.

    Args:
      batch: host arrays with a leading batch axis: the global batch (every process passes the
        same arrays and keeps the rows its devices own), or with ``local=True`` only this
        process's rows (the global batch is then ``process_count`` times larger).
      mesh: the mesh; ``None`` puts the arrays on the default device.
    """
    import numpy as np

    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    sh = batch_sharding(mesh)
    n = jax.process_count()
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        shape = (v.shape[0] * n,) + v.shape[1:] if local else v.shape
        if shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]):
            raise ValueError(f"batch entry {k!r} has {shape[0]} rows, not divisible by "
                             f"data*fsdp = {mesh.shape['data'] * mesh.shape['fsdp']}")
        if not local and n > 1:
            # The rows this process's devices own (contiguous for a process-major mesh).
            idx = sh.addressable_devices_indices_map(shape).values()
            lo = min(s[0].start or 0 for s in idx)
            hi = max(shape[0] if s[0].stop is None else s[0].stop for s in idx)
            v = v[lo:hi]
        out[k] = jax.make_array_from_process_local_data(sh, v, shape)
    return out
