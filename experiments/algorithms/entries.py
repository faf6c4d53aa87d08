"""The trainer's algorithms, one :func:`~experiments.algorithms.registry.register` each.

Every one takes the per-domain gradients stacked on axis 0 (one minibatch per training
domain and step) and returns one update, which Adam then scales. Hyperparameters follow
DomainBed's registry where DomainBed has the method (AND-mask's ``tau``), the paper's
Section 4.1 for CorGrad (``num_slices`` 10, ``alpha`` 0.6, decayed to 0 over training;
the official code keeps it constant).

To add a method: one more ``register(Algorithm(...))`` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.algorithms.registry import Algorithm, library, register
from experiments.hparams import COUNT, PROBABILITY, Domain, HParam

NUM_SLICES = HParam(10, lambda r: int(r.choice([5, 10, 20, 50])), COUNT)
ALPHA = HParam(0.6, lambda r: float(r.uniform(0.5, 1.0)), PROBABILITY)
ALPHA_SCHEDULES = ("log_decay", "constant")


def _decays(hparams: Mapping[str, Any]) -> bool:
    return hparams.get("alpha_schedule", "constant") == "log_decay"


def _alpha(hparams: Mapping[str, Any], total_steps: int) -> Any:
    """``alpha`` as a float, or its log decay over ``total_steps`` (Sec. 3.6)."""
    alpha = float(hparams["alpha"])
    if _decays(hparams):
        return library().log_decay_schedule(alpha, max(total_steps, 2))
    return alpha


register(Algorithm(
    name="erm",
    display_name="ERM",
    transformation="mean_gradients()",
    build=lambda hparams, *, seed, total_steps: library().mean_gradients(),
    paper_label="ERM",
    reference="Vapnik 1998; DomainBed's ERM: the mean of the domain losses",
))
register(Algorithm(
    name="pcgrad",
    display_name="PCGrad",
    transformation="pcgrad()",
    build=lambda hparams, *, seed, total_steps: library().pcgrad(seed=seed),
    paper_label="PCGrad",
    reference="Yu et al. 2020: whole-model projections (coarse-grained)",
))
register(Algorithm(
    name="agr_sum",
    display_name="AgrSum",
    transformation="agreement_sum()",
    build=lambda hparams, *, seed, total_steps: library().agreement_sum(),
    reference="Mansilla et al. 2021",
))
register(Algorithm(
    name="agr_rand",
    display_name="AgrRand",
    transformation="agreement_rand()",
    build=lambda hparams, *, seed, total_steps: library().agreement_rand(seed=seed),
    reference="Mansilla et al. 2021",
))
register(Algorithm(
    name="and_mask",
    display_name="AND-mask",
    transformation="and_mask(tau)",
    build=lambda hparams, *, seed, total_steps: library().and_mask(
        threshold=float(hparams["tau"])),
    hparams={"tau": HParam(1.0, lambda r: float(r.uniform(0.5, 1.0)), PROBABILITY)},
    reference="Parascandolo et al. 2021; DomainBed's ANDMask",
))
register(Algorithm(
    name="corgrad",
    display_name="CorGrad",
    transformation="corgrad(num_slices, log_decay_schedule(alpha, steps))",
    build=lambda hparams, *, seed, total_steps: library().corgrad(
        int(hparams["num_slices"]), _alpha(hparams, total_steps), seed=seed),
    hparams={
        "num_slices": NUM_SLICES,
        "alpha": ALPHA,
        "alpha_schedule": HParam("log_decay", lambda r: "log_decay",
                                 Domain(str, choices=ALPHA_SCHEDULES)),
    },
    uses_total_steps=_decays,
    paper_label="L+S+D",
    reference="Zhou et al. 2024: layering + slicing + smoothing, the paper's method",
))
register(Algorithm(
    name="corgrad_layer",
    display_name="CorGrad (L)",
    transformation='corgrad(granularity="layer", alpha=None)',
    build=lambda hparams, *, seed, total_steps: library().corgrad(
        granularity="layer", alpha=None, seed=seed),
    paper_label="L",
    reference="Zhou et al. 2024, Table 2: layering only",
))
register(Algorithm(
    name="corgrad_no_smoothing",
    display_name="CorGrad (L+S)",
    transformation="corgrad(num_slices, alpha=None)",
    build=lambda hparams, *, seed, total_steps: library().corgrad(
        int(hparams["num_slices"]), alpha=None, seed=seed),
    hparams={"num_slices": NUM_SLICES},
    paper_label="L+S",
    reference="Zhou et al. 2024, Table 2: layering + slicing",
))
register(Algorithm(
    name="corgrad_official",
    display_name="CorGrad (official code)",
    transformation='corgrad(num_slices, alpha, variant="official")',
    build=lambda hparams, *, seed, total_steps: library().corgrad(
        int(hparams["num_slices"]), float(hparams["alpha"]), variant="official", seed=seed),
    hparams={"num_slices": NUM_SLICES, "alpha": ALPHA},
    torch_layout=True,
    reference="libzwo/CorGrad's correct_grad, bug for bug (docs/algorithm.md, Sec. 6)",
))
