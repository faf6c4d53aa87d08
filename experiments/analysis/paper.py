"""The paper's numbers that the analysis compares with, as ``docs/algorithm.md`` quotes
them (Sec. 10, "Other facts from the paper").

Nothing here is computed: these are the constants the REPORT sets this run's numbers
against.
"""

from __future__ import annotations

STEPS = 5000
"""DomainBed's ``N_STEPS``, used by the paper."""

BATCH_SIZE = 32
"""The paper's batch size per domain (DomainBed, ResNet-18)."""

QUOTED_ELEMENT_START = {3: 1 / 4, 5: 1 / 16}
"""The paper's starting modification frequency of the fine-grained (element) method,
by number of training domains N (Sec. 4): 1/4 at N = 3 and 1/16 at N = 5, i.e.
``1/2^(N-1)``, although the text writes ``1/(2N-1)``."""

TABLE2 = {
    "erm": 50.0,
    "pcgrad": 50.9,
    "corgrad_layer": 51.6,
    "corgrad_no_smoothing": 52.4,
    "corgrad": 53.0,
}
"""Table 2, by algorithm of :data:`experiments.algorithms.ALGORITHMS`: average accuracy
(%) over VLCS, TerraIncognita and DomainNet (ResNet-18, training-domain validation)."""

TABLE2_DATA = "VLCS/TerraInc/DomainNet"
"""The datasets Table 2 averages over, as the REPORT's columns name them."""
