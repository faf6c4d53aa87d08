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
"""

from experiments.training.config import TrainConfig as TrainConfig
from experiments.training.loop import Hooks as Hooks
from experiments.training.loop import run as run
from experiments.training.parallel import DeviceLayout as DeviceLayout

__all__ = ["DeviceLayout", "Hooks", "TrainConfig", "run"]
