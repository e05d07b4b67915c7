"""Logical axis names -> mesh axes, mesh construction, and sharding helpers.

Parameters carry ``logical_axes`` metadata set at creation (see ``model.py``); activations are
constrained with :func:`constrain`. One :class:`ShardingRules` table maps both onto a
``jax.sharding.Mesh`` with axes ``("data", "fsdp", "tensor")``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxis = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardingRules:
    """Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated)."""

    # Parameters.
    vocab: MeshAxis = "tensor"
    embed: MeshAxis = "fsdp"
    heads: MeshAxis = "tensor"
    kv_heads: MeshAxis = "tensor"
    mlp: MeshAxis = "tensor"
    norm: MeshAxis = None
    lora: MeshAxis = None
    # Activations.
    batch: MeshAxis = ("data", "fsdp")
    length: MeshAxis = None
    act_embed: MeshAxis = None
    act_heads: MeshAxis = "tensor"
    act_mlp: MeshAxis = "tensor"
    act_vocab: MeshAxis = "tensor"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for axis in _as_tuple(value):
                if axis not in MESH_AXES:
                    raise ValueError(
                        f"sharding rule {f.name}={value!r} names unknown mesh axis {axis!r}; "
                        f"mesh axes are {MESH_AXES}")

    def spec(self, logical: tuple[str | None, ...], shape: tuple[int, ...] | None = None,
             mesh: Mesh | None = None) -> P:
        """PartitionSpec for logical axes; a dimension that does not divide is replicated.

        Raises:
          ValueError: two logical axes of one array map onto the same mesh axis.
        """
        out: list[MeshAxis] = []
        used: set[str] = set()
        for i, name in enumerate(logical):
            target = getattr(self, name) if name is not None else None
            axes = _as_tuple(target)
            if used & set(axes):
                raise ValueError(
                    f"logical axes {logical} map mesh axis {sorted(used & set(axes))} twice")
            if mesh is not None and axes:
                # Size-1 mesh axes are dropped so specs read as what really happens.
                axes = tuple(a for a in axes if mesh.shape[a] > 1)
                size = int(np.prod([mesh.shape[a] for a in axes]))
                if shape is not None and shape[i] % size:
                    axes = ()
                target = None if not axes else axes[0] if len(axes) == 1 else axes
            used |= set(axes)
            out.append(target)
        return P(*out)


def _as_tuple(x: MeshAxis) -> tuple[str, ...]:
    if x is None:
        return ()
    return (x,) if isinstance(x, str) else tuple(x)


def maybe_initialize_distributed() -> bool:
    """Calls ``jax.distributed.initialize()`` when a multi-process launcher is detected.

    Recognised: ``JAX_COORDINATOR_ADDRESS`` (+ ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), SLURM,
    Open MPI, and TPU pod metadata (``TPU_WORKER_HOSTNAMES`` with several hosts).
    """
    env = os.environ
    if jax.distributed.is_initialized() if hasattr(jax.distributed, "is_initialized") else False:
        return True
    if "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env.get("JAX_NUM_PROCESSES", "1")),
            process_id=int(env.get("JAX_PROCESS_ID", "0")))
        return True
    multi_tpu = len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    if multi_tpu or int(env.get("SLURM_NTASKS", "1")) > 1 or "OMPI_COMM_WORLD_SIZE" in env:
        jax.distributed.initialize()
        return True
    return False


def make_mesh(shape: tuple[int, int, int] | None = None,
              devices: list[Any] | None = None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh over all (global) devices.

    Args:
      shape: sizes of (data, fsdp, tensor); default puts every device on ``fsdp``. One entry may
        be -1 to take the remaining devices.
      devices: defaults to ``jax.devices()`` (all hosts' devices).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    shape = (1, n, 1) if shape is None else tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
    if shape.count(-1) == 1:
        rest = int(np.prod([s for s in shape if s != -1]))
        shape = tuple(n // rest if s == -1 else s for s in shape)
    if int(np.prod(shape)) != n:
        raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, have {n}")
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # CPU or unusual topologies: plain reshape is fine
        arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, MESH_AXES)


_CONTEXT: contextvars.ContextVar[tuple[Mesh, ShardingRules] | None] = contextvars.ContextVar(
    "dllm_jax_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None, rules: ShardingRules | None = None) -> Iterator[None]:
    """Activates activation sharding constraints for code traced inside the block."""
    token = _CONTEXT.set(None if mesh is None else (mesh, rules or ShardingRules()))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def constrain(x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
    """``with_sharding_constraint`` by logical names when a mesh is active, else identity."""
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, rules.spec(logical, x.shape, mesh)))


def constrain_rows(tree: Any) -> Any:
    """Every array of ``tree`` constrained with its rows (leading axis) over ``batch``."""
    return jax.tree.map(lambda x: constrain(x, ("batch",) + (None,) * (x.ndim - 1)), tree)


def batch_divisor(mesh: Mesh, rules: ShardingRules | None = None) -> int:
    """How many ways the ``batch`` rule splits rows: the product of its mesh axes' sizes."""
    rules = rules or ShardingRules()
    return int(np.prod([mesh.shape[a] for a in _as_tuple(rules.batch)]))


