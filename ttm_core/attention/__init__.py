"""Through-The-Mask's masked attention: token grids, grouping plans, kernels, processors, installer.

Layers, from pure maths to diffusers (the ComfyUI-native patch reuses the first three):

* ``grids``: trajectory -> per-token object ids and per-frame boxes, one mapping per family.
* ``plan``: grouping plans (sort permutation, part offsets/lengths, keys per part).
* ``kernels``: grouped self-attention / masked cross-attention on q, k, v with any attention
  callable, fused backends chosen at run time, and the naive reference (tests only).
* ``layers``: the new (trainable, zero-initialised) masked attention layers.
* ``processors`` / ``install``: diffusers processors and the scoped installer.

Nothing here imports ComfyUI; diffusers is imported only where a diffusers helper is called.
See docs/ATTENTION.md.
"""

from .config import MODES, MaskedAttentionConfig, MaskedAttentionPlan
from .families import default_num_blocks, family_of, geometry_for, models_of, sites
from .grids import (COGVIDEOX_10, COGVIDEOX_15, I2VGEN_XL, SVD, WAN21_I2V, WAN22_I2V_A14B, WAN22_TI2V, TokenGrid,
                    VideoGeometry, token_grid, token_grid_from_labels)
from .install import masked_attention
from .kernels import (AttentionFn, grouped_self_attention, masked_cross_attention, masked_cross_attention_explicit,
                      naive_masked_attention, partitioned_attention, sdpa)
from .layers import MaskedLayers
from .plan import LocalPromptLayout, Partition, cross_partition, joint_partition, self_groups
from .state import MaskedAttentionState

__all__ = [
    "COGVIDEOX_10", "COGVIDEOX_15", "I2VGEN_XL", "MODES", "SVD", "WAN21_I2V", "WAN22_I2V_A14B", "WAN22_TI2V",
    "AttentionFn", "LocalPromptLayout", "MaskedAttentionConfig", "MaskedAttentionPlan", "MaskedAttentionState",
    "MaskedLayers", "Partition", "TokenGrid", "VideoGeometry", "cross_partition", "default_num_blocks", "family_of",
    "geometry_for", "grouped_self_attention", "joint_partition", "masked_attention", "masked_cross_attention",
    "masked_cross_attention_explicit", "models_of", "naive_masked_attention", "partitioned_attention", "sdpa",
    "self_groups", "sites", "token_grid", "token_grid_from_labels",
]
