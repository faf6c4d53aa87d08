"""The element-wise rules' random draws against a NumPy Threefry-2x32 and JAX's own.

The oracle is written here from the cipher's definition (Salmon et al. 2011) in uint64
arithmetic, and checked against Random123's known answers; JAX's ``threefry2x32``
primitive is a second, independent implementation of the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import random as jax_random
from scipy import special, stats

from corgrad_jax._src import draws

MASK = np.uint64(0xFFFFFFFF)


def reference_threefry(key: tuple[int, int], c0: np.ndarray, c1: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32-20 in NumPy uint64, reduced mod 2^32 after every add."""
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    schedule = (k0, k1, k0 ^ k1 ^ np.uint64(0x1BD11BDA))
    x0 = (c0.astype(np.uint64) + schedule[0]) & MASK
    x1 = (c1.astype(np.uint64) + schedule[1]) & MASK
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    for group in range(5):
        for r in rotations[group % 2]:
            x0 = (x0 + x1) & MASK
            x1 = (((x1 << np.uint64(r)) | (x1 >> np.uint64(32 - r))) & MASK) ^ x0
        x0 = (x0 + schedule[(group + 1) % 3]) & MASK
        x1 = (x1 + schedule[(group + 2) % 3] + np.uint64(group + 1)) & MASK
    return x0.astype(np.uint32), x1.astype(np.uint32)


# Random123's known-answer tests for threefry2x32_20: key, counter, output.
KNOWN = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
         ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
         ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]


@pytest.mark.parametrize("key, counter, expected", KNOWN)
def test_the_reference_and_the_cipher_give_the_known_answers(key, counter, expected):
    c0, c1 = (np.array([c], np.uint32) for c in counter)
    assert [int(w[0]) for w in reference_threefry(key, c0, c1)] == list(expected)
    words = draws.threefry2x32(tuple(jnp.uint32(k) for k in key),
                               tuple(jnp.asarray(c) for c in (c0, c1)))
    assert [int(w[0]) for w in words] == list(expected)


def test_the_cipher_equals_jax_primitive_on_a_million_random_blocks(rng):
    key = rng.integers(0, 2**32, 2, dtype=np.uint32)
    c0, c1 = (rng.integers(0, 2**32, 1_000_003, dtype=np.uint32) for _ in range(2))
    mine = jax.jit(draws.threefry2x32)((key[0], key[1]), (c0, c1))
    theirs = jax_random.threefry2x32_p.bind(jnp.asarray(key[0]), jnp.asarray(key[1]),
                                            jnp.asarray(c0), jnp.asarray(c1))
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def reference_words(key: jax.Array, n: int) -> np.ndarray:
    """Both words of the blocks (0, c), c < ceil(n/2): the first words, then the second."""
    blocks = -(-n // 2)
    k0, k1 = (int(k) for k in np.asarray(jax.random.key_data(key)))
    counters = np.arange(blocks, dtype=np.uint32)
    first, second = reference_threefry((k0, k1), np.zeros_like(counters), counters)
    return np.concatenate([first, second])[:n]


@pytest.mark.parametrize("n", [1, 2, 7, 1_000_001])
@pytest.mark.parametrize("typed", [False, True])
def test_uniform_is_the_top_23_bits_of_every_word(n, typed):
    # The key as the transformations hold it (raw uint32) and as a typed key.
    key = jax.random.key(11) if typed else jax.random.PRNGKey(11)
    got = np.asarray(jax.jit(draws.uniform, static_argnums=(1, 2))(key, (n,), jnp.float32))
    expected = (reference_words(key, n) >> 9).astype(np.float64) / 2.0**23
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.astype(np.float64), expected)


def test_uniform_keeps_the_shape_and_equals_itself_eagerly():
    key = jax.random.PRNGKey(3)
    got = draws.uniform(key, (3, 5, 7), jnp.float32)
    assert got.shape == (3, 5, 7)
    np.testing.assert_array_equal(got, jax.jit(draws.uniform, static_argnums=(1, 2))(
        key, (3, 5, 7), jnp.float32))
    np.testing.assert_array_equal(got.reshape(-1), draws.uniform(key, (105,), jnp.float32))


def test_uniform_and_normal_are_distributed_as_claimed():
    # 2M numbers: a Kolmogorov-Smirnov test rejects a shift of 1e-3 there (critical
    # distance about 1.2e-3 at the 1e-3 level); both halves of the blocks apart, and
    # the two words of a block uncorrelated.
    n = 2_000_000
    u = np.asarray(draws.uniform(jax.random.PRNGKey(5), (n,), jnp.float32), np.float64)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(u[: n // 2], "uniform").pvalue > 1e-3
    assert stats.kstest(u[n // 2:], "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(u[: n // 2], u[n // 2:])[0, 1]) < 5 / np.sqrt(n // 2)
    z = np.asarray(draws.normal(jax.random.PRNGKey(6), (n,), jnp.float32), np.float64)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert np.isfinite(z).all()


def test_normal_is_the_inverse_error_function_of_the_uniform_numbers():
    key, n = jax.random.PRNGKey(8), 100_001
    low = np.nextafter(np.float32(-1), np.float32(1))
    v = np.maximum(low, np.asarray(draws.uniform(key, (n,), jnp.float32)) * (1 - low) + low)
    expected = np.sqrt(2) * special.erfinv(v.astype(np.float64))
    got = np.asarray(draws.normal(key, (n,), jnp.float32), np.float64)
    # float32 erf_inv loses accuracy in the tails: 5.6e-6 relative at |z| = 3.8 here.
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("draw, reference", [(draws.uniform, jax.random.uniform),
                                             (draws.normal, jax.random.normal)])
def test_other_generators_and_dtypes_go_to_jax_random(draw, reference):
    rbg = jax.random.key(2, impl="rbg")
    np.testing.assert_array_equal(draw(rbg, (1000,), jnp.float32),
                                  reference(rbg, (1000,), jnp.float32))
    key = jax.random.PRNGKey(2)
    np.testing.assert_array_equal(draw(key, (1000,), jnp.bfloat16),
                                  reference(key, (1000,), jnp.bfloat16))
    with jax.enable_x64(True):
        np.testing.assert_array_equal(draw(key, (1000,), jnp.float64),
                                      reference(key, (1000,), jnp.float64))
