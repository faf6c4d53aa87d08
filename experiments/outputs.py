"""What a run writes, and how it survives being killed at any moment.

A run directory holds (DomainBed's layout, plus the checkpoints)::

    args.json        the arguments that define the run (a resumed run must match them)
    results.jsonl    one JSON record per checkpoint: step, loss, env{i}_in_acc,
                     env{i}_out_acc, the diagnostics, hparams, args
    checkpoints/     orbax checkpoints of the train state, at every record's step
    done             written last: the run is finished

Crash safety: a record is appended (one ``write`` call, then ``fsync``) *before* the
checkpoint of its step is saved, and orbax finalizes a checkpoint by an atomic rename.
So after a kill, every checkpoint has its record; a resumed run truncates
``results.jsonl`` to the last checkpoint's step (dropping records of steps it will
redo, and any torn last line) and continues from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

RESULTS = "results.jsonl"
ARGS = "args.json"
DONE = "done"
CHECKPOINTS = "checkpoints"

Record = dict[str, Any]

logging.getLogger("absl").setLevel(logging.WARNING)


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
        self._manager = ocp.CheckpointManager(directory.absolute(), options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

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
