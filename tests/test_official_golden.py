"""variant="official" against outputs of the official PyTorch ``correct_grad``.

The fixture was written by ``tools/make_official_golden.py``, which runs the official
function (from a checkout of its repository, not shipped here) on random float64 tensors
in PyTorch layout. The test needs neither torch nor that code.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from corgrad_jax import corgrad

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "official_correct_grad.npz")


@pytest.mark.skipif(not os.path.exists(FIXTURE), reason="golden fixture not generated")
def test_official_variant_matches_official_code():
    data = np.load(FIXTURE, allow_pickle=False)
    cases = sorted({k.split("/")[0] for k in data.files})
    assert cases
    for case in cases:
        num_leaves = int(data[f"{case}/num_leaves"])
        inputs = {f"l{k:02d}": jnp.asarray(data[f"{case}/in{k}"]) for k in range(num_leaves)}
        tx = corgrad(int(data[f"{case}/num_slices"]), float(data[f"{case}/alpha"]),
                     variant="official")
        with jax.enable_x64(True):
            out, state = jax.jit(tx.update)(inputs, tx.init(None))
        for k in range(num_leaves):
            expected = data[f"{case}/out{k}"]
            np.testing.assert_allclose(np.asarray(out[f"l{k:02d}"]), expected, rtol=1e-6,
                                       atol=1e-6 * np.abs(expected).max(), err_msg=case)
        assert float(state.modification_frequency) == pytest.approx(
            float(data[f"{case}/change_rate"]), rel=1e-6)
        assert float(state.modification_ratio) == pytest.approx(
            float(data[f"{case}/change_percentage"]), rel=1e-5)
