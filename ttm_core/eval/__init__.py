"""Evaluation: the paper's metrics (FVD, CLIPFrame, ViCLIP-T/V, AD) and trajectory adherence.

Modules (none imports ComfyUI; every model loads from local files only):

* ``adherence``: re-track a generated video from the trajectory's first-frame masks and compare,
  per object and frame, with the trajectory (mask IoU, centroid error).
* ``motion``: Average Displacement (mean optical-flow magnitude, OpenCV DIS).
* ``clip_frame``: CLIPFrame (consecutive-frame CLIP image-embedding similarity).
* ``fvd``: Frechet Video Distance over I3D features (TorchScript I3D).
* ``viclip``: ViCLIP's video and text encoders (OpenGVLab's checkpoint layout), ViCLIP-T / ViCLIP-V.
* ``score``: every metric for every configuration's renders of a set.
* ``report``: JSON, CSV, markdown and PNG plots of the results.
* ``benchset``: a procedural benchmark set in ttm-batch's jobs layout.
* ``ablation``: the paper's Table 3 for any setup (renders through ttm-batch, then ``score``).
* ``videos``: reading and writing the videos compared.
* ``cli``: the ``ttm-eval`` command.

See docs/EVAL.md.
"""
