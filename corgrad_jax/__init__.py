"""corgrad_jax: CorGrad and the gradient-surgery family as Optax transformations.

Every transformation here takes per-domain gradients stacked on a leading axis (every
leaf shaped ``(D, *param_shape)``) and returns one param-shaped update, so it goes
first in a chain: ``optax.chain(corgrad(), optax.adam(1e-3))``.
"""

# First: on a JAX older than the floor, ImportError names the versions (_version_check).
from corgrad_jax._src import _version_check  # noqa: F401
from corgrad_jax._src.agreement import agreement_rand as agreement_rand
from corgrad_jax._src.agreement import agreement_sum as agreement_sum
from corgrad_jax._src.agreement import and_mask as and_mask
from corgrad_jax._src.agreement import mean_gradients as mean_gradients
from corgrad_jax._src.base import Diagnostics as Diagnostics
from corgrad_jax._src.base import StackedGradientState as StackedGradientState
from corgrad_jax._src.corgrad import corgrad as corgrad
from corgrad_jax._src.corgrad import log_decay_schedule as log_decay_schedule
from corgrad_jax._src.corgrad import pcgrad as pcgrad
from corgrad_jax._src.per_domain import per_domain_gradients as per_domain_gradients
from corgrad_jax._src.pieces import GRANULARITIES as GRANULARITIES
from corgrad_jax._src.pieces import VARIANTS as VARIANTS
from corgrad_jax._src.sharding import contiguous_split as contiguous_split
from corgrad_jax._src.sharding import partitioned as partitioned

__version__ = "0.1.0"

__all__ = [
    "GRANULARITIES",
    "VARIANTS",
    "Diagnostics",
    "StackedGradientState",
    "agreement_rand",
    "agreement_sum",
    "and_mask",
    "contiguous_split",
    "corgrad",
    "log_decay_schedule",
    "mean_gradients",
    "partitioned",
    "pcgrad",
    "per_domain_gradients",
]
