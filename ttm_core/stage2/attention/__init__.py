"""Through-The-Mask's masked attention: token grids, grouping plans, kernels, state, installer.

Layers, from pure maths to diffusers (the ComfyUI-native engine reuses the first three):

* ``grids``: trajectory -> per-token object ids and per-frame boxes, for any ``VideoGeometry``
  (each family adapter in ``stage2/families`` defines its geometries).
* ``plan``: grouping plans (sort permutation, part offsets/lengths, keys per part).
* ``kernels``: grouped self-attention / masked cross-attention on q, k, v with any attention
  callable, fused backends chosen at run time, and the naive reference (tests only).
* ``routing``: which batch rows are conditional, which keys a token may see, strength blends.
* ``state``: what one installation applies (``MaskedAttentionPlan``) and the processors' shared state.
* ``layers``: the new (trainable, zero-initialised) masked attention layers.
* ``processors`` / ``install``: what every family's diffusers processors share, and the scoped
  installer (``masked_attention``) that puts a family's processors into a loaded model.

Nothing here imports ComfyUI; diffusers is imported only where a diffusers helper is called.
Import from the modules (this package face re-exports nothing). See docs/ATTENTION.md.
"""
