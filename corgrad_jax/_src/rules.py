"""A description of every rule, for registries: name, factory, options, reference.

A trainer that builds its algorithms by name (``experiments/``) reads :data:`RULES`:
whether a rule takes ``granularity=`` and ``num_slices=`` (every rule on the Gram
engine), whether its factory needs the number of domains first (rules whose state is
sized at ``init``), its native scale, and where it comes from.

Example:
  >>> from corgrad_jax import RULES
  >>> [r.name for r in RULES if r.takes_granularity][:4]
  ['corgrad', 'upgrad', 'dual_proj', 'mgda']
  >>> info = next(r for r in RULES if r.name == "grad_vac")
  >>> tx = info.factory(3, granularity="layer")  # D first: its state is sized at init
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optax

from corgrad_jax._src import agreement, balancing, corgrad, dual_cone, grad_vac, min_norm
from corgrad_jax._src import nash_mtl as nash


@dataclasses.dataclass(frozen=True)
class RuleInfo:
    """One rule of the library.

    Attributes:
      name: the factory's name in :mod:`corgrad_jax`.
      factory: the factory.
      takes_granularity: it accepts ``granularity=`` and ``num_slices=``.
      needs_num_domains: its first argument is D (its state is sized at ``init``).
      native_reduction: ``"sum"`` or ``"mean"``, the scale of its reference (the default
        ``reduction`` where it has one).
      reference: the paper and the peer implementation it is checked against.
    """

    name: str
    factory: Callable[..., optax.GradientTransformationExtraArgs]
    takes_granularity: bool
    needs_num_domains: bool
    native_reduction: str
    reference: str


RULES: tuple[RuleInfo, ...] = (
    RuleInfo("corgrad", corgrad.corgrad, True, False, "sum",
             "Zhou et al. 2024, Alg. 1; official correct_grad"),
    RuleInfo("pcgrad", corgrad.pcgrad, False, False, "sum", "Yu et al. 2020; torchjd PCGrad"),
    RuleInfo("upgrad", dual_cone.upgrad, True, False, "mean",
             "Quinton & Rey 2024; torchjd UPGrad"),
    RuleInfo("dual_proj", dual_cone.dual_proj, True, False, "mean",
             "Lopez-Paz & Ranzato 2017; torchjd DualProj"),
    RuleInfo("mgda", min_norm.mgda, True, False, "mean", "Sener & Koltun 2018; torchjd MGDA"),
    RuleInfo("cagrad", min_norm.cagrad, True, False, "mean",
             "Liu et al. 2021; torchjd CAGrad, LibMTL CAGrad"),
    RuleInfo("imtl_g", balancing.imtl_g, True, False, "mean", "Liu et al. 2021; torchjd IMTLG"),
    RuleInfo("aligned_mtl", balancing.aligned_mtl, True, False, "mean",
             "Senushkin et al. 2023; torchjd AlignedMTL"),
    RuleInfo("con_fig", balancing.con_fig, True, False, "sum", "Liu et al. 2024; torchjd ConFIG"),
    RuleInfo("grad_vac", grad_vac.grad_vac, True, True, "sum",
             "Wang et al. 2021; torchjd GradVac, LibMTL GradVac"),
    RuleInfo("nash_mtl", nash.nash_mtl, True, True, "sum", "Navon et al. 2022; torchjd NashMTL"),
    RuleInfo("grad_drop", agreement.grad_drop, False, False, "sum",
             "Chen et al. 2020; torchjd GradDrop"),
    RuleInfo("sand_mask", agreement.sand_mask, False, False, "mean",
             "Shahtalebi et al. 2021; DomainBed SANDMask"),
    RuleInfo("and_mask", agreement.and_mask, False, False, "mean",
             "Parascandolo et al. 2021; DomainBed ANDMask"),
    RuleInfo("agreement_sum", agreement.agreement_sum, False, False, "sum",
             "Mansilla et al. 2021"),
    RuleInfo("agreement_rand", agreement.agreement_rand, False, False, "sum",
             "Mansilla et al. 2021"),
    RuleInfo("mean_gradients", agreement.mean_gradients, False, False, "mean", "ERM"),
)
"""Every rule of :mod:`corgrad_jax`, in the order of the README's table."""
