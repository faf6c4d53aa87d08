"""What this run's numbers say about the paper's claims: verdicts, as numbers and enums.

The REPORT's prose (:mod:`~experiments.analysis.report_figure3`,
:mod:`~experiments.analysis.report_figures6_7`,
:mod:`~experiments.analysis.report_table2`) is built from these; nothing here is text
for a reader, and nothing is decided in advance:

- a claim "a > b" over training **holds** when it holds over the whole run and in at
  least half of the bins where both are defined, **does not hold** when neither, and
  is **mixed** otherwise (:func:`verdict`);
- the element granularity's starting share is compared with its value on random
  gradients within 5 binomial standard errors (:func:`compare_with_random`);
- the element quantity the paper plotted is the one whose random-gradient values are
  nearest the paper's quotes 1/4 (N = 3) and 1/16 (N = 5) (:func:`paper_plotted`);
- Table 2's steps are compared with the paper's by direction and by two standard errors
  (:func:`ablation_findings`).

Example:
  >>> verdict(holds_overall=True, bins_holding=6, bins=10)
  <Verdict.HOLDS: 'holds'>
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence

import numpy as np

from experiments.analysis import paper
from experiments.analysis.ablation import ABLATION, AblationResult, Step, ablation_steps
from experiments.analysis.angles import AngleResult
from experiments.analysis.granularity import BinnedTrace, GranularityTrace, overall_ratio
from experiments.analysis.granularity_probe import GRANULARITIES


class Verdict(enum.Enum):
    """Whether a claim holds in this run."""

    HOLDS = "holds"
    DOES_NOT_HOLD = "does not hold"
    MIXED = "mixed"
    UNTESTABLE = "untestable"


class RandomComparison(enum.Enum):
    """How often the domain gradients' signs agree, against independent random ones."""

    MORE = "more often"
    LESS = "less often"
    AS_OFTEN = "as often"


class ElementQuantity(enum.Enum):
    """The element-level quantities that could be the paper's fine-grained frequency;
    ``key`` names each in :func:`~experiments.analysis.granularity_probe.
    random_reference` (None: the formula as printed)."""

    PROBE_FREQUENCY = ("probe frequency", "frequency")
    PAIRWISE_ORIGINAL = ("pairwise share on original gradients", "pairwise_original")
    ALL_SIGNS_AGREE = ("share with all N signs agreeing", "all_agree")
    AS_PRINTED = ("1/(2N-1)", None)

    def __init__(self, label: str, key: str | None) -> None:
        self.label = label
        self.key = key

    def trace_values(self, trace: GranularityTrace) -> np.ndarray:
        """Its per-step values in ``trace``."""
        return _pick(self, trace.frequency["element"], trace.pairwise_original,
                     trace.all_signs_agree)

    def binned_values(self, binned: BinnedTrace) -> np.ndarray:
        """Its per-bin values in ``binned``."""
        return _pick(self, binned.frequency["element"], binned.pairwise_original,
                     binned.all_signs_agree)


MEASURED = (ElementQuantity.PROBE_FREQUENCY, ElementQuantity.PAIRWISE_ORIGINAL,
            ElementQuantity.ALL_SIGNS_AGREE)
"""The element quantities a run measures (the three readings of element's frequency)."""


def _pick(quantity: ElementQuantity, *values: np.ndarray) -> np.ndarray:
    if quantity not in MEASURED:
        raise ValueError(f"{quantity} is not measured")
    return values[MEASURED.index(quantity)]


def verdict(holds_overall: bool, bins_holding: int, bins: int) -> Verdict:
    """The overall comparison and the majority of bins must agree for a clear verdict."""
    majority = bins > 0 and 2 * bins_holding >= bins
    if holds_overall and majority:
        return Verdict.HOLDS
    if not holds_overall and not majority:
        return Verdict.DOES_NOT_HOLD
    return Verdict.MIXED


