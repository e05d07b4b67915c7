"""LLaDA's Monte-Carlo likelihood estimate and greedy check, compiled, on padded rows.

Both follow LLaDA's lm-evaluation-harness adapter (``eval_llada.py``: ``get_loglikelihood``
and ``suffix_greedy_prediction``), see docs/eval.md, "The estimator". A request is one row
laid out in two regions of static widths, so every request of a shape bucket runs the same
program:

    columns [0, C)       the context, left-padded (its last token at column C - 1)
    columns [C, C + W)   the continuation, right-padded (its A tokens first)

with an attention mask of 1 on the real tokens; positions come from the mask, so padding
changes neither the context's positions nor what the continuation sees. Only the
continuation region's logits are computed (``window=(C, W)``). The logits are aligned (a Dream
model's shift is applied inside the model), so the same code serves both families.

Likelihoods run in two compiled steps so identical inputs are computed once: ``mc_masks``
draws a request's masks, the caller keeps the distinct ones (a continuation of A tokens has
at most ``2^A - 1`` masks, so short ones repeat many times among ``mc_num`` copies), and
``masked_nll`` scores rows of one bucket, from any requests, ``batch_size`` at a time. The
estimate is the same function of the same draws as scoring every copy.

Shapes: N rows, L = C + W columns, W continuation width, V vocabulary, b copies per round.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.objectives.losses import token_logprobs

# Widths a region is padded to: multiples of 8 up to 64, of 16 up to 128, then powers of two
# and the midpoints between them (at most a third of a long region is padding), so a long
# evaluation compiles a few dozen programs, not one per length.
_LADDER = tuple(sorted(set(range(8, 65, 8)) | set(range(80, 129, 16))
                       | {w for k in range(8, 16) for w in (2**k, 3 * 2**(k - 2))}))


def bucket(n: int) -> int:
    """The smallest width of the ladder (8, 16, ..., 64, 80, ..., 128, 192, 256, 384, ...)
    that holds ``n``."""
    for w in _LADDER:
        if n <= w:
            return w
    raise ValueError(f"a region of {n} tokens is longer than the largest bucket {_LADDER[-1]}")


def pack_rows(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], ctx_width: int,
              cont_width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(context, continuation)`` id lists -> ``tokens [N, L]``, ``amask [N, L]`` (int32 0/1)
    and the continuation lengths ``[N]`` in the layout of the module docstring."""
    n, width = len(pairs), ctx_width + cont_width
    tokens = np.full((n, width), pad_id, np.int32)
    amask = np.zeros((n, width), np.int32)
    lengths = np.zeros((n,), np.int32)
    for i, (ctx, cont) in enumerate(pairs):
        if not 1 <= len(ctx) <= ctx_width or not 1 <= len(cont) <= cont_width:
            raise ValueError(f"row {i}: context {len(ctx)} / continuation {len(cont)} tokens do "
                             f"not fit widths {ctx_width} / {cont_width}")
        tokens[i, ctx_width - len(ctx):ctx_width] = ctx
        tokens[i, ctx_width:ctx_width + len(cont)] = cont
        amask[i, ctx_width - len(ctx):ctx_width + len(cont)] = 1
        lengths[i] = len(cont)
    return tokens, amask, lengths


def stratified_counts(key: jax.Array, copies: int, target_len: jax.Array) -> jax.Array:
    """LLaDA's mask counts for one round: one ``k ~ U{1..A}``, copy i masks
    ``round(k + i A / copies)`` tokens wrapped into ``1..A`` (``int32 [copies]``; ``A`` may
    be traced)."""
    a = target_len.astype(jnp.int32)
    k = jax.random.randint(key, (), 1, a + 1)
    x = jnp.round(k + jnp.arange(copies, dtype=jnp.float32) * (a.astype(jnp.float32) / copies))
    return (x.astype(jnp.int32) - 1) % a + 1


def random_masks(key: jax.Array, counts_b: jax.Array, target_len: jax.Array, width: int
                 ) -> jax.Array:
    """``[b, width]`` bool: in each row exactly ``counts_b[i]`` of the first ``target_len``
    columns, chosen uniformly at random with a fresh permutation per row; never a padding
    column."""
    b = counts_b.shape[0]
    inside = jnp.arange(width) < target_len
    u = jnp.where(inside, jax.random.uniform(key, (b, width)), 2.0)  # padding ranks last
    ranks = jnp.argsort(jnp.argsort(u, axis=-1), axis=-1)
    return ranks < counts_b[:, None]


