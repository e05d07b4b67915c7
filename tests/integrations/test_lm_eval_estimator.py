"""The lm-eval adapter's likelihood estimate and greedy check (``integrations/elbo.py``, run
through ``integrations/runner.py`` as the adapter runs them).

The estimate is checked against the exact expectation it targets, by enumerating every mask
subset; the greedy check against a loop written from LLaDA's ``eval_llada.py``
(``suffix_greedy_prediction`` and ``get_logits``), run on unpadded single rows.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.integrations import elbo
from dllm_jax.integrations.model_args import ModelArgs
from dllm_jax.integrations.runner import Runner
from dllm_jax.sampling import LLaDAConfig

MASK = 63  # helpers.TINY_MASK_ID


def _logits(model, rows: np.ndarray, prompt_len: int, cfg: float) -> np.ndarray:
    """LLaDA's ``get_logits`` on unpadded rows: the unconditional half has the prompt masked,
    ``un + (cfg + 1) (cond - un)``."""
    rows = np.asarray(rows)
    logits = np.asarray(model(jnp.asarray(rows)), np.float64)
    if cfg > 0:
        un_rows = rows.copy()
        un_rows[:, :prompt_len] = MASK
        un = np.asarray(model(jnp.asarray(un_rows)), np.float64)
        logits = un + (cfg + 1) * (logits - un)
    return logits


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _llada_counts(k: int, b: int, a: int) -> np.ndarray:
    """``_forward_process``'s counts: ``round(linspace(k, k + (b-1) a/b, b))`` wrapped into
    ``1..a`` (round half to even, as torch.round)."""
    x = np.round(np.linspace(float(k), k + (b - 1) * (a / b), b))
    return ((x.astype(int) - 1) % a) + 1


def _exact_round_loss(model, ctx: list[int], cont: list[int], copies: int, cfg: float) -> float:
    """E[one round's loss] by enumeration: k uniform on 1..A, each copy's count from k, every
    subset of that size equally likely, loss = sum of masked CE / (x / A), over copies."""
    p, a = len(ctx), len(cont)
    seq = np.array(ctx + cont)
    subsets = [s for x in range(1, a + 1) for s in itertools.combinations(range(a), x)]
    rows = np.repeat(seq[None], len(subsets), axis=0)
    for r, s in enumerate(subsets):
        rows[r, [p + j for j in s]] = MASK
    logp = _log_softmax(_logits(model, rows, p, cfg))
    ce = {s: -sum(logp[r, p + j, seq[p + j]] for j in s) for r, s in enumerate(subsets)}
    by_size = {x: np.mean([v for s, v in ce.items() if len(s) == x]) for x in range(1, a + 1)}
    total = 0.0
    for k in range(1, a + 1):
        for x in _llada_counts(k, copies, a):
            total += by_size[int(x)] / (x / a) / copies
    return total / a


def _runner(model, cfg: float, batch_size: int, mc_num: int) -> Runner:
    args = ModelArgs(pretrained=".", sampler=LLaDAConfig(), batch_size=batch_size,
                     mc_num=mc_num, seed=7, cfg_scale=cfg)
    return Runner(model, None, args, progress=False)


CASES = [("sharp_llada", 1, 0.0), ("sharp_llada", 2, 0.0), ("sharp_llada", 3, 0.0),
         ("sharp_llada", 4, 0.0), ("sharp_llada", 3, 0.5), ("sharp_dream", 3, 0.0)]


@pytest.mark.parametrize("fixture,a,cfg", CASES, ids=[f"{f}-A{a}-cfg{c}" for f, a, c in CASES])
def test_estimate_matches_exact_enumeration(request, fixture, a, cfg):
    model = request.getfixturevalue(fixture)
    rng = np.random.default_rng(a)
    ctx = rng.integers(2, MASK, size=3).tolist()
    cont = rng.integers(2, MASK, size=a).tolist()
    copies, rounds = 4, 1024
    exact = _exact_round_loss(model, ctx, cont, copies, cfg)
    (losses,) = _runner(model, cfg, copies, copies * rounds).round_losses([(ctx, cont)])
    mean, se = losses.mean(), losses.std(ddof=1) / np.sqrt(rounds)
    if a == 1:  # one token: every round masks it alone, the estimate is exact
        assert se < 1e-6 and abs(mean - exact) <= 1e-4 * abs(exact), (mean, exact)
    else:
        assert se > 1e-4, se  # a real spread, so the 4-sigma check has teeth
        assert abs(mean - exact) <= 4 * se, (mean, exact, se)


def _llada_greedy(model, prefix: list[int], a: int, cfg: float) -> np.ndarray:
    """``suffix_greedy_prediction`` of eval_llada.py: ``a`` passes over a masked suffix, each
    keeping only the most confident argmax (sorted descending, the rest re-masked)."""
    seq = np.full((1, len(prefix) + a), MASK)
    seq[0, :len(prefix)] = prefix
    for _ in range(a):
        mask_index = seq == MASK
        logits = _logits(model, seq, len(prefix), cfg)[mask_index]
        x0 = np.argmax(logits, axis=-1)
        p = np.exp(_log_softmax(logits))
        confidence = p[np.arange(len(x0)), x0]
        index = np.argsort(-confidence, kind="stable")
        x0[index[1:]] = MASK
        seq[mask_index] = x0
    return seq[0, len(prefix):]


@pytest.mark.parametrize("fixture,cfg", [("sharp_llada", 0.0), ("sharp_llada", 1.0),
                                         ("sharp_dream", 0.0)])
def test_greedy_check_matches_llada_loop(request, fixture, cfg):
    model = request.getfixturevalue(fixture)
    rng = np.random.default_rng(11)
    pairs, want = [], []
    for i in range(6):
        prefix = rng.integers(2, MASK, size=int(rng.integers(2, 7))).tolist()
        a = 1 + i % 4
        greedy = _llada_greedy(model, prefix, a, cfg)
        same = np.where(greedy == MASK, 2, greedy)  # a committed MASK: no target equals it
        wrong = same.copy()
        wrong[i % a] = 2 + (wrong[i % a] - 1 + int(rng.integers(0, 59))) % (MASK - 2)
        for target in (same, wrong):
            pairs.append((prefix, target.tolist()))
            want.append(bool(np.all(target == greedy)))
    assert any(want) and not all(want)
    got = _runner(model, cfg, batch_size=4, mc_num=4).greedy(pairs)
    assert got == want


def test_buckets_and_packing():
    assert [elbo.bucket(n) for n in (1, 8, 9, 57, 65, 100, 129, 200, 300)] == [
        8, 8, 16, 64, 80, 112, 192, 256, 384]
    tokens, amask, lengths = elbo.pack_rows([([5, 6], [7]), ([5], [8, 9, 10])], 4, 4, pad_id=1)
    assert tokens.tolist() == [[1, 1, 5, 6, 7, 1, 1, 1], [1, 1, 1, 5, 8, 9, 10, 1]]
    assert amask.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0]]
    assert lengths.tolist() == [1, 3]
    with pytest.raises(ValueError, match="do not fit"):
        elbo.pack_rows([([5] * 5, [7])], 4, 4, pad_id=1)
