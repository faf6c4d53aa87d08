"""corgrad_jax: CorGrad and the gradient-aggregation family as Optax transformations.

Every transformation here takes per-domain gradients stacked on a leading axis (every
leaf shaped ``(D, *param_shape)``) and returns one param-shaped update, so it goes
first in a chain: ``optax.chain(corgrad(), optax.adam(1e-3))``. The rules that act on
Gram matrices (corgrad, upgrad, dual_proj, mgda, cagrad, imtl_g, aligned_mtl, con_fig,
grad_vac, nash_mtl) share one engine and take ``granularity=`` ("model", "layer",
"slice", "element") and ``num_slices=``; :data:`RULES` describes every rule.
"""

# First: on a JAX older than the floor, ImportError names the versions (_version_check).
from corgrad_jax._src import _version_check  # noqa: F401
from corgrad_jax._src.agreement import agreement_rand as agreement_rand
from corgrad_jax._src.agreement import agreement_sum as agreement_sum
from corgrad_jax._src.agreement import and_mask as and_mask
from corgrad_jax._src.agreement import grad_drop as grad_drop
from corgrad_jax._src.agreement import mean_gradients as mean_gradients
from corgrad_jax._src.agreement import sand_mask as sand_mask
from corgrad_jax._src.balancing import aligned_mtl as aligned_mtl
from corgrad_jax._src.balancing import con_fig as con_fig
from corgrad_jax._src.balancing import imtl_g as imtl_g
from corgrad_jax._src.base import Diagnostics as Diagnostics
from corgrad_jax._src.base import StackedGradientState as StackedGradientState
from corgrad_jax._src.compiling import compiler_options as compiler_options
from corgrad_jax._src.corgrad import corgrad as corgrad
from corgrad_jax._src.corgrad import log_decay_schedule as log_decay_schedule
from corgrad_jax._src.corgrad import pcgrad as pcgrad
from corgrad_jax._src.dual_cone import dual_proj as dual_proj
from corgrad_jax._src.dual_cone import upgrad as upgrad
from corgrad_jax._src.grad_vac import grad_vac as grad_vac
from corgrad_jax._src.min_norm import cagrad as cagrad
from corgrad_jax._src.min_norm import mgda as mgda
from corgrad_jax._src.nash_mtl import nash_mtl as nash_mtl
from corgrad_jax._src.per_domain import per_domain_gradients as per_domain_gradients
from corgrad_jax._src.pieces import GRANULARITIES as GRANULARITIES
from corgrad_jax._src.pieces import VARIANTS as VARIANTS
from corgrad_jax._src.rules import RULES as RULES
from corgrad_jax._src.rules import RuleInfo as RuleInfo
from corgrad_jax._src.sharding import contiguous_split as contiguous_split
from corgrad_jax._src.sharding import partitioned as partitioned

__version__ = "0.1.0"

__all__ = [
    "GRANULARITIES",
    "RULES",
    "VARIANTS",
    "Diagnostics",
    "RuleInfo",
    "StackedGradientState",
    "agreement_rand",
    "agreement_sum",
    "aligned_mtl",
    "and_mask",
    "cagrad",
    "compiler_options",
    "con_fig",
    "contiguous_split",
    "corgrad",
    "dual_proj",
    "grad_drop",
    "grad_vac",
    "imtl_g",
    "log_decay_schedule",
    "mean_gradients",
    "mgda",
    "nash_mtl",
    "partitioned",
    "pcgrad",
    "per_domain_gradients",
    "sand_mask",
    "upgrad",
]
