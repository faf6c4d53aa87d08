"""The benchmarks' memory floors compute what they stand for (D reads and one write of
the same gradients), and only what runs under the floor by more than the noise of
interleaved medians is flagged."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_corgrad import jitted_floor, stacked_resnet  # noqa: E402
from common import (  # noqa: E402
    FLOOR_BLOCK,
    FLOOR_NOISE,
    floor_warnings,
    least_floor,
    memory_floor,
)

SHAPES = [(64, 3, 7, 7), (64,), (1000, 512), (1000,)]  # ResNet18's first and last leaves


@pytest.mark.parametrize("num_domains", [2, 3, 5])
def test_both_floors_write_the_sum_of_the_domains(num_domains: int) -> None:
    size = sum(int(np.prod(shape)) for shape in SHAPES)
    assert size % FLOOR_BLOCK, "the last block must be a short one"
    flat, numpy_floor = memory_floor(num_domains, size)
    expected = np.sum(np.stack(flat).astype(np.float64), axis=0)
    np.testing.assert_allclose(numpy_floor(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numpy_floor(), expected, rtol=1e-5, atol=1e-5)  # reused output

    summed = jitted_floor(stacked_resnet(flat, SHAPES))()
    assert sorted(summed) == [f"p{k:02d}" for k in range(len(SHAPES))]
    leaves = [np.asarray(summed[f"p{k:02d}"]) for k in range(len(SHAPES))]
    assert [leaf.shape for leaf in leaves] == SHAPES
    np.testing.assert_allclose(np.concatenate([leaf.reshape(-1) for leaf in leaves]),
                               expected, rtol=1e-5, atol=1e-5)


def test_floor_warnings_flag_only_what_runs_under_the_floor_beyond_noise() -> None:
    ratios = {"ERM mean": 1.05, "noise": FLOOR_NOISE + 0.01, "suspect": FLOOR_NOISE - 0.01,
              "old floor": 0.49, "rule": 2.2}
    lines = floor_warnings(ratios)
    assert len(lines) == 2
    assert "suspect" in lines[0] and "old floor" in lines[1] and "0.49x" in lines[1]


def test_the_floor_is_the_least_of_its_programs() -> None:
    medians = {"jitted sum": 9.3, "ERM mean [default]": 7.6, "ERM mean [reassociate]": 8.2,
               "NumPy sum, one core": 9.2, "rule": 14.0}
    programs = ["jitted sum", "ERM mean [default]", "ERM mean [reassociate]",
                "NumPy sum, one core"]
    assert least_floor(medians, programs) == 7.6
    assert least_floor(medians, ["jitted sum", "NumPy sum, one core"]) == 9.2
    assert not floor_warnings({name: medians[name] / 7.6 for name in programs})