def row_sharding(mesh: Mesh, rules: ShardingRules | None, shape: tuple[int, ...]
                 ) -> NamedSharding:
    """Rows over the ``batch`` rule's mesh axes (replicated when they do not divide), the rest
    replicated."""
    rules = rules or ShardingRules()
    return NamedSharding(mesh, rules.spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh))


def put_rows(x: Any, mesh: Mesh, rules: ShardingRules | None = None) -> jax.Array:
    """A host array that every process holds in full, placed with :func:`row_sharding`; each
    process transfers only the rows its own devices hold."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, row_sharding(mesh, rules, x.shape),
                                        lambda index: x[index])


def local_rows(x: jax.Array, columns: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``x`` (sharded over its rows only) that this process's devices hold: what a
    computation on the host, such as a reward, runs on. Only ``columns`` (of a 2-D ``x``;
    default all) leave the devices.

    Returns:
      the rows' indices ``[n]`` (increasing) and their values ``[n, ...]`` on the host.

    Raises:
      ValueError: ``x`` is split along another axis.
    """
    pieces: dict[int, jax.Array] = {}
    for shard in x.addressable_shards:
        if tuple(shard.data.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"local_rows needs an array split over rows only, got {x.sharding}")
        pieces.setdefault(range(x.shape[0])[shard.index[0]].start, shard.data)  # replicas: once

    def host(a: jax.Array) -> np.ndarray:  # the columns are cut on the device
        return np.asarray(a if columns == slice(None) else a[:, columns])

    starts = sorted(pieces)
    rows = np.concatenate([np.arange(s, s + pieces[s].shape[0]) for s in starts])
    return rows, np.concatenate([host(pieces[s]) for s in starts])


def from_local_rows(values: Any, rows: np.ndarray, like: jax.Array) -> jax.Array:
    """The global array whose rows ``rows`` on this process are ``values``, its rows split like
    ``like``'s (the inverse of :func:`local_rows` for a result computed per row)."""
    values = np.asarray(values)
    full = np.zeros((like.shape[0],) + values.shape[1:], values.dtype)
    full[rows] = values  # only these rows are asked for below: this process's devices hold them
    sharding = like.sharding
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)[:1]
        sharding = NamedSharding(sharding.mesh, P(*spec, *(None,) * (full.ndim - len(spec))))
    return jax.make_array_from_callback(full.shape, sharding, lambda index: full[index])


def mesh_of(tree: Any) -> Mesh | None:
    """The mesh the arrays of ``tree`` are sharded over (the first named sharding that spans
    more than one device), or None."""
    for x in jax.tree.leaves(tree):
        sharding = x.sharding if isinstance(x, jax.Array) else None
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def place_state(state: Any, mesh: Mesh, rules: ShardingRules | None = None) -> Any:
    """An NNX state on ``mesh``: arrays already sharded over it stay as they are, the others
    take the rules' shardings (:func:`state_shardings`)."""
    def one(x: Any, target: NamedSharding) -> Any:
        on_mesh = isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        return x if on_mesh else jax.device_put(x, target)

    return jax.tree.map(one, state, state_shardings(state, mesh, rules))


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: Any, mesh: Mesh, rules: ShardingRules | None = None) -> Any:
    """NamedSharding for every variable of an NNX state, from its ``logical_axes`` metadata."""
    rules = rules or ShardingRules()

    def one(var: Any) -> Any:
        value = var.get_value() if _is_var(var) else var
        axes = var.get_metadata().get("logical_axes") if _is_var(var) else None
        if axes is None:
            spec = P()
        else:
            spec = rules.spec(tuple(axes), tuple(value.shape), mesh)
        sharding = NamedSharding(mesh, spec)
        return var.replace(sharding) if _is_var(var) else sharding

    return jax.tree.map(one, state, is_leaf=_is_var)


def shard_model(model: nnx.Module, mesh: Mesh, rules: ShardingRules | None = None) -> nnx.Module:
    """Places a model's parameters on ``mesh`` following the rules (returns a new model)."""
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh, rules)
    state = jax.device_put(state, shardings)
    return nnx.merge(graphdef, state)


def param_specs(model: nnx.Module) -> dict[str, P]:
    """Flat ``path -> PartitionSpec`` of the model's parameters as actually placed."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        sharding = getattr(var.get_value(), "sharding", None)
        out[".".join(map(str, path))] = getattr(sharding, "spec", None)
    return out
