"""``jax.random.uniform`` and ``jax.random.normal``'s numbers, in one fused pass on a CPU.

GradDrop draws one uniform number per parameter and Agr-Rand one normal number: 11.7M a
step for ResNet18. JAX's default generator, Threefry-2x32 (Salmon et al. 2011), is a
keyed block cipher: 20 rounds of adds, rotations and xors map a pair of 32-bit counters
to a pair of 32-bit words. JAX (``jax_threefry_partitionable``, the default since
jax 0.5) gives number j the xor of the two words at the counters :math:`(0, j)`,

.. math::  b_j = w_0 \\oplus w_1, \\qquad (w_0, w_1) = \\operatorname{threefry}_k(0, j),

and makes a float of its top bits. On the CPU it lowers the cipher as a loop over its
five groups of rounds that reads and writes the whole arrays of words at every group:
121 ms for the 11.7M numbers on the README's 2-core CPU, most of GradDrop's time.

Here :func:`threefry2x32` is the same cipher written out, which XLA fuses with the
float conversion into one vectorized pass: the same numbers, bit for bit, in 20 ms.
That pass is kept apart from the loops that read the numbers
(:func:`~corgrad_jax._src.element_passes.unfused`), which would otherwise evaluate the
cipher again each, and one element at a time in a reduction. Keys of other generators
(``impl="rbg"``, or ``jax_default_prng_impl``), ``jax_threefry_partitionable=False``,
float types other than float32, and draws of 2^32 numbers or more go to ``jax.random``
itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from corgrad_jax._src.element_passes import unfused

_MANTISSA_BITS = 23
_ONE_BITS = np.uint32(0x3F800000)  # the bits of 1.0f
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key: tuple[jax.Array, jax.Array], counters: tuple[jax.Array, jax.Array]
                 ) -> tuple[jax.Array, jax.Array]:
    r"""Threefry-2x32 with 20 rounds (Salmon et al. 2011, Fig. 2): uint32 words in and out.

    Five groups of four rounds :math:`x_0 \leftarrow x_0 + x_1,\ x_1 \leftarrow
    (x_1 \lll r) \oplus x_0`, with the key schedule :math:`(k_0, k_1, k_0 \oplus k_1
    \oplus \mathtt{0x1BD11BDA})` added after each group: JAX's ``threefry2x32``
    primitive, unrolled.

    Example:
      >>> import jax.numpy as jnp
      >>> from corgrad_jax._src.draws import threefry2x32
      >>> zero = jnp.uint32(0)
      >>> words = threefry2x32((zero, zero), (zero, zero))
      >>> [hex(int(w)) for w in words]  # Random123's known answer
      ['0x6b200159', '0x99ba4efe']
    """
    schedule = (key[0], key[1], key[0] ^ key[1] ^ _PARITY)
    x0, x1 = counters[0] + schedule[0], counters[1] + schedule[1]
    for group in range(5):
        for r in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


def _numbers(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype,
             convert: Callable[[jax.Array], jax.Array]) -> jax.Array | None:
    """``convert`` of JAX's 32 random bits for each element of ``shape``, in one pass of
    their own; None where ``jax.random`` draws them otherwise."""
    n = math.prod(shape)
    if (jnp.dtype(dtype) != jnp.float32 or not jax.config.jax_threefry_partitionable
            or n >= 2**32 or str(jax.random.key_impl(key)) != "threefry2x32"):
        return None
    data = jax.random.key_data(key)
    if data.shape != (2,):
        return None

    def draw(data: jax.Array) -> jax.Array:
        counters = jax.lax.iota(jnp.uint32, n)
        words = threefry2x32((data[0], data[1]), (jnp.zeros_like(counters), counters))
        return convert(words[0] ^ words[1])

    return unfused(draw, data, data[0].astype(jnp.float32)).reshape(shape)


def _unit_floats(bits: jax.Array) -> jax.Array:
    """float32 in [0, 1) from the top 23 bits of each word."""
    mantissa = jax.lax.shift_right_logical(bits, np.uint32(32 - _MANTISSA_BITS))
    return jax.lax.bitcast_convert_type(mantissa | _ONE_BITS, jnp.float32) - np.float32(1)


def _normal_floats(bits: jax.Array) -> jax.Array:
    """float32 standard normal numbers: sqrt(2) erf^-1(v) of v uniform in (-1, 1)."""
    low = np.nextafter(np.float32(-1), np.float32(np.inf))
    v = jnp.maximum(low, _unit_floats(bits) * (np.float32(1) - low) + low)
    return np.float32(np.sqrt(2)) * jax.lax.erf_inv(v)


def uniform(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
            ) -> jax.Array:
    r"""``jax.random.uniform(key, shape, dtype)``: the same numbers, in one fused pass.

    Example:
      >>> import jax
      >>> from corgrad_jax._src.draws import uniform
      >>> key = jax.random.key(0)
      >>> bool((uniform(key, (1000,)) == jax.random.uniform(key, (1000,))).all())
      True
    """
    numbers = _numbers(key, shape, dtype, _unit_floats)
    return jax.random.uniform(key, shape, dtype) if numbers is None else numbers


def normal(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
           ) -> jax.Array:
    r"""``jax.random.normal(key, shape, dtype)``: the same numbers, in one fused pass,

    .. math::  z = \sqrt2\, \operatorname{erf}^{-1}(v), \qquad
               v = \max\big(l, l + (1 - l)\, u\big),

    with u as :func:`uniform` draws it and l the float32 next to -1 towards 0.

    Example:
      >>> import jax
      >>> from corgrad_jax._src.draws import normal
      >>> key = jax.random.key(0)
      >>> bool((normal(key, (1000,)) == jax.random.normal(key, (1000,))).all())
      True
    """
    numbers = _numbers(key, shape, dtype, _normal_floats)
    return jax.random.normal(key, shape, dtype) if numbers is None else numbers
