"""The paper's analyses, reproduced: ``python -m experiments.analysis``.

- :mod:`~experiments.analysis.angles`: Figure 3, the angle between a fixed and a random
  vector in R^n (eq. 9 against Monte Carlo, eq. 10 shrinking with n);
- :mod:`~experiments.analysis.granularity`: Figures 6 and 7, the modification ratio and
  frequency of the model, layer, slice and element granularities over one run of the
  training loop (:mod:`~experiments.analysis.granularity_probe`: the probe of every
  granularity; :mod:`~experiments.analysis.granularity_plot`: the figures);
- :mod:`~experiments.analysis.ablation`: Table 2, ERM / PCGrad / L / L+S / L+S+D, as
  sweeps of the trainer;
- :mod:`~experiments.analysis.paper`: the paper's numbers compared with;
- :mod:`~experiments.analysis.verdicts`: what this run's numbers say about the paper's
  claims (numbers and enums);
- :mod:`~experiments.analysis.report_figure3`, :mod:`~experiments.analysis.
  report_figures6_7`, :mod:`~experiments.analysis.report_table2`: the REPORT's sections;
- :mod:`~experiments.analysis.settings`: the settings, their presets and flags;
- :mod:`~experiments.analysis.report`: runs all three and writes figures and REPORT.md.
"""

from experiments.analysis.report import main as main
from experiments.analysis.report import run_analysis as run_analysis
from experiments.analysis.settings import DEFAULT as DEFAULT
from experiments.analysis.settings import QUICK as QUICK
from experiments.analysis.settings import AnalysisSettings as AnalysisSettings

__all__ = ["DEFAULT", "QUICK", "AnalysisSettings", "main", "run_analysis"]
