"""Training: pure steps, one loop with hooks, evaluation, the run's files, the mesh.

=================================  ==================================================
module                             concern
=================================  ==================================================
:mod:`~.config`                    :class:`TrainConfig`: the arguments of a run,
                                   validated once
:mod:`~.steps`                     the pure, jitted ``train_step`` and ``eval_step``
:mod:`~.optimizer`                 an algorithm of the registry on the mesh, with Adam
:mod:`~.loop`                      :func:`run`: the one training loop, with
                                   :class:`Hooks`
:mod:`~.evaluation`                accuracy of every split, on any mesh
:mod:`~.checkpoints`               orbax checkpoints; a damaged one is passed over
:mod:`~.parallel`                  the ``(domain, data)`` mesh and where arrays live
:mod:`~.processes`                 ``jax.distributed``, the writer, a bounded dispatch
=================================  ==================================================

Importing it checks the JAX version first: the trainer needs a newer JAX than
:mod:`corgrad_jax` (the layers above it, registries and results, need none).
"""

from corgrad_jax._src._version_check import require_jax

MINIMUM_JAX = "0.8.0"
"""The oldest JAX the trainer runs on, as in ``pyproject.toml``'s ``experiments`` extra (a
test keeps them equal): its step constrains shardings under ``use_abstract_mesh``."""

require_jax(
    "experiments", MINIMUM_JAX,
    "jax.lax.with_sharding_constraint under jax.sharding.use_abstract_mesh",
)

# The version check must run before the submodules import JAX's newer APIs.

from experiments.training.config import TrainConfig as TrainConfig  # noqa: E402
from experiments.training.loop import Hooks as Hooks  # noqa: E402
from experiments.training.loop import run as run  # noqa: E402
from experiments.training.parallel import DeviceLayout as DeviceLayout  # noqa: E402

__all__ = ["DeviceLayout", "Hooks", "TrainConfig", "run"]
