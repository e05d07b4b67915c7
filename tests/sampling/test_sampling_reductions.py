"""The sort-free reductions in ``strategies.py`` against ``jnp.argmax`` / ``jax.lax.top_k`` on
arrays built to break them: ties, repeated maxima, -inf, signed zeros, NaN."""

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.sampling.strategies import first_argmax, kth_largest, softmax_at, top_values


def _cases():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5, 40)).astype(np.float32)
    z[0, :, :] = np.round(z[0] * 2) / 2  # many ties
    z[1, :, 7] = z[1, :, 3] = z[1].max() + 1  # a repeated maximum
    z[2, :, ::3] = -np.inf
    z[3, :, :20] = 0.0
    z[3, :, 20:] = -0.0  # signed zeros
    z[4, :, :] = -np.inf  # nothing finite
    z[4, 0, 5] = 1.0
    z[5, :, 9] = np.nan
    return jnp.asarray(z)


def test_first_argmax_is_jnp_argmax():
    z = _cases()
    np.testing.assert_array_equal(first_argmax(z), jnp.argmax(z, axis=-1))
    allowed = jnp.arange(z.shape[-1]) != 3
    np.testing.assert_array_equal(first_argmax(z, allowed),
                                  jnp.argmax(jnp.where(allowed, z, -jnp.inf), axis=-1))


def test_top_values_and_kth_largest_are_top_k():
    z = _cases()[:5]  # lax.top_k's order of NaN is not specified
    for k in (1, 2, 3, 7, 40):
        vals, ids = jax.lax.top_k(z, k)
        if k <= 3:
            ours_v, ours_i = top_values(z, k)
            np.testing.assert_array_equal(ours_i, ids)
            np.testing.assert_array_equal(ours_v, vals)
        kth = np.asarray(kth_largest(z, k))
        np.testing.assert_array_equal(kth == vals[..., -1:], True)  # -0.0 == 0.0: same filter


def test_softmax_at_is_softmax_gather():
    z = _cases()[:4]
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 40, z.shape[:2]))
    want = jnp.take_along_axis(jax.nn.softmax(z, axis=-1), tokens[..., None], -1)[..., 0]
    np.testing.assert_array_max_ulp(softmax_at(z, tokens), want, maxulp=1)
