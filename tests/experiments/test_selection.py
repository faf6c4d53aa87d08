"""DomainBed's three model-selection methods on hand-made records with known answers."""

from __future__ import annotations

import doctest

import pytest

from experiments.results import selection
from experiments.results.records import Record
from experiments.results.selection import (
    LEAVE_ONE_OUT,
    ORACLE,
    TRAINING_DOMAIN,
    best_run,
    group_records,
    select,
)


def record(
    test_envs: tuple[int, ...],
    step: int,
    in_acc: tuple[float, ...],
    out_acc: tuple[float, ...],
    *,
    hparams_seed: int = 0,
    trial_seed: int = 0,
    algorithm: str = "ERM",
) -> Record:
    return Record("Toy", algorithm, test_envs, hparams_seed, trial_seed, step, in_acc, out_acc)


# Three environments, test env 0; training envs 1 and 2. Validation (training-domain):
# step 0: (0.5 + 0.75) / 2 = 0.625; step 1: (0.75 + 1) / 2 = 0.875; step 2: (1 + 0.75) / 2
# = 0.875, a tie with step 1, which comes first. Test (env 0's in split): 0.30, 0.55, 0.99.
RUN = [
    record((0,), 0, (0.30, 0.9, 0.9), (0.25, 0.5, 0.75)),
    record((0,), 1, (0.55, 0.9, 0.9), (0.50, 0.75, 1.0)),
    record((0,), 2, (0.99, 0.9, 0.9), (0.60, 1.0, 0.75)),
]


def test_training_domain_validation_takes_the_first_of_the_best_checkpoints() -> None:
    accuracy = TRAINING_DOMAIN.run_accuracy(RUN)
    assert accuracy == selection.Accuracy(validation=0.875, test=0.55)
    # A record of a run with two test envs is no checkpoint of this method, however good.
    assert TRAINING_DOMAIN.run_accuracy([*RUN, record((0, 1), 3, (1.0,) * 3, (1.0,) * 3)]) == (
        accuracy
    )
    assert TRAINING_DOMAIN.run_accuracy([record((0, 1), 3, (1.0,) * 3, (1.0,) * 3)]) is None


def test_the_oracle_takes_the_last_checkpoint_and_validates_on_the_test_env() -> None:
    shuffled = [RUN[2], RUN[0], RUN[1]]  # the highest step, not the last line
    assert ORACLE.run_accuracy(shuffled) == selection.Accuracy(validation=0.60, test=0.99)
    assert ORACLE.run_accuracy(RUN[:2]) == selection.Accuracy(validation=0.50, test=0.55)
    assert ORACLE.run_accuracy([]) is None


def _leave_one_out_group(*, drop: tuple[tuple[int, ...], int] | None = None) -> list[Record]:
    """Test env 0: the run [0] and the runs [0, 1], [0, 2] at steps 0, 1, 2.

    Leave-one-out validation at a step: the mean of env 1's in accuracy in run [0, 1]
    and env 2's in accuracy in run [0, 2]: step 0: (0.2 + 0.4) / 2 = 0.3; step 1:
    (0.6 + 0.8) / 2 = 0.7; step 2: (0.8 + 0.6) / 2 = 0.7 (a tie: the earlier step wins).
    The run [0]'s own accuracies play no part but its test accuracy: 0.3, 0.5, 0.7.
    """
    held_out = {(0, 1): (0.2, 0.6, 0.8), (0, 2): (0.4, 0.8, 0.6)}
    records = [
        record((0,), s, (t, 0.1, 0.1), (0.9, 0.9, 0.9)) for s, t in enumerate((0.3, 0.5, 0.7))
    ]
    for test_envs, accs in held_out.items():
        for step, acc in enumerate(accs):
            if drop == (test_envs, step):
                continue
            in_acc = [0.0, 0.0, 0.0]
            in_acc[test_envs[1]] = acc
            records.append(record(test_envs, step, tuple(in_acc), (0.5, 0.5, 0.5)))
    return records


def test_leave_one_out_averages_the_held_out_training_envs_and_takes_the_earliest_best_step():
    assert LEAVE_ONE_OUT.run_accuracy(_leave_one_out_group()) == selection.Accuracy(0.7, 0.5)


