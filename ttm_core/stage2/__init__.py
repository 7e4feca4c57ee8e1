"""Stage 2 (motion-to-video): from the first frame and the mask trajectory to the video.

* ``settings``: what a generation is asked to do (masked attention, dual clock, sampling).
* ``guidance``: dual-clock trajectory guidance (latent maths, shared by every engine).
* ``attention``: masked self- and cross-attention (token grids, plans, kernels, installer).
* ``families``: one adapter per model family (Wan, CogVideoX, UNets): geometry, sites, processors,
  latent layout, reference encoding, prompt encoding, pipeline arguments.
* ``diffusers``: the diffusers engine (loading folders, sizes, prompts, ``generate``).

The ComfyUI-native Wan engine lives outside the library, in the pack's ``native/`` room.
Import from the modules (this package face re-exports nothing).
"""
