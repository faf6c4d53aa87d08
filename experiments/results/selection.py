"""Model selection: DomainBed's three methods (``domainbed/model_selection.py``).

A *group* is every record of one (trial seed, dataset, algorithm, test environment);
a record with two test environments belongs to the groups of both. Within a group, the
records of one ``hparams_seed`` make one *run* (for leave-one-out, the run with one test
environment together with those that also hold out a second one). A method gives each
run a validation and a test accuracy (:meth:`SelectionMethod.run_accuracy`); the run of
the best validation accuracy is the group's result (:func:`best_run`), and a table cell
averages the results over trial seeds.

=============================  =========================================================
method                         per run: validation accuracy -> test accuracy
=============================  =========================================================
training-domain validation     the checkpoint of the run with one test env that maximizes
(``training_domain``)          the mean ``out`` accuracy of the training envs,
                               mean_{e != test} acc_out(e); its test env's ``in``
                               accuracy
leave-one-domain-out           per step, the mean over training envs ``v`` of the ``in``
(``leave_one_out``)            accuracy of ``v`` in the run that held out the test env
                               and ``v``; a step counts only when every such run has a
                               record at that step; the best step's test ``in`` accuracy
test-domain validation         the last checkpoint of the run with one test env (no early
(oracle, ``oracle``)           stopping); validation: its test env's ``out`` accuracy
=============================  =========================================================

Ties are broken as DomainBed breaks them: among checkpoints (or steps) of equal
validation accuracy the first one (file order; for leave-one-out the earliest step)
wins; among runs of equal validation accuracy the one of the *highest* ``hparams_seed``
wins (DomainBed sorts the runs by ``hparams_seed``, then stably by validation accuracy,
and takes the last). The same numpy calls are made in the same order as DomainBed's, so
results agree to the last bit.

Example:
    >>> from experiments.results.records import Record
    >>> def record(step, out_acc, in_acc, hparams_seed=0):
    ...     return Record("Toy", "ERM", (0,), hparams_seed, 0, step, in_acc, out_acc)
    >>> run = [record(0, out_acc=(0.1, 0.9, 0.7), in_acc=(0.3, 1.0, 1.0)),
    ...        record(1, out_acc=(0.4, 0.6, 0.8), in_acc=(0.6, 1.0, 1.0))]
    >>> TRAINING_DOMAIN.run_accuracy(run)  # the training envs' out: 0.8 at step 0
    Accuracy(validation=0.8, test=0.3)
    >>> ORACLE.run_accuracy(run)  # the last step
    Accuracy(validation=0.4, test=0.6)
    >>> [s.test_accuracy for s in select(run, TRAINING_DOMAIN)]
    [0.3]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from experiments.results.records import Record


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """A run's (or a checkpoint's) validation accuracy and test accuracy, as fractions."""

    validation: float
    test: float


class SelectionMethod(Protocol):
    """A model-selection method: ``key`` names it on the command line, ``name`` in tables."""

    key: str
    name: str

    def run_accuracy(self, records: Sequence[Record]) -> Accuracy | None:
        """The run's selected validation and test accuracy, or None if it has none."""
        ...


def _single_test_env(records: Iterable[Record]) -> list[Record]:
    """The records of runs with exactly one test environment (DomainBed's test records)."""
    return [record for record in records if len(record.test_envs) == 1]


def checkpoint_accuracy(record: Record) -> Accuracy:
    """Training-domain validation of one checkpoint (DomainBed's ``_step_acc``).

    Returns:
      The mean ``out`` accuracy of the training environments, and the test environment's
      ``in`` accuracy.
    """
    test_env = record.test_envs[0]
    validation = np.mean([acc for env, acc in enumerate(record.out_accuracy) if env != test_env])
    return Accuracy(validation=float(validation), test=record.in_accuracy[test_env])


class TrainingDomainValidation:
    """Training-domain validation set (DomainBed's ``IIDAccuracySelectionMethod``)."""

    key = "training_domain"
    name = "training-domain validation set"

    def run_accuracy(self, records: Sequence[Record]) -> Accuracy | None:
        """The checkpoint of best training-domain validation accuracy (first on ties)."""
        test_records = _single_test_env(records)
        if not test_records:
            return None
        return max(map(checkpoint_accuracy, test_records), key=lambda acc: acc.validation)


