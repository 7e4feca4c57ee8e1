"""The diffusers engine of Stage 2 (CogVideoX, I2VGen-XL, diffusers-format Wan): folders -> video.

* ``loader``: loading a model folder into a typed ``VideoModel`` handle (never downloads).
* ``sizes``: legal sizes and frame counts; fitting image, trajectory and reference.
* ``text``: global, negative and local prompts through the model's own text encoder.
* ``run``: ``generate`` - the stock pipeline with masked attention and dual-clock guidance.
"""
