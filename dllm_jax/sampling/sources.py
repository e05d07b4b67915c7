"""Where a block's logits come from: classifier-free guidance and the KV-cache mode.

``NoGuidance`` / ``ClassifierFreeGuidance`` decide what the model is run on and how its
outputs combine; ``NoCache`` / ``BlockCache`` decide how the steps of one block obtain their
logits (a full forward every step, or one prefill per block then cached decoding; see
docs/sampling.md, "Block KV cache"). ``ModelLogits`` binds the model to one canvas inside the
compiled function. Shapes: B batch, L canvas length, N block length, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class NoGuidance:
    """The model runs on the canvas as is."""

    def inputs(self, x_BL: jax.Array, amask_BL: jax.Array, prompt_length: int
               ) -> tuple[jax.Array, jax.Array]:
        return x_BL, amask_BL

    def combine(self, logits: jax.Array) -> jax.Array:
        return logits.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ClassifierFreeGuidance:
    """LLaDA's CFG: a second copy of the canvas with the prompt masked runs in the same batch;
    logits are ``un + (scale + 1) (cond - un)``."""

    scale: float
    mask_id: int

    def inputs(self, x_BL: jax.Array, amask_BL: jax.Array, prompt_length: int
               ) -> tuple[jax.Array, jax.Array]:
        pos = jnp.arange(x_BL.shape[1])
        un = jnp.where(pos[None] < prompt_length, self.mask_id, x_BL)
        return jnp.concatenate([x_BL, un]), jnp.concatenate([amask_BL, amask_BL])

    def combine(self, logits: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32)
        b = logits.shape[0] // 2
        cond, un = logits[:b], logits[b:]
        return un + (self.scale + 1.0) * (cond - un)


Guidance = NoGuidance | ClassifierFreeGuidance


@dataclasses.dataclass(frozen=True, eq=False)
class ModelLogits:
    """The model bound to one canvas (built inside the compiled function, never hashed).

    Attributes:
      model: the :class:`dllm_jax.model.transformer.Transformer`.
      amask_BL: which canvas slots exist (prompt padding and cache padding are False).
      guidance: how inputs are built and outputs combined.
      prompt_length: ``P``, the prompt's width on the canvas.
      block_length: ``N``.
      mask_id: MASK id (attention statistics count committed tokens only).
      with_attention: also return AGDO's ``S`` for the block (full forward only).
    """

    model: Any
    amask_BL: jax.Array
    guidance: Guidance
    prompt_length: int
    block_length: int
    mask_id: int
    with_attention: bool

    def _inputs(self, x_BL: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.guidance.inputs(x_BL, self.amask_BL, self.prompt_length)

    def full(self, x_BL: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """One full forward: the block's logits ``[B, N, V]`` and ``S [B, N]`` (or None)."""
        x2, m2 = self._inputs(x_BL)
        window = (start, self.block_length)
        if not self.with_attention:
            return self.guidance.combine(self.model(x2, m2, window=window)), None
        keys = (x2 != self.mask_id) & m2
        logits, aux = self.model.with_attention(x2, m2, keys_BL=keys, window=window)
        s = jax.lax.dynamic_slice_in_dim(aux["S"][:x_BL.shape[0]], start, self.block_length,
                                         axis=1)
        return self.guidance.combine(logits), s

    def prefill(self, x_BL: jax.Array, start: jax.Array) -> tuple[jax.Array, Any]:
        """One full forward that also returns every layer's K/V."""
        x2, m2 = self._inputs(x_BL)
        logits, cache = self.model.prefill(x2, m2, window=(start, self.block_length))
        return self.guidance.combine(logits), cache

    def decode(self, x_BL: jax.Array, cache: Any, start: jax.Array, window: int,
               mode: str) -> jax.Array:
        """Recomputes ``window`` positions from ``start`` against the cache; the block's logits."""
        x2, m2 = self._inputs(x_BL)
        logits = self.model.decode_block(x2, m2, cache, start, window, mode)
        return self.guidance.combine(logits[:, :self.block_length])


LogitsFn = Callable[[jax.Array], tuple[jax.Array, jax.Array | None]]


class BlockSteps(Protocol):
    """What a logits source drives: the steps of one block (``loop.Block``). The carry is the
    loop state; its ``canvas_BL`` is the canvas. ``commit`` runs step ``j`` on given logits;
    ``step`` runs step ``j`` on ``logits_fn(canvas)`` (skipping it when the block is done)."""

    start: jax.Array
    num_steps: int

    def commit(self, carry: Any, j: int, logits_BNV: jax.Array, s_BN: jax.Array | None
               ) -> tuple[Any, Any]: ...

    def step(self, carry: Any, j: jax.Array, logits_fn: LogitsFn) -> tuple[Any, Any]: ...


@dataclasses.dataclass(frozen=True)
class NoCache:
    """Every step runs a full forward over the canvas."""

    extra_slots = 0
    keeps_attention = True

    def run_block(self, fwd: ModelLogits, steps: BlockSteps, carry: Any) -> tuple[Any, Any]:
        full = lambda x: fwd.full(x, steps.start)
        return jax.lax.scan(lambda c, j: steps.step(c, j, full), carry,
                            jnp.arange(steps.num_steps))


@dataclasses.dataclass(frozen=True)
class BlockCache:
    """Fast-dLLM: a prefill at the block start gives step 0's logits and every layer's K/V;
    later steps recompute ``window`` positions from the block start against them.

    Attributes:
      mode: the model's ``decode_block`` mode, ``"prefix"`` (recompute the block and
        everything after it) or ``"dual"`` (the block only).
      window: positions recomputed per step (static: the whole generation for ``prefix``).
      block_length: ``N``.
    """

    mode: str
    window: int
    block_length: int
    keeps_attention = False

    @property
    def extra_slots(self) -> int:
        """Padded canvas slots so the fixed window never runs off the end."""
        return self.window - self.block_length

    def run_block(self, fwd: ModelLogits, steps: BlockSteps, carry: Any) -> tuple[Any, Any]:
        logits, cache = fwd.prefill(carry.canvas_BL, steps.start)
        carry, first = steps.commit(carry, 0, logits, None)

        def decode(x_BL):
            return fwd.decode(x_BL, cache, steps.start, self.window, self.mode), None

        carry, rest = jax.lax.scan(lambda c, j: steps.step(c, j, decode), carry,
                                   jnp.arange(1, steps.num_steps))
        return carry, jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), first, rest)


LogitsSource = NoCache | BlockCache


def logits_source(cache: str, gen_length: int, block_length: int) -> LogitsSource:
    """The source for a preset's ``cache`` knob (``none``, ``prefix`` or ``dual``)."""
    if cache == "none":
        return NoCache()
    window = gen_length if cache == "prefix" else block_length
    return BlockCache(mode=cache, window=window, block_length=block_length)
