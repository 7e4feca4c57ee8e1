"""The ComfyUI-native engine: Through-The-Mask Stage 2 on ComfyUI's own Wan models and samplers.

This room may import ComfyUI (``comfy``, ``comfy_extras``, ComfyUI's ``nodes``); the nodes call it
and it calls ``ttm_core``. Dependencies point one way: ``nodes -> native -> ttm_core``.

* ``wan``: which MODELs are supported Wan models, their token geometry, local-prompt encoding.
* ``patch``: masked self- and cross-attention as a model patch: stateless per forward and
  order-proof beside other attention nodes (routing by what a call IS, never by call counts).
* ``guidance``: dual-clock trajectory guidance on ComfyUI's samplers (per sampler call).
* ``render``: the one-node path: patch, sample with ComfyUI's KSampler machinery, decode.
"""
