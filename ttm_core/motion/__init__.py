"""Stage 1, the mask trajectory, and the model-free cut-and-drag video made from it.

Dependencies point one way: ``poses`` (centroids, pose affines, poses estimated from labels) <-
``paths`` (the paths JSON, KJNodes splines -> per-frame poses) <- ``render`` (label video from poses)
<- ``cut_and_drag`` (the warp video); ``fit`` fits a trajectory to the size and length a model renders;
``formats`` converts trajectories to and from core's and the peers' formats
(masks, SAM 3 track data, Wan-Move TRACKS, ATI JSON, Time-to-Move).
"""
