"""Reading a sweep's records: this trainer's run directories and DomainBed's alike.

A run directory holds ``results.jsonl``, one JSON record per checkpoint, and ``done``
once the run finished (DomainBed's layout, kept by :mod:`experiments.run_dir`). A
record carries what model selection needs::

    {"step": 300, "env0_in_acc": 0.64, "env0_out_acc": 0.66, ...,   # every environment
     "args": {"dataset": "VLCS", "algorithm": "ERM", "test_envs": [1, 2],
              "hparams_seed": 1, "trial_seed": 0, ...},
     "environments": ["C", "L", "S", "V"]}        # this trainer's runs only

DomainBed's ``reporting.load_records`` reads ``DIR/*/results.jsonl`` and keeps every
record, finished run or not. This module reads every ``results.jsonl`` below each
directory (any depth, in sorted order; a DomainBed sweep is one level deep), keeps every
record too, and notes which runs lack ``done``. A torn last line (a run killed while
writing) is skipped; any other line that is not a record is an error.

Example:
    >>> import json, pathlib, tempfile
    >>> sweep_dir = pathlib.Path(tempfile.mkdtemp())
    >>> (sweep_dir / "run0").mkdir()
    >>> line = {"step": 0, "env0_in_acc": 0.5, "env0_out_acc": 0.4, "env1_in_acc": 0.9,
    ...         "env1_out_acc": 0.8, "args": {"dataset": "Toy", "algorithm": "ERM",
    ...         "test_envs": [0], "hparams_seed": 0, "trial_seed": 0}}
    >>> _ = (sweep_dir / "run0" / "results.jsonl").write_text(json.dumps(line) + "\\n")
    >>> sweep = load_sweep([sweep_dir])
    >>> len(sweep.records), sweep.runs[0].finished, sweep.records[0].out_accuracy
    (1, False, (0.4, 0.8))
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from etils import epath

from experiments import run_dir
from experiments.run_dir import DONE, RESULTS

RESULTS_FILE = RESULTS
"""A run's records."""

DONE_FILE = DONE
"""Written last by a finished run."""


class RecordError(ValueError):
    """Input that holds no usable records: a missing directory, a malformed line."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One checkpoint of one run: its arguments and its accuracies.

    Attributes:
      dataset, algorithm, test_envs, hparams_seed, trial_seed: the run's ``args``.
      step: the checkpoint's step.
      in_accuracy: ``env{i}_in_acc`` for every environment ``i``, as a fraction.
      out_accuracy: ``env{i}_out_acc`` (the held-out split) for every environment.
      environments: the environments' names when the record has them (this trainer's
        runs), else None (DomainBed's).
    """

    dataset: str
    algorithm: str
    test_envs: tuple[int, ...]
    hparams_seed: int
    trial_seed: int
    step: int
    in_accuracy: tuple[float, ...]
    out_accuracy: tuple[float, ...]
    environments: tuple[str, ...] | None = None

    @property
    def num_environments(self) -> int:
        """How many environments the record has accuracies for."""
        return len(self.out_accuracy)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory's records, in file order.

    Attributes:
      directory: the run directory.
      records: its records (at least one).
      finished: whether it holds ``done``.
    """

    directory: epath.Path
    records: tuple[Record, ...]
    finished: bool


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Every run found below some directories.

    Attributes:
      runs: the runs with at least one record, in reading order.
    """

    runs: tuple[Run, ...]

    @property
    def records(self) -> tuple[Record, ...]:
        """Every record of every run, in reading order (DomainBed's flat list)."""
        return tuple(record for run in self.runs for record in run.records)


def parse_record(raw: Mapping[str, Any]) -> Record:
    """A :class:`Record` from one decoded line of ``results.jsonl``.

    Environments are counted as DomainBed's selection methods count them: ``env0``,
    ``env1``, ... while ``env{i}_out_acc`` exists.

    Raises:
      RecordError: a field that model selection needs is missing or malformed.
    """
    try:
        args = raw["args"]
        num_environments = next(i for i in itertools.count() if f"env{i}_out_acc" not in raw)
        environments = raw.get("environments")
        record = Record(
            dataset=str(args["dataset"]),
            algorithm=str(args["algorithm"]),
            test_envs=tuple(int(env) for env in args["test_envs"]),
            hparams_seed=int(args["hparams_seed"]),
            trial_seed=int(args["trial_seed"]),
            step=int(raw["step"]),
            in_accuracy=tuple(float(raw[f"env{i}_in_acc"]) for i in range(num_environments)),
            out_accuracy=tuple(float(raw[f"env{i}_out_acc"]) for i in range(num_environments)),
            environments=None if environments is None else tuple(map(str, environments)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise RecordError(f"not a results record (missing or bad {error})") from None
    if any(not 0 <= env < num_environments for env in record.test_envs):
        raise RecordError(
            f"test_envs {list(record.test_envs)} do not fit the record's "
            f"{num_environments} environments"
        )
    return record


def read_records(path: epath.PathLike) -> list[Record]:
    """The records of one ``results.jsonl``; a torn last line is skipped.

    Raises:
      RecordError: a line other than the last is not a record (with file and line).
    """
    lines = run_dir.as_path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if last and not line.endswith("\n"):
            break  # killed in the middle of a write
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            if last:
                break
            raise RecordError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(raw, dict):
            raise RecordError(f"{path}:{number}: not a JSON object")
        try:
            records.append(parse_record(raw))
        except RecordError as error:
            raise RecordError(f"{path}:{number}: {error}") from None
    return records


def find_run_directories(directory: epath.PathLike) -> list[epath.Path]:
    """Every directory at or below ``directory`` (local or ``gs://...``) that holds
    ``results.jsonl``, sorted; a run directory is not searched further."""
    return run_dir.find_runs(directory)


def load_sweep(directories: Iterable[epath.PathLike]) -> Sweep:
    """Every run with records at or below each of ``directories``.

    Args:
      directories: sweep directories (or run directories), local or ``gs://...``; a
        run found twice is read once.

    Returns:
      The runs, directory by directory, each directory's runs in sorted path order.

    Raises:
      RecordError: a directory does not exist, or a line is not a record.
    """
    runs = []
    seen: set[str] = set()
    for directory in map(run_dir.as_path, directories):
        if not directory.is_dir():
            raise RecordError(f"{directory} is not a directory")
        for found in find_run_directories(directory):
            key = os.path.realpath(found) if run_dir.is_local(found) else os.fspath(found)
            if key in seen:
                continue
            seen.add(key)
            records = read_records(found / RESULTS_FILE)
            if records:
                finished = (found / DONE_FILE).exists()
                runs.append(Run(directory=found, records=tuple(records), finished=finished))
    return Sweep(runs=tuple(runs))