def test_a_leave_one_out_step_with_a_missing_run_does_not_count() -> None:
    # Without run [0, 2] at step 1, step 1 has no validation accuracy: step 2 wins.
    group = _leave_one_out_group(drop=((0, 2), 1))
    assert LEAVE_ONE_OUT.step_accuracy([r for r in group if r.step == 1]) is None
    assert LEAVE_ONE_OUT.run_accuracy(group) == selection.Accuracy(0.7, 0.7)
    # Without the run [0] at a step, or with it twice, that step does not count either.
    group = [r for r in _leave_one_out_group() if (r.test_envs, r.step) != ((0,), 1)]
    assert LEAVE_ONE_OUT.run_accuracy(group) == selection.Accuracy(0.7, 0.7)
    doubled = [*_leave_one_out_group(), record((0,), 1, (0.1, 0, 0), (0, 0, 0))]
    assert LEAVE_ONE_OUT.run_accuracy(doubled) == selection.Accuracy(0.7, 0.7)
    # Without any run [0, 1], no step counts.
    assert LEAVE_ONE_OUT.run_accuracy([r for r in group if r.test_envs != (0, 1)]) is None


def test_hparams_ties_go_to_the_highest_hparams_seed() -> None:
    # Draws 0, 1, 2 with validation 0.85, 0.85, 0.60 and test 0.55, 0.40, 0.99.
    draws = [
        [record((0,), 0, (0.55, 1, 1), (0, 0.85, 0.85), hparams_seed=0)],
        [record((0,), 0, (0.40, 1, 1), (0, 0.85, 0.85), hparams_seed=1)],
        [record((0,), 0, (0.99, 1, 1), (0, 0.60, 0.60), hparams_seed=2)],
    ]
    group = [r for draw in (draws[1], draws[0], draws[2]) for r in draw]
    assert best_run(TRAINING_DOMAIN, group) == (1, selection.Accuracy(0.85, 0.40))
    # The oracle ties too (the same out accuracy of the test env at the last step).
    oracle_group = [record((0,), 5, (t, 0, 0), (0.7, 0, 0), hparams_seed=s) for s, t in
                    [(2, 0.1), (0, 0.2), (1, 0.3)]]  # fmt: skip
    assert best_run(ORACLE, oracle_group) == (2, selection.Accuracy(0.7, 0.1))
    # A draw without a result of the method takes no part.
    assert best_run(TRAINING_DOMAIN, [record((0, 1), 0, (1, 1, 1), (1, 1, 1))]) is None


def test_a_killed_run_counts_with_the_checkpoints_it_has() -> None:
    # Draw 1 was killed after step 0; its best (only) checkpoint is still compared.
    group = [*RUN, record((0,), 0, (0.42, 1, 1), (0, 0.9, 0.9), hparams_seed=1)]
    assert best_run(TRAINING_DOMAIN, group) == (1, selection.Accuracy(0.9, 0.42))
    assert best_run(ORACLE, group) == (0, selection.Accuracy(0.60, 0.99))


def test_a_record_with_two_test_envs_joins_both_groups() -> None:
    records = [*RUN, record((0, 2), 0, (0, 0, 0), (0, 0, 0)), record((1,), 0, (0,) * 3, (0,) * 3)]
    groups = group_records(records)
    assert list(groups) == [(0, "Toy", "ERM", 0), (0, "Toy", "ERM", 2), (0, "Toy", "ERM", 1)]
    assert [len(g) for g in groups.values()] == [4, 1, 1]
    # Env 2 has only the two-test-env run: no result there.
    assert [(s.test_env, s.test_accuracy) for s in select(records, TRAINING_DOMAIN)] == [
        (0, 0.55),
        (1, 0.0),
    ]


def test_select_keeps_groups_apart_by_trial_and_algorithm() -> None:
    records = [
        *RUN,
        record((0,), 0, (0.11, 1, 1), (0, 1, 1), trial_seed=1),
        record((0,), 0, (0.22, 1, 1), (0, 1, 1), algorithm="IRM"),
    ]
    assert {(s.algorithm, s.trial_seed): s.test_accuracy for s in select(records, ORACLE)} == {
        ("ERM", 0): 0.99,
        ("ERM", 1): 0.11,
        ("IRM", 0): 0.22,
    }


@pytest.mark.parametrize("method", ["training_domain", "leave_one_out", "oracle"])
def test_the_methods_are_registered_by_key_with_domainbeds_names(method: str) -> None:
    assert selection.SELECTION_METHODS[method].key == method
    assert list(selection.SELECTION_METHODS) == ["training_domain", "leave_one_out", "oracle"]
    assert selection.SELECTION_METHODS["oracle"].name == "test-domain validation set (oracle)"


def test_docstring_examples() -> None:
    result = doctest.testmod(selection)
    assert result.attempted > 0 and result.failed == 0
