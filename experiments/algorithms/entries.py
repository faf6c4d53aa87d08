"""The trainer's algorithms, one :func:`~experiments.algorithms.registry.register` each.

Every one takes the per-domain gradients stacked on axis 0 (one minibatch per training
domain and step) and returns one update, which Adam then scales. Hyperparameters follow
DomainBed's registry where DomainBed has the method (AND-mask's ``tau``, SAND-mask's
``tau`` and ``k``), the paper's Section 4.1 for CorGrad (``num_slices`` 10, ``alpha``
0.6, decayed to 0 over training; the official code keeps it constant), and elsewhere
the authors' defaults. The rules on the Gram engine (UPGrad to Nash-MTL) take the
hparams ``granularity`` (default ``model``, the piece their authors use; the random
search keeps it) and ``num_slices``: ``--hparams '{"granularity": "slice"}'`` runs
UPGrad slice by slice.

To add a method: one more ``register(Algorithm(...))`` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.algorithms.registry import Algorithm, library, register
from experiments.hparams import COUNT, POSITIVE, PROBABILITY, Domain, HParam

NUM_SLICES = HParam(10, lambda r: int(r.choice([5, 10, 20, 50])), COUNT)
GRANULARITIES = ("model", "layer", "slice", "element")
""":data:`corgrad_jax.GRANULARITIES` (spelled out: the registry imports no JAX)."""
PIECES = {
    "granularity": HParam("model", lambda r: "model", Domain(str, choices=GRANULARITIES)),
    "num_slices": NUM_SLICES,
}
"""The hparams of every rule on the Gram engine: the piece it acts on."""
ALPHA = HParam(0.6, lambda r: float(r.uniform(0.5, 1.0)), PROBABILITY)
ALPHA_SCHEDULES = ("log_decay", "constant")


def _decays(hparams: Mapping[str, Any]) -> bool:
    return hparams.get("alpha_schedule", "constant") == "log_decay"


def _pieces(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :data:`PIECES`."""
    return {"granularity": str(hparams["granularity"]), "num_slices": int(hparams["num_slices"])}


