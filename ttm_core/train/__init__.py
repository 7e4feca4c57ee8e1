"""The trained path: training data from videos (``ttm-data``), trainers (``ttm-train``) on diffusers model
classes and accelerate, and the label palette both trained stages share. Nothing here imports ComfyUI;
Ray, webdataset, peft and tensorboard import lazily (``requirements-train.txt``)."""
