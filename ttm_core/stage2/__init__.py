"""Stage 2 (motion-to-video) through diffusers: CogVideoX, I2VGen-XL and diffusers-format Wan.

* ``families``: which folders are supported, recognised from ``model_index.json``.
* ``loader``: loading a folder into a typed ``VideoModel`` handle (never downloads).
* ``sizes``: legal sizes and frame counts per family; fitting image, trajectory and reference.
* ``text``: global, negative and local prompts through the model's own text encoder.
* ``run``: ``generate`` - the stock pipeline with masked attention and dual-clock guidance.
* ``tiny``: tiny random-weight pipelines in the users' folder layout (tests, benchmarks).

Nothing here imports ComfyUI; diffusers is imported where a pipeline is loaded or run.
See docs/DIFFUSERS_STAGE2.md.
"""

from .families import FAMILIES, DetectedModel, FamilySpec, detect_family, list_model_folders, resolve_model_folder
from .loader import DTYPES, VideoModel, load_video_model
from .run import GuidanceRecord, Stage2Result, Stage2Settings, generate, noise_kind, noise_level, size_rules
from .sizes import FramePlan, SizeRules, plan_frames

__all__ = [
    "DTYPES", "FAMILIES", "DetectedModel", "FamilySpec", "FramePlan", "GuidanceRecord", "SizeRules", "Stage2Result",
    "Stage2Settings", "VideoModel", "detect_family", "generate", "list_model_folders", "load_video_model",
    "noise_kind", "noise_level", "plan_frames", "resolve_model_folder", "size_rules",
]
