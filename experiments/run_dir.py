"""The files of a run directory, and how they survive the run being killed at any moment.

A run directory holds (DomainBed's layout, plus the checkpoints)::

    args.json        the arguments that define the run (a resumed run must match them)
    results.jsonl    one JSON record per checkpoint: step, loss, env{i}_in_acc,
                     env{i}_out_acc, the diagnostics, hparams, args
    checkpoints/     orbax checkpoints of the train state, at every record's step
    damaged_checkpoints/
                     checkpoints that did not restore, moved aside (kept, not deleted)
    done             written last: the run is finished

Paths: ``output_dir`` is anything :class:`etils.epath.Path` opens: a local directory, or
an object store such as ``gs://bucket/runs/x`` (Cloud Storage, through ``gcsfs``; what a
TPU pod writes to). Every file of the run goes through :func:`as_path`, and orbax takes
the same path for the checkpoints.

Crash safety on a local disk: a record is appended (one ``write`` call, then ``fsync``)
*before* the checkpoint of its step is saved; ``args.json``, ``done`` and a truncated
``results.jsonl`` are written to a temporary file, fsynced and renamed over the old one
(:func:`write_atomically`); orbax finalizes a checkpoint by an atomic rename. So after a
kill, every checkpoint has its record; a resumed run truncates ``results.jsonl`` to the
last checkpoint's step (dropping records of steps it will redo, and any torn last line)
and continues from that checkpoint.

On an object store there is no append, no rename and no fsync; an object is replaced
whole, atomically, when its upload completes. So :func:`write_atomically` uploads the
object directly, and :func:`append_record` is a read-modify-write of the small
``results.jsonl`` by the one writer process (process 0): readers see the old or the new
object, never a torn line. Orbax marks a finished checkpoint there with a
``commit_success.txt`` instead of a rename, and a damaged checkpoint is moved aside by
copying its objects and deleting the originals (:func:`move_tree`), which is not atomic:
a kill during the move can leave a partial copy and the original partly deleted.

A checkpoint whose files were damaged afterwards (a full disk, a copy cut short) does
not restore: the run says so in one line, resumes from the newest one that does (orbax
keeps two), and moves the newer, damaged ones to ``damaged_checkpoints/`` so that their
steps can be saved again. When none restores, it stops with :class:`CheckpointError`
and changes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from etils import epath

from experiments.cli import ConfigError

RESULTS = "results.jsonl"
ARGS = "args.json"
DONE = "done"
CHECKPOINTS = "checkpoints"
DAMAGED_CHECKPOINTS = "damaged_checkpoints"

Record = dict[str, Any]


def as_path(path: epath.PathLike, *, absolute: bool = False) -> epath.Path:
    """``path`` (a local path or a URI such as ``gs://bucket/dir``) as an
    :class:`etils.epath.Path`; with ``absolute``, a relative local path is made absolute
    (``epath.Path.absolute`` would mangle a URI)."""
    path = epath.Path(path)
    return epath.Path(os.path.abspath(path)) if absolute and is_local(path) else path


def is_local(path: epath.PathLike) -> bool:
    """Whether ``path`` is on a local file system (not ``scheme://...``)."""
    return "://" not in os.fspath(path)


def fsync_directory(path: epath.PathLike) -> None:
    """Makes the entries of local directory ``path`` durable (after a rename or a new
    file); nothing on an object store, whose writes are durable when they return."""
    if not is_local(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: epath.PathLike, text: str) -> None:
    """Replaces ``path``'s content by ``text``: readers see the old or the new file.

    Locally: a temporary file, fsynced, renamed over ``path``. On an object store: one
    upload, which replaces the object atomically when it completes.
    """
    path = as_path(path)
    if not is_local(path):
        path.write_text(text, encoding="utf-8")
        return
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def append_record(path: epath.PathLike, record: Record) -> None:
    """Appends ``record`` as one JSON line.

    Locally: in a single ``write`` call, then ``fsync``. On an object store (no append):
    the object is read and uploaded again with the line added, which is safe for one
    writer process (the trainer's process 0).
    """
    path = as_path(path)
    line = json.dumps(record, sort_keys=True) + "\n"
    if not is_local(path):
        before = path.read_text(encoding="utf-8") if path.exists() else ""
        path.write_text(before + line, encoding="utf-8")
        return
    data = line.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a regular file takes it all, unless the disk is full
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def move_tree(source: epath.PathLike, target: epath.PathLike) -> None:
    """Moves directory ``source`` to ``target`` (which must not exist).

    Locally: one atomic rename, made durable. On an object store (no rename): every
    object is copied, then the originals are deleted.
    """
    source, target = as_path(source), as_path(target)
    if is_local(source) and is_local(target):
        os.replace(source, target)
        fsync_directory(source.parent)
        fsync_directory(target.parent)
        return
    for file in files_under(source):
        copy = target / file.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        file.copy(copy)
    source.rmtree()


def files_under(folder: epath.Path) -> Iterator[epath.Path]:
    """Every file under ``folder``, at any depth, local or on an object store
    (``epath.Path.walk`` loses the ``gs://`` of the folders it yields; ``iterdir`` keeps
    it)."""
    for child in folder.iterdir():
        if child.is_dir():
            yield from files_under(child)
        else:
            yield child


def find_runs(root: epath.PathLike) -> list[epath.Path]:
    """The run directories under ``root`` (any depth): those holding a ``results.jsonl``,
    in sorted order; a run directory is not searched further."""
    root = as_path(root)
    if (root / RESULTS).exists():
        return [root]
    return [run for child in sorted(root.iterdir(), key=str) if child.is_dir()
            for run in find_runs(child)]


def read_records(path: epath.PathLike) -> list[Record]:
    """The records of a ``results.jsonl``; a torn last line (a crash) is ignored."""
    path = as_path(path)
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


def truncate_records(
    path: epath.PathLike, last_step: int | None, *, write: bool = True
) -> list[Record]:
    """Keeps the records up to step ``last_step`` (none if None); returns them.

    With ``write=False`` (every process but the writer) the file is only read.
    """
    path = as_path(path)
    kept = [r for r in read_records(path) if last_step is not None and r["step"] <= last_step]
    if write and path.exists():
        write_atomically(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return kept


def check_output_dir(run_dir: epath.PathLike, expected: Record) -> bool:
    """Whether ``run_dir`` holds the run of arguments ``expected`` already (False: it is
    new or empty).

    Raises:
        ConfigError: it holds a run with other arguments, or something else.
    """
    run_dir = as_path(run_dir)
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


def create_output_dir(run_dir: epath.PathLike, args: Record) -> None:
    """Makes ``run_dir`` and writes the run's ``args.json``."""
    run_dir = as_path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir / ARGS, json.dumps(args, indent=2, sort_keys=True) + "\n")
