"""The files of a run directory, and how they survive the run being killed at any moment.

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

import json
import os
from pathlib import Path
from typing import Any

from experiments.cli import ConfigError

RESULTS = "results.jsonl"
ARGS = "args.json"
DONE = "done"
CHECKPOINTS = "checkpoints"
DAMAGED_CHECKPOINTS = "damaged_checkpoints"

Record = dict[str, Any]


def fsync_directory(path: Path) -> None:
    """Makes the entries of directory ``path`` durable (after a rename or a new file)."""
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
    fsync_directory(path.parent)


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


def check_output_dir(run_dir: Path, expected: Record) -> bool:
    """Whether ``run_dir`` holds the run of arguments ``expected`` already (False: it is
    new or empty).

    Raises:
        ConfigError: it holds a run with other arguments, or something else.
    """
    args_path = run_dir / ARGS
    if args_path.exists():
        try:
            stored = json.loads(args_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise ConfigError(f"output_dir {run_dir} has an unreadable {ARGS}") from None
        if stored != expected:
            differences = ", ".join(
                f"{key} {expected.get(key)!r} here, {stored.get(key)!r} there"
                for key in sorted(set(stored) | set(expected))
                if stored.get(key) != expected.get(key)
            )
            raise ConfigError(
                f"output_dir {run_dir} holds a run with different arguments ({differences}); "
                "refusing to resume it: choose another --output_dir"
            )
        return True
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(
            f"output_dir {run_dir} is not an empty directory and holds no run of this "
            "trainer; refusing to write into it"
        )
    return False


def create_output_dir(run_dir: Path, args: Record) -> None:
    """Makes ``run_dir`` and writes the run's ``args.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir / ARGS, json.dumps(args, indent=2, sort_keys=True) + "\n")