def bins_greater(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(bins where a > b, bins where both are defined)."""
    both = np.isfinite(a) & np.isfinite(b)
    return int(np.sum(a[both] > b[both])), int(both.sum())


def compare_with_random(share: float, random_share: float, size: int) -> RandomComparison:
    """Whether a share of ``size`` components differs from its random-gradient value by
    more than 5 binomial standard errors."""
    error = math.sqrt(max(random_share * (1 - random_share), 1e-12) / size)
    if share > random_share + 5 * error:
        return RandomComparison.MORE
    if share < random_share - 5 * error:
        return RandomComparison.LESS
    return RandomComparison.AS_OFTEN


def paper_plotted(
    reference: Mapping[int, Mapping[str, float]],
) -> tuple[ElementQuantity, dict[ElementQuantity, float]]:
    """The element quantity whose random-gradient values (``reference``, by N) are
    nearest the paper's quotes, and every candidate's largest deviation from them."""
    quotes = paper.QUOTED_ELEMENT_START
    deviations = {
        quantity: max(abs(reference[n][quantity.key] - quote) for n, quote in quotes.items())
        for quantity in MEASURED
    }
    deviations[ElementQuantity.AS_PRINTED] = max(
        abs(1 / (2 * n - 1) - quote) for n, quote in quotes.items()
    )
    best = min(deviations, key=deviations.__getitem__)
    return best, deviations


# ----------------------------------------------------------------------------------------
# Figure 3.


@dataclasses.dataclass(frozen=True)
class AngleFindings:
    """Figure 3 in numbers.

    Attributes:
      worst_mass_error: the largest ``|∫p_n - 1|`` over the dimensions.
      shrinking: whether eq. (10) shrinks strictly as n grows.
      worst_variance_z: the largest distance of a Monte Carlo variance from eq. (10),
        in standard errors.
      min_ks_pvalue: the smallest Kolmogorov-Smirnov p-value.
    """

    worst_mass_error: float
    shrinking: bool
    worst_variance_z: float
    min_ks_pvalue: float


def angle_findings(results: Sequence[AngleResult]) -> AngleFindings:
    """Figure 3's checks of eq. (9) and (10) against Monte Carlo."""
    variances = [r.variance for r in results]
    return AngleFindings(
        worst_mass_error=max(abs(r.mass - 1) for r in results),
        shrinking=all(b < a for a, b in zip(variances, variances[1:], strict=False)),
        worst_variance_z=max(abs(r.mc_variance - r.variance) / r.mc_variance_se
                             for r in results),
        min_ks_pvalue=min(r.ks_pvalue for r in results),
    )


# ----------------------------------------------------------------------------------------
# Figures 6 and 7.


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A claim "a > b" over training.

    Attributes:
      verdict: see :func:`verdict`.
      a, b: the whole run's values.
      bins_holding: bins where a > b.
      bins: bins where both are defined.
    """

    verdict: Verdict
    a: float
    b: float
    bins_holding: int
    bins: int


def compare(a_bins: np.ndarray, b_bins: np.ndarray, a: float, b: float) -> Comparison:
    """The claim ``a > b`` from the whole run's values and the per-bin values."""
    held, bins = bins_greater(a_bins, b_bins)
    return Comparison(verdict(a > b, held, bins), a, b, held, bins)


@dataclasses.dataclass(frozen=True)
class GranularityFindings:
    """Figures 6 and 7 in numbers.

    Attributes:
      whole_ratio: granularity -> the ratio over every modified test of the run.
      mean_frequency: granularity -> the frequency averaged over the steps.
      slice_ratio: Fig. 6's claim, slice's ratio > model's (untestable when the model
        granularity modified nothing).
      slice_frequency: Fig. 7's claim, slice's frequency > element's, for each reading
        of element's frequency.
      paper_plotted: the element quantity the paper plotted (:func:`paper_plotted`).
      deviations: every candidate's largest deviation from the paper's quotes.
      start_vs_random: the all-signs-agree share at step 0 against random gradients.
    """

    whole_ratio: dict[str, float]
    mean_frequency: dict[str, float]
    slice_ratio: Comparison
    slice_frequency: dict[ElementQuantity, Comparison]
    paper_plotted: ElementQuantity
    deviations: dict[ElementQuantity, float]
    start_vs_random: RandomComparison


def granularity_findings(
    trace: GranularityTrace,
    binned: BinnedTrace,
    reference: Mapping[int, Mapping[str, float]],
) -> GranularityFindings:
    """The verdicts of Figures 6 and 7 and of the element granularity's start."""
    whole = {g: overall_ratio(trace, g) for g in GRANULARITIES}
    mean_frequency = {g: float(trace.frequency[g].mean()) for g in GRANULARITIES}
    slice_ratio = compare(binned.ratio["slice"], binned.ratio["model"],
                          whole["slice"], whole["model"])
    if not math.isfinite(whole["model"]):
        slice_ratio = dataclasses.replace(slice_ratio, verdict=Verdict.UNTESTABLE)
    slice_frequency = {
        quantity: compare(binned.frequency["slice"], quantity.binned_values(binned),
                          mean_frequency["slice"], float(quantity.trace_values(trace).mean()))
        for quantity in MEASURED
    }
    best, deviations = paper_plotted(reference)
    start = compare_with_random(float(trace.all_signs_agree[0]),
                                reference[trace.num_domains]["all_agree"],
                                trace.num_parameters)
    return GranularityFindings(whole, mean_frequency, slice_ratio, slice_frequency, best,
                               deviations, start)


# ----------------------------------------------------------------------------------------
# Table 2.


@dataclasses.dataclass(frozen=True)
class AblationFindings:
    """Table 2 in numbers.

    Attributes:
      steps: the consecutive steps of the ablation, then ERM -> L+S+D
        (:func:`~experiments.analysis.ablation.ablation_steps`).
      agree: consecutive steps in the paper's direction.
      resolved_agree: of those, resolved beyond two standard errors.
      resolved_against: consecutive steps against the paper's direction, resolved.
      order: the algorithms by ascending average accuracy in this run.
      paper_order: whether that is the paper's order.
    """

    steps: list[Step]
    agree: int
    resolved_agree: int
    resolved_against: int
    order: list[str]
    paper_order: bool

    @property
    def total(self) -> Step:
        """ERM -> L+S+D."""
        return self.steps[-1]


def ablation_findings(result: AblationResult) -> AblationFindings:
    """Table 2's steps against the paper's, and the order of the rows."""
    steps = ablation_steps(result)
    consecutive = steps[:-1]
    averages = {a: result.trial_averages(a) for a in ABLATION}
    order = sorted(
        ABLATION,
        key=lambda a: float(np.mean(averages[a])) if len(averages[a]) else -math.inf,
    )
    return AblationFindings(
        steps=steps,
        agree=sum(s.same_direction for s in consecutive),
        resolved_agree=sum(s.same_direction and s.resolved for s in consecutive),
        resolved_against=sum((not s.same_direction) and s.resolved for s in consecutive),
        order=order,
        paper_order=order == list(ABLATION),
    )