class LeaveOneDomainOut:
    """Leave-one-domain-out cross-validation (``LeaveOneOutSelectionMethod``)."""

    key = "leave_one_out"
    name = "leave-one-domain-out cross-validation"

    @staticmethod
    def step_accuracy(records: Sequence[Record]) -> Accuracy | None:
        """The records of one step: the held-out training envs' mean ``in`` accuracy.

        Returns None unless the step has exactly one record with one test env and, for
        every training env ``v``, a record of the run that held out ``v`` as well.
        """
        test_records = _single_test_env(records)
        if len(test_records) != 1:
            return None
        test_env = test_records[0].test_envs[0]
        num_environments = records[0].num_environments
        held_out = np.zeros(num_environments) - 1
        for record in records:
            if len(record.test_envs) == 2:
                (validation_env,) = set(record.test_envs) - {test_env}
                held_out[validation_env] = record.in_accuracy[validation_env]
        validation_accs = list(held_out[:test_env]) + list(held_out[test_env + 1 :])
        if any(acc == -1 for acc in validation_accs):
            return None
        return Accuracy(
            validation=float(np.sum(validation_accs) / (num_environments - 1)),
            test=test_records[0].in_accuracy[test_env],
        )

    def run_accuracy(self, records: Sequence[Record]) -> Accuracy | None:
        """The step of best leave-one-out accuracy (the earliest on ties)."""
        by_step: dict[int, list[Record]] = {}
        for record in records:
            by_step.setdefault(record.step, []).append(record)
        accuracies = [self.step_accuracy(by_step[step]) for step in sorted(by_step)]
        complete = [acc for acc in accuracies if acc is not None]
        if not complete:
            return None
        return max(complete, key=lambda acc: acc.validation)


class TestDomainValidation:
    """Test-domain validation set, the oracle (``OracleSelectionMethod``)."""

    key = "oracle"
    name = "test-domain validation set (oracle)"

    def run_accuracy(self, records: Sequence[Record]) -> Accuracy | None:
        """The last checkpoint (the last record of the highest step)."""
        test_records = _single_test_env(records)
        if not test_records:
            return None
        test_env = test_records[0].test_envs[0]
        last = sorted(test_records, key=lambda record: record.step)[-1]
        return Accuracy(validation=last.out_accuracy[test_env], test=last.in_accuracy[test_env])


TRAINING_DOMAIN = TrainingDomainValidation()
LEAVE_ONE_OUT = LeaveOneDomainOut()
ORACLE = TestDomainValidation()

SELECTION_METHODS: dict[str, SelectionMethod] = {
    method.key: method for method in (TRAINING_DOMAIN, LEAVE_ONE_OUT, ORACLE)
}
"""The methods by key, in DomainBed's order of tables."""


def _ascending(value: float) -> float:
    """DomainBed's sort key: NaN sorts first."""
    return -math.inf if math.isnan(value) else value


def best_run(method: SelectionMethod, records: Sequence[Record]) -> tuple[int, Accuracy] | None:
    """The hparams draw of best validation accuracy in one group (``sweep_acc``).

    Args:
      method: the selection method.
      records: every record of one (trial seed, dataset, algorithm, test env).

    Returns:
      ``(hparams_seed, accuracy)`` of the winner (the highest ``hparams_seed`` among
      equal validation accuracies), or None if no run has an accuracy.
    """
    by_seed: dict[int, list[Record]] = {}
    for record in records:
        by_seed.setdefault(record.hparams_seed, []).append(record)
    runs = [(seed, method.run_accuracy(by_seed[seed])) for seed in sorted(by_seed)]
    scored = [(seed, acc) for seed, acc in runs if acc is not None]
    if not scored:
        return None
    return sorted(scored, key=lambda run: _ascending(run[1].validation))[-1]


@dataclasses.dataclass(frozen=True)
class Selection:
    """A group's selected model.

    Attributes:
      dataset, algorithm, test_env, trial_seed: the group.
      hparams_seed: the winning hparams draw.
      validation_accuracy, test_accuracy: its accuracies, as fractions.
    """

    dataset: str
    algorithm: str
    test_env: int
    trial_seed: int
    hparams_seed: int
    validation_accuracy: float
    test_accuracy: float


def group_records(
    records: Iterable[Record],
) -> dict[tuple[int, str, str, int], list[Record]]:
    """``{(trial_seed, dataset, algorithm, test_env): records}`` (``get_grouped_records``).

    A record enters the group of each of its test environments; groups come in the order
    of their first record.
    """
    groups: dict[tuple[int, str, str, int], list[Record]] = {}
    for record in records:
        for test_env in record.test_envs:
            key = (record.trial_seed, record.dataset, record.algorithm, test_env)
            groups.setdefault(key, []).append(record)
    return groups


def select(records: Iterable[Record], method: SelectionMethod) -> list[Selection]:
    """Every group's selected model (groups without one are left out).

    Args:
      records: a sweep's records, in reading order.
      method: the selection method.

    Returns:
      One :class:`Selection` per group that has a result, in group order.
    """
    selections = []
    for (trial_seed, dataset, algorithm, test_env), group in group_records(records).items():
        best = best_run(method, group)
        if best is not None:
            hparams_seed, accuracy = best
            selections.append(
                Selection(
                    dataset=dataset,
                    algorithm=algorithm,
                    test_env=test_env,
                    trial_seed=trial_seed,
                    hparams_seed=hparams_seed,
                    validation_accuracy=accuracy.validation,
                    test_accuracy=accuracy.test,
                )
            )
    return selections