def _guided_logits(model, inp_NL: jax.Array, amask_NL: jax.Array, ctx_width: int,
                   cfg_scale: float, mask_id: int) -> jax.Array:
    """Float32 continuation-region logits ``[N, W, V]``; with ``cfg_scale > 0`` LLaDA's
    unsupervised guidance ``un + (cfg + 1) (cond - un)``, the unconditional rows having the
    whole context masked, both halves in one forward."""
    width = inp_NL.shape[1] - ctx_width
    if cfg_scale > 0:
        un = inp_NL.at[:, :ctx_width].set(mask_id)
        both = model(jnp.concatenate([inp_NL, un]), jnp.concatenate([amask_NL, amask_NL]),
                     window=(ctx_width, width)).astype(jnp.float32)
        cond, uncond = jnp.split(both, 2)
        return uncond + (cfg_scale + 1.0) * (cond - uncond)
    return model(inp_NL, amask_NL, window=(ctx_width, width)).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("copies", "rounds", "width"))
def mc_masks(key: jax.Array, target_len: jax.Array, *, copies: int, rounds: int, width: int
             ) -> tuple[jax.Array, jax.Array]:
    """One request's Monte-Carlo masks: ``(masked bool [rounds, copies, width], counts int32
    [rounds, copies])``. Round r draws from ``split(key, rounds)[r]``: its counts from one
    uniform draw (:func:`stratified_counts`), each copy a fresh random subset of the
    continuation of its count (:func:`random_masks`); the context is never masked."""

    def one_round(round_key):
        kc, kp = jax.random.split(round_key)
        counts_b = stratified_counts(kc, copies, target_len)
        return random_masks(kp, counts_b, target_len, width), counts_b

    return jax.vmap(one_round)(jax.random.split(key, rounds))


@functools.partial(jax.jit, static_argnames=("graphdef", "ctx_width", "cfg_scale", "mask_id"))
def masked_nll(graphdef: nnx.GraphDef, state: nnx.State, tokens_NL: jax.Array,
               amask_NL: jax.Array, masked_NW: jax.Array, *, ctx_width: int, cfg_scale: float,
               mask_id: int) -> jax.Array:
    """``float32 [N]``: each row's summed cross-entropy of its continuation tokens where
    ``masked_NW`` replaces them by MASK, predicted from that input (one forward of N rows, 2N
    with guidance). The rows may belong to different requests of one bucket."""
    model = nnx.merge(graphdef, state)
    cont_NW = tokens_NL[:, ctx_width:]
    inp = tokens_NL.at[:, ctx_width:].set(jnp.where(masked_NW, mask_id, cont_NW))
    logits = _guided_logits(model, inp, amask_NL, ctx_width, cfg_scale, mask_id)
    return -jnp.where(masked_NW, token_logprobs(logits, cont_NW), 0.0).sum(-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "ctx_width", "cfg_scale", "mask_id"))
def greedy_matches(graphdef: nnx.GraphDef, state: nnx.State, tokens_NL: jax.Array,
                   amask_NL: jax.Array, target_len_N: jax.Array, *, ctx_width: int,
                   cfg_scale: float, mask_id: int) -> jax.Array:
    """LLaDA's ``suffix_greedy_prediction`` for each row: ``bool [N]``.

    From a fully masked continuation, ``A`` forward passes each commit one token: at the
    masked position whose argmax (over the whole vocabulary, MASK included, as the original)
    has the highest softmax probability, that argmax. True when the result is the
    continuation. Ties go to the leftmost position.
    """
    model = nnx.merge(graphdef, state)
    width = tokens_NL.shape[1] - ctx_width
    inside_NW = jnp.arange(width) < target_len_N[:, None]
    target_NW = tokens_NL[:, ctx_width:]
    canvas0 = tokens_NL.at[:, ctx_width:].set(jnp.where(inside_NW, mask_id, target_NW))

    def step(s, canvas):
        cont = canvas[:, ctx_width:]
        masked = (cont == mask_id) & inside_NW
        logits = _guided_logits(model, canvas, amask_NL, ctx_width, cfg_scale, mask_id)
        x0 = jnp.argmax(logits, axis=-1).astype(cont.dtype)
        probs = jax.nn.softmax(logits, axis=-1)
        conf = jnp.take_along_axis(probs, x0[..., None].astype(jnp.int32), axis=-1)[..., 0]
        best = jnp.argmax(jnp.where(masked, conf, -1.0), axis=-1)
        active = (s < target_len_N)[:, None]
        commit = (jnp.arange(width) == best[:, None]) & masked & active
        return canvas.at[:, ctx_width:].set(jnp.where(commit, x0, cont))

    steps = jnp.max(target_len_N)
    final = jax.lax.fori_loop(0, steps, step, canvas0)
    return jnp.all((final[:, ctx_width:] == target_NW) | ~inside_NW, axis=-1)
