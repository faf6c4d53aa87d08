"""The orbax checkpoints of a run, and how a damaged one is passed over.

Saving is synchronous, so a record's checkpoint is complete when it returns; the last
two are kept. A checkpoint whose files were damaged afterwards (a full disk, a copy cut
short) does not restore: the run says so in one line, resumes from the newest one that
does, and moves the newer, damaged ones to ``damaged_checkpoints/`` (kept, not deleted)
so that their steps can be saved again. When none restores, :class:`CheckpointError`
and nothing changes. The directory may be local or on an object store (``gs://...``,
where the move is a copy: :func:`experiments.run_dir.move_tree`). The other files of a
run directory: :mod:`experiments.run_dir`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from experiments.run_dir import DAMAGED_CHECKPOINTS, as_path, move_tree


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


class CheckpointError(ValueError):
    """No checkpoint of a run restores (the message names them and why)."""


class Checkpoints:
    """Orbax checkpoints of a pytree (the train state), one per record's step.

    Saving is synchronous, so a record's checkpoint is complete when :meth:`save`
    returns; the last ``max_to_keep`` are kept; half-written ones are cleaned up.
    ``directory`` is a local path or an object store's (``gs://...``), as orbax takes.
    """

    def __init__(self, directory: epath.PathLike, *, max_to_keep: int = 2) -> None:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._directory = as_path(directory, absolute=True)
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
        move_tree(self._directory / str(step), target)

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
