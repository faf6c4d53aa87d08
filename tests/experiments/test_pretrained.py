"""Tests of :mod:`experiments.models.pretrained` and :mod:`experiments.models.resnet`.

The golden fixture (``tools/make_resnet_golden.py``, torch 2.x) holds a width-8,
5-class ResNet-18 in torchvision's layout with random weights and random BatchNorm
statistics, an input batch and torch's eval-mode logits; these tests run without torch.
"""

from __future__ import annotations

import copy
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from experiments.models.pretrained import (
    convert_resnet18_state_dict,
    load_resnet18_weights,
    read_state_dict,
)
from experiments.models.resnet import ResNet18

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "resnet18_golden.safetensors")
WIDTH, NUM_CLASSES = 8, 5


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(state dict, NHWC input, torch logits)."""
    tensors = load_file(FIXTURE)
    images = tensors.pop("golden.input").transpose(0, 2, 3, 1)
    logits = tensors.pop("golden.logits")
    return tensors, images, logits


def _init(num_classes: int = NUM_CLASSES, width: int = WIDTH, seed: int = 0) -> dict:
    model = ResNet18(num_classes=num_classes, width=width)
    return model.init(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)), train=False)


def test_converted_weights_reproduce_torch_logits(golden: tuple) -> None:
    state, images, expected = golden
    variables = convert_resnet18_state_dict(state, _init())
    apply = jax.jit(ResNet18(num_classes=NUM_CLASSES, width=WIDTH).apply, static_argnames="train")
    with jax.default_matmul_precision("highest"):
        logits = apply(variables, images, train=False)
        # Train mode with no dropout is the same function: BatchNorm is frozen.
        train_logits = apply(variables, images, train=True)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(train_logits, expected, rtol=1e-4, atol=1e-4)
    assert "torch" not in sys.modules


def test_key_mapping_is_torchvisions(golden: tuple) -> None:
    """Every variable has a torchvision key and vice versa (num_batches_tracked aside)."""
    from flax import traverse_util

    from experiments.models.pretrained import _torch_key

    state, _, _ = golden
    keys = {_torch_key(path) for path in traverse_util.flatten_dict(_init())}
    torch_keys = {key for key in state if not key.endswith("num_batches_tracked")}
    assert keys == torch_keys
    assert len(keys) == 102  # torchvision resnet18: 122 keys, 20 of them num_batches_tracked
    assert "layer2.0.downsample.0.weight" in keys and "layer4.1.bn2.running_var" in keys


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_load_from_file(golden: tuple, tmp_path: os.PathLike, suffix: str) -> None:
    state, _, _ = golden
    path = os.path.join(tmp_path, "weights" + suffix)
    if suffix == ".npz":
        np.savez(path, **state)
    else:
        save_file(state, path)
    loaded = load_resnet18_weights(path, _init())
    direct = convert_resnet18_state_dict(state, _init())
    jax.tree.map(np.testing.assert_array_equal, loaded, direct)
    np.testing.assert_array_equal(
        loaded["params"]["layer2_0"]["downsample_0"]["kernel"],
        state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(loaded["batch_stats"]["bn1"]["var"], state["bn1.running_var"])
    np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], state["fc.weight"].T)


def test_input_variables_are_not_mutated(golden: tuple) -> None:
    variables = _init()
    before = copy.deepcopy(jax.tree.map(np.asarray, variables))
    convert_resnet18_state_dict(golden[0], variables)
    jax.tree.map(np.testing.assert_array_equal, variables, before)


def test_classifier_with_other_classes_is_kept(golden: tuple) -> None:
    """DomainBed replaces ImageNet's classifier: ``fc`` stays as initialised."""
    state, _, _ = golden
    variables = _init(num_classes=7)
    loaded = convert_resnet18_state_dict(state, variables)
    np.testing.assert_array_equal(
        loaded["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"]
    )
    np.testing.assert_array_equal(
        loaded["params"]["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0)
    )
    headless = {key: value for key, value in state.items() if not key.startswith("fc.")}
    loaded = convert_resnet18_state_dict(headless, variables)
    np.testing.assert_array_equal(loaded["params"]["fc"]["bias"], variables["params"]["fc"]["bias"])


def test_data_parallel_prefix_is_stripped(golden: tuple) -> None:
    state, _, _ = golden
    prefixed = {f"module.{key}": value for key, value in state.items()}
    loaded = convert_resnet18_state_dict(prefixed, _init())
    np.testing.assert_array_equal(loaded["batch_stats"]["bn1"]["mean"], state["bn1.running_mean"])


def test_missing_key(golden: tuple) -> None:
    state = dict(golden[0])
    del state["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing keys .*layer3\.1\.bn2\.running_var"):
        convert_resnet18_state_dict(state, _init())


def test_unexpected_key(golden: tuple) -> None:
    state = dict(golden[0])
    state["layer5.0.conv1.weight"] = np.zeros((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys .*layer5\.0\.conv1\.weight"):
        convert_resnet18_state_dict(state, _init())


def test_wrong_shape_names_key_and_shapes(golden: tuple) -> None:
    state = dict(golden[0])
    state["conv1.weight"] = state["conv1.weight"].transpose(0, 1, 3, 2)[:, :, :, :6]
    with pytest.raises(
        ValueError, match=r"'conv1\.weight'.*expected \(8, 3, 7, 7\).*found \(8, 3, 7, 6\)"
    ):
        convert_resnet18_state_dict(state, _init())
    with pytest.raises(ValueError, match=r"shape mismatch for 'conv1\.weight'"):
        convert_resnet18_state_dict(golden[0], _init(width=16))  # ImageNet width vs narrow


def test_file_format_errors(golden: tuple, tmp_path: os.PathLike) -> None:
    with pytest.raises(ValueError, match="unsupported weights file"):
        read_state_dict(os.path.join(tmp_path, "weights.bin"))
    pickled = os.path.join(tmp_path, "pickled.npz")
    np.savez(pickled, conv1=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        read_state_dict(pickled)
    if "torch" not in sys.modules:
        try:
            import torch  # noqa: F401
        except ImportError:
            with pytest.raises(ImportError, match="needs torch"):
                read_state_dict(os.path.join(tmp_path, "weights.pth"))


def test_dropout_and_frozen_batch_norm() -> None:
    model = ResNet18(num_classes=3, dropout_rate=0.5, width=4)
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), images, train=False)
    assert set(variables) == {"params", "batch_stats"}
    evaluation = model.apply(variables, images, train=False)
    first, mutated = model.apply(
        variables, images, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
    )
    second = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(first, evaluation) and not np.allclose(first, second)
    jax.tree.map(np.testing.assert_array_equal, mutated["batch_stats"], variables["batch_stats"])
    widths = [variables["params"][f"layer{i}_0"]["conv1"]["kernel"].shape[-1] for i in range(1, 5)]
    assert widths == [4, 8, 16, 32]
