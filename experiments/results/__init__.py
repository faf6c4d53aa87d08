"""A sweep's results as DomainBed reports them; pure Python and NumPy (no JAX).

Three model-selection methods (DomainBed's ``model_selection.py``), its error bar, its
tables per dataset and its averages over datasets, in markdown, LaTeX or JSON:

* :mod:`~experiments.results.records`: reading run directories (this trainer's and
  DomainBed's);
* :mod:`~experiments.results.selection`: training-domain validation, leave-one-domain-out
  cross-validation, test-domain validation (oracle);
* :mod:`~experiments.results.summary`: the numbers of the tables and the error bars;
* :mod:`~experiments.results.tables`, :mod:`~experiments.results.export`: markdown,
  LaTeX, JSON;
* :mod:`~experiments.results.catalog`, :mod:`~experiments.results.names`: DomainBed's
  dataset/algorithm order and names, and this trainer's display names;
* :func:`report`: all of it for some directories (``python -m experiments.collect_results``).
"""

from experiments.results.catalog import DOMAINBED_ALGORITHMS as DOMAINBED_ALGORITHMS
from experiments.results.catalog import DOMAINBED_ENVIRONMENTS as DOMAINBED_ENVIRONMENTS
from experiments.results.names import default_display_names as default_display_names
from experiments.results.names import display_name as display_name
from experiments.results.records import DONE_FILE as DONE_FILE
from experiments.results.records import RESULTS_FILE as RESULTS_FILE
from experiments.results.records import Record as Record
from experiments.results.records import RecordError as RecordError
from experiments.results.records import Run as Run
from experiments.results.records import Sweep as Sweep
from experiments.results.records import load_sweep as load_sweep
from experiments.results.reporting import FORMATS as FORMATS
from experiments.results.reporting import render as render
from experiments.results.reporting import report as report
from experiments.results.reporting import summarize_sweep as summarize_sweep
from experiments.results.selection import LEAVE_ONE_OUT as LEAVE_ONE_OUT
from experiments.results.selection import ORACLE as ORACLE
from experiments.results.selection import SELECTION_METHODS as SELECTION_METHODS
from experiments.results.selection import TRAINING_DOMAIN as TRAINING_DOMAIN
from experiments.results.selection import Accuracy as Accuracy
from experiments.results.selection import Selection as Selection
from experiments.results.selection import SelectionMethod as SelectionMethod
from experiments.results.selection import select as select
from experiments.results.summary import ERROR_BARS as ERROR_BARS
from experiments.results.summary import Cell as Cell
from experiments.results.summary import ErrorBar as ErrorBar
from experiments.results.summary import MethodSummary as MethodSummary
from experiments.results.summary import Table as Table
from experiments.results.summary import summarize as summarize
