"""What a run writes, and how it survives being killed at any moment.

A run directory holds (DomainBed's layout, plus the checkpoints)::

    args.json        the arguments that define the run (a resumed run must match them)
    results.jsonl    one JSON record per checkpoint: step, loss, env{i}_in_acc,
                     env{i}_out_acc, the diagnostics, hparams, args
    checkpoints/     orbax checkpoints of the train state, at every record's step
    damaged_checkpoints/
                     checkpoints that did not restore, moved aside (kept, not deleted)
    done             written last: the run is finished

Crash safety: a record is appended (one ``write`` call, then ``fsync``) *before* the
checkpoint of its step is saved, and orbax finalizes a checkpoint by an atomic rename.
So after a kill, every checkpoint has its record; a resumed run truncates
``results.jsonl`` to the last checkpoint's step (dropping records of steps it will
redo, and any torn last line) and continues from that checkpoint.

A checkpoint whose files were damaged afterwards (a full disk, a copy cut short) does
not restore: the run says so in one line, resumes from the newest one that does (orbax
keeps two), and moves the newer, damaged ones to ``damaged_checkpoints/`` so that their
steps can be saved again. When none restores, it stops with :class:`CheckpointError`
and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

RESULTS = "results.jsonl"
ARGS = "args.json"
DONE = "done"
CHECKPOINTS = "checkpoints"
DAMAGED_CHECKPOINTS = "damaged_checkpoints"

Record = dict[str, Any]

logging.getLogger("absl").setLevel(logging.WARNING)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silences ``logger`` below CRITICAL for the duration."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    """Replaces ``path``'s content by ``text``: readers see the old or the new file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def append_record(path: Path, record: Record) -> None:
    """Appends ``record`` as one JSON line, in a single ``write`` call, then fsyncs."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # a regular file takes it all, unless the disk is full
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[Record]:
    """The records of a ``results.jsonl``; a torn last line (a crash) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def truncate_records(path: Path, last_step: int | None, *, write: bool = True) -> list[Record]:
    """Keeps the records up to step ``last_step`` (none if None); returns them.

    With ``write=False`` (every process but the writer) the file is only read.
    """
    kept = [r for r in read_records(path) if last_step is not None and r["step"] <= last_step]
    if write and path.exists():
        write_atomically(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return kept


class CheckpointError(ValueError):
    """No checkpoint of a run restores (the message names them and why)."""


class Checkpoints:
    """Orbax checkpoints of a pytree (the train state), one per record's step.

    Saving is synchronous, so a record's checkpoint is complete when :meth:`save`
    returns; the last ``max_to_keep`` are kept; half-written ones are cleaned up.
    """

    def __init__(self, directory: Path, *, max_to_keep: int = 2) -> None:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._directory = directory.absolute()
        with _quiet("absl"):  # a damaged checkpoint is reported by restore_newest
            self._manager = ocp.CheckpointManager(self._directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def restore_newest(
        self, like: Any, *, log: Callable[[str], None] = print, move_damaged: bool = True
    ) -> tuple[int | None, Any]:
        """The newest checkpoint that restores, as ``(step, state)``; ``(None, like)`` if
        there is none.

        A checkpoint that does not restore is reported in one line and the previous one
        is tried. The newer, damaged ones are then moved to ``damaged_checkpoints/``
        (``move_damaged``: the writing process), so that their steps can be saved again.

        Raises:
            CheckpointError: there are checkpoints and none restores; nothing is moved.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                with _quiet("absl"):  # orbax logs its own error lines first
                    state = self.restore(step, like)
            except Exception as error:  # any damage: bad JSON, short files, tensorstore
                reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                log(f"checkpoint {self._directory / str(step)} does not restore ({reason})")
                failures.append(step)
                continue
            if move_damaged:
                for damaged in failures:
                    self._move_aside(damaged)
            with _quiet("absl"):
                self._manager.reload()
            return step, state
        if failures:
            raise CheckpointError(
                f"no checkpoint in {self._directory} restores (steps "
                f"{', '.join(map(str, failures))}); move them away to start the run anew"
            )
        return None, like

    def _move_aside(self, step: int) -> None:
        damaged = self._directory.parent / DAMAGED_CHECKPOINTS
        damaged.mkdir(exist_ok=True)
        target, copy = damaged / str(step), 1
        while target.exists():
            target, copy = damaged / f"{step}.{copy}", copy + 1
        os.replace(self._directory / str(step), target)
        _fsync_directory(self._directory)

    def save(self, step: int, state: Any) -> None:
        """Saves ``state`` as the checkpoint of ``step`` (blocking)."""
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def restore(self, step: int, like: Any) -> Any:
        """The checkpoint of ``step``, with the structure and shardings of ``like``.

        The arrays come back placed as ``like``'s (a train state on the run's mesh),
        whatever the device count of the run that saved them: orbax reads each device's
        shard from the saved global arrays. So a resumed run also hits the same
        compilation as a fresh one.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        """Releases the manager's resources."""
        self._manager.close()
