"""Objects and their masks: the first frame's objects s(0), and tracking them through a video.

* ``masks``: objects from any MASK source (mask editor, segmentation nodes, files).
* ``sam2``: loading SAM 2 / 2.1 (Meta checkpoints, Hugging Face folders).
* ``detect``: open-vocabulary detection (Grounding DINO, OWLv2) of objects by name.
* ``first_frame``: SAM2 segmentation of the first frame from clicks, boxes, names or automatically.
* ``track``: SAM2's video predictor: first-frame masks -> a label video.
"""
