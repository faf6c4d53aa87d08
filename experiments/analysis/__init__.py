"""The paper's analyses, reproduced: ``python -m experiments.analysis``.

- :mod:`~experiments.analysis.angles`: Figure 3, the angle between a fixed and a random
  vector in R^n (eq. 9 against Monte Carlo, eq. 10 shrinking with n);
- :mod:`~experiments.analysis.granularity`: Figures 6 and 7, the modification ratio and
  frequency of the model, layer, slice and element granularities over training;
- :mod:`~experiments.analysis.ablation`: Table 2, ERM / PCGrad / L / L+S / L+S+D;
- :mod:`~experiments.analysis.report`: runs all three and writes figures and REPORT.md.
"""

from experiments.analysis.report import DEFAULT as DEFAULT
from experiments.analysis.report import QUICK as QUICK
from experiments.analysis.report import AnalysisSettings as AnalysisSettings
from experiments.analysis.report import main as main
from experiments.analysis.report import run_analysis as run_analysis

__all__ = ["DEFAULT", "QUICK", "AnalysisSettings", "main", "run_analysis"]