def _register_gram_rule(name: str, display_name: str, reference: str) -> None:
    """Registers the :mod:`corgrad_jax` Gram rule ``name`` with only the :data:`PIECES`
    hparams (its own options at their defaults, the authors')."""

    def build(hparams: Mapping[str, Any], *, seed: int, total_steps: int, num_domains: int
              ) -> Any:
        del seed, total_steps, num_domains
        return getattr(library(), name)(**_pieces(hparams))

    register(Algorithm(
        name=name,
        display_name=display_name,
        transformation=f"{name}(granularity=, num_slices=)",
        build=build,
        hparams=PIECES,
        reference=reference,
    ))


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
    build=lambda hparams, *, seed, total_steps, num_domains: library().mean_gradients(),
    paper_label="ERM",
    reference="Vapnik 1998; DomainBed's ERM: the mean of the domain losses",
))
register(Algorithm(
    name="pcgrad",
    display_name="PCGrad",
    transformation="pcgrad()",
    build=lambda hparams, *, seed, total_steps, num_domains: library().pcgrad(seed=seed),
    paper_label="PCGrad",
    reference="Yu et al. 2020: whole-model projections (coarse-grained)",
))
register(Algorithm(
    name="agr_sum",
    display_name="AgrSum",
    transformation="agreement_sum()",
    build=lambda hparams, *, seed, total_steps, num_domains: library().agreement_sum(),
    reference="Mansilla et al. 2021",
))
register(Algorithm(
    name="agr_rand",
    display_name="AgrRand",
    transformation="agreement_rand()",
    build=lambda hparams, *, seed, total_steps, num_domains: library().agreement_rand(seed=seed),
    reference="Mansilla et al. 2021",
))
register(Algorithm(
    name="and_mask",
    display_name="AND-mask",
    transformation="and_mask(tau)",
    build=lambda hparams, *, seed, total_steps, num_domains: library().and_mask(
        threshold=float(hparams["tau"])),
    hparams={"tau": HParam(1.0, lambda r: float(r.uniform(0.5, 1.0)), PROBABILITY)},
    reference="Parascandolo et al. 2021; DomainBed's ANDMask",
))
register(Algorithm(
    name="corgrad",
    display_name="CorGrad",
    transformation="corgrad(num_slices, log_decay_schedule(alpha, steps))",
    build=lambda hparams, *, seed, total_steps, num_domains: library().corgrad(
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
    build=lambda hparams, *, seed, total_steps, num_domains: library().corgrad(
        granularity="layer", alpha=None, seed=seed),
    paper_label="L",
    reference="Zhou et al. 2024, Table 2: layering only",
))
register(Algorithm(
    name="corgrad_no_smoothing",
    display_name="CorGrad (L+S)",
    transformation="corgrad(num_slices, alpha=None)",
    build=lambda hparams, *, seed, total_steps, num_domains: library().corgrad(
        int(hparams["num_slices"]), alpha=None, seed=seed),
    hparams={"num_slices": NUM_SLICES},
    paper_label="L+S",
    reference="Zhou et al. 2024, Table 2: layering + slicing",
))
register(Algorithm(
    name="corgrad_official",
    display_name="CorGrad (official code)",
    transformation='corgrad(num_slices, alpha, variant="official")',
    build=lambda hparams, *, seed, total_steps, num_domains: library().corgrad(
        int(hparams["num_slices"]), float(hparams["alpha"]), variant="official", seed=seed),
    hparams={"num_slices": NUM_SLICES, "alpha": ALPHA},
    torch_layout=True,
    reference="libzwo/CorGrad's correct_grad, bug for bug (docs/algorithm.md, Sec. 6)",
))
_register_gram_rule("upgrad", "UPGrad",
                    "Quinton & Rey 2024: the mean of the projections onto the dual cone")
_register_gram_rule("dual_proj", "DualProj",
                    "Lopez-Paz & Ranzato 2017 (GEM's projection); torchjd's DualProj")
_register_gram_rule("mgda", "MGDA",
                    "Sener & Koltun 2018: the min-norm point of the convex hull")
register(Algorithm(
    name="cagrad",
    display_name="CAGrad",
    transformation="cagrad(c, granularity=, num_slices=)",
    build=lambda hparams, *, seed, total_steps, num_domains: library().cagrad(
        float(hparams["c"]), **_pieces(hparams)),
    hparams={
        "c": HParam(0.4, lambda r: float(r.uniform(0.1, 0.9)),
                    Domain(float, 0.0, 1.0, high_open=True)),
        **PIECES,
    },
    reference="Liu et al. 2021 (c = 0.4, their multi-task default)",
))
_register_gram_rule("imtl_g", "IMTL-G",
                    "Liu et al. 2021: equal projections on every unit domain gradient")
_register_gram_rule("aligned_mtl", "Aligned-MTL",
                    "Senushkin et al. 2023 (scale mode min)")
_register_gram_rule("con_fig", "ConFIG",
                    "Liu et al. 2024: the direction of equal cosines, scaled")
register(Algorithm(
    name="grad_vac",
    display_name="GradVac",
    transformation="grad_vac(D, beta, granularity=, num_slices=)",
    build=lambda hparams, *, seed, total_steps, num_domains: library().grad_vac(
        num_domains, float(hparams["beta"]), seed=seed, **_pieces(hparams)),
    hparams={
        "beta": HParam(0.5, lambda r: float(r.choice([0.01, 0.1, 0.5])), PROBABILITY),
        **PIECES,
    },
    reference="Wang et al. 2021 (beta 0.5, torchjd's and LibMTL's default)",
))
register(Algorithm(
    name="nash_mtl",
    display_name="Nash-MTL",
    transformation="nash_mtl(D, granularity=, num_slices=)",
    build=lambda hparams, *, seed, total_steps, num_domains: library().nash_mtl(
        num_domains, **_pieces(hparams)),
    hparams=PIECES,
    reference="Navon et al. 2022 (max_norm 1, weights every step)",
))
register(Algorithm(
    name="grad_drop",
    display_name="GradDrop",
    transformation="grad_drop()",
    build=lambda hparams, *, seed, total_steps, num_domains: library().grad_drop(seed=seed),
    reference="Chen et al. 2020 (no leak)",
))
register(Algorithm(
    name="sand_mask",
    display_name="SAND-mask",
    transformation="sand_mask(tau, k)",
    build=lambda hparams, *, seed, total_steps, num_domains: library().sand_mask(
        float(hparams["tau"]), float(hparams["k"])),
    hparams={
        "tau": HParam(0.5, lambda r: float(r.uniform(0.0, 1.0)), PROBABILITY),
        "k": HParam(10.0, lambda r: float(10 ** r.uniform(-3, 5)), POSITIVE),
    },
    reference="Shahtalebi et al. 2021; DomainBed's SANDMask and its search (tau 0.5 for "
              "hparams_seed 0: DomainBed's default tau = 1 zeroes every update)",
))
