"""Tests of :mod:`experiments.hparams_registry` against DomainBed's registry."""

from __future__ import annotations

import pytest

from experiments.algorithms import ALGORITHMS
from experiments.hparams_registry import default_hparams, get_hparams, random_hparams
from experiments.seeding import seed_hash


def test_seed_hash_is_domainbeds_md5() -> None:
    # DomainBed: int(hashlib.md5(str(args).encode()).hexdigest(), 16) % 2**31.
    assert seed_hash(0, "lr") == seed_hash(0, "lr") != seed_hash(1, "lr")
    assert seed_hash("RotatedMNIST", "erm", [0], 0, 0) == 1939923406


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_defaults_follow_domainbed_and_the_paper(algorithm: str) -> None:
    mnist = default_hparams(algorithm, "RotatedMNIST")
    assert (mnist["lr"], mnist["batch_size"], mnist["weight_decay"]) == (1e-3, 64, 0.0)
    images = default_hparams(algorithm, "PACS")
    assert (images["lr"], images["batch_size"], images["resnet_dropout"]) == (5e-5, 32, 0.0)
    if algorithm in ("corgrad", "corgrad_no_smoothing", "corgrad_official"):
        assert mnist["num_slices"] == 10
    if algorithm in ("corgrad", "corgrad_official"):
        assert mnist["alpha"] == 0.6
    if algorithm == "and_mask":
        assert mnist["tau"] == 1.0


def test_hparams_seed_zero_is_the_defaults_and_others_are_random_draws() -> None:
    defaults = get_hparams("corgrad", "PACS", hparams_seed=0, trial_seed=3)
    assert defaults == default_hparams("corgrad", "PACS")
    drawn = get_hparams("corgrad", "PACS", hparams_seed=1, trial_seed=0)
    assert drawn == random_hparams("corgrad", "PACS", seed_hash(1, 0))
    assert drawn != defaults
    assert 10**-5 <= drawn["lr"] <= 10**-3.5 and 8 <= drawn["batch_size"] <= 45
    assert 0.5 <= drawn["alpha"] <= 1.0 and drawn["num_slices"] in (5, 10, 20, 50)
    assert drawn != get_hparams("corgrad", "PACS", hparams_seed=2, trial_seed=0)


def test_overrides_replace_and_unknown_names_are_rejected() -> None:
    hparams = get_hparams(
        "erm", "RotatedMNIST", hparams_seed=0, trial_seed=0, overrides={"batch_size": 8}
    )
    assert hparams["batch_size"] == 8
    with pytest.raises(ValueError, match="unknown hparams alpha"):
        get_hparams("erm", "RotatedMNIST", hparams_seed=0, trial_seed=0, overrides={"alpha": 1})


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dataset", ["RotatedMNIST", "PACS", "DomainNet"])
def test_every_default_and_random_draw_lies_in_its_hparams_domain(
    algorithm: str, dataset: str
) -> None:
    for seed in range(50):  # the registry's own values pass its own checks, unchanged
        drawn = get_hparams(algorithm, dataset, hparams_seed=seed, trial_seed=0)
        assert get_hparams(algorithm, dataset, hparams_seed=seed, trial_seed=0,
                           overrides=drawn) == drawn


def test_overrides_are_converted_to_the_hparams_type() -> None:
    hparams = get_hparams("corgrad", "RotatedMNIST", hparams_seed=0, trial_seed=0,
                          overrides={"batch_size": 32.0, "lr": 1, "alpha": 0})
    assert hparams["batch_size"] == 32 and type(hparams["batch_size"]) is int
    assert type(hparams["lr"]) is float and type(hparams["alpha"]) is float
