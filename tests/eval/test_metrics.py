"""pass@k against exact enumeration and exact rational arithmetic; mean / standard error."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from dllm_jax.eval.metrics import default_ks, mean_and_stderr, pass_at_k, pass_at_k_array


def _enumerated(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_matches_exact_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_enumerated(n, c, k), abs=1e-12)


@pytest.mark.parametrize("c,k", [(1, 1), (1, 512), (3, 100), (10, 1000), (512, 64),
                                 (1000, 1), (100, 512), (7, 1017)])
def test_stable_at_n_1024(c, k):
    n = 1024
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k)) if n - c >= k else Fraction(1)
    got = pass_at_k(n, c, k)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(float(exact), rel=1e-12, abs=1e-300)


def test_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 4, 7) == 1.0  # k > n - c: every k-subset holds a correct sample
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)  # pass@1 = c / n
    assert pass_at_k(1024, 1, 1024) == 1.0
    values = [pass_at_k(64, 5, k) for k in range(1, 65)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))  # monotone in k


@pytest.mark.parametrize("args", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6),
                                  (5.0, 2, 1), (True, 1, 1)])
def test_bad_counts(args):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(*args)


def test_array_helper_matches_scalar():
    n = np.array([5, 10, 16, 1024])
    c = np.array([0, 3, 16, 10])
    got = pass_at_k_array(n, c, 4)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, [pass_at_k(int(a), int(b), 4) for a, b in zip(n, c,
                                                                                strict=True)])
    with pytest.raises(ValueError, match="shape"):
        pass_at_k_array([5, 6], [1], 1)


def test_mean_and_stderr():
    x = [0.0, 1.0, 1.0, 0.5, 0.25]
    m, se = mean_and_stderr(x)
    ref_se = math.sqrt(sum((v - sum(x) / 5) ** 2 for v in x) / 4) / math.sqrt(5)
    assert m == pytest.approx(sum(x) / 5, abs=1e-15)
    assert se == pytest.approx(ref_se, abs=1e-15)
    assert mean_and_stderr([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_and_stderr([])


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(10) == [1, 2, 4, 8, 10]
