"""TTM_ImageToMotion: Stage 1, the mask trajectory."""

from __future__ import annotations

import json

import comfy.samplers
import torch
from comfy_api.latest import io, ui

from ..native.stage1 import NativeStage1, generate_native
from ..ttm_core.errors import TTMInputError
from ..ttm_core.motion.fit_paths import paths_json_from_trajectory
from ..ttm_core.motion.paths import attach_splines, format_paths, normalized_paths, parse_paths
from ..ttm_core.motion.plan import PlanResult, plan_objects
from ..ttm_core.motion.poses import mask_centroids
from ..ttm_core.motion.render import trajectory_from_paths
from ..ttm_core.motion.trained import Stage1Sampling, generate_trajectory
from ..ttm_core.prompts.llm import HttpLLM
from ..ttm_core.types import Objects as ObjectsValue
from ._common import CATEGORY, Objects, Trajectory, check_combo, progress_callback
from ._models import Managed
from ._stage2 import show_text
from .editor_preview import editor_ui
from .llm_nodes import Llm
from .model_nodes import LoadedVideoModel, VideoModelSocket
from .trained_nodes import TrainedSocket

BACKENDS = ("paths", "plan", "trained")
EXAMPLE_PATHS = json.dumps({
    "version": 1, "units": "normalized",
    "objects": {"1": {"keyframes": [{"t": 1.0, "x": 0.6, "y": 0.5, "easing": "ease_in_out"}]}},
}, indent=1)


def _depth_order(text: str, objects) -> tuple[int, ...]:
    if not text.strip():
        return ()
    names = [p.strip() for p in text.split(",") if p.strip()]
    order = tuple(objects.ids[objects.prompts.index_of(n)] for n in names)
    if sorted(order) != sorted(objects.ids):
        raise TTMInputError("depth_order", f"{text!r} does not name every object exactly once "
                            f"(objects: {', '.join(objects.prompts.names)})",
                            "list all objects front to back, comma-separated, or leave it empty")
    return order


def _plan(llm: Managed | HttpLLM | None, objects: ObjectsValue, num_frames: int, fps: float, *, seed: int,
          temperature: float, max_new_tokens: int, attempts: int, node_id: str | None) -> PlanResult:
    if llm is None:
        raise TTMInputError("llm", "the plan backend needs an LLM",
                            "connect an LLM Loader or an LLM Endpoint node to the llm input, or use the paths backend")
    # A managed local model is moved to its device only after the request has been checked.
    handle, device = (llm.handle, llm.load) if isinstance(llm, Managed) else (llm, None)
    return plan_objects(handle, objects, num_frames, fps, seed=seed, temperature=temperature,
                        max_new_tokens=max_new_tokens, attempts=attempts, device=device,
                        progress=progress_callback(node_id))


def _trained(node_id: str | None, image: torch.Tensor, objects: ObjectsValue, order: tuple[int, ...], trained,
             settings: Stage1Sampling, video_model: LoadedVideoModel | None, native: dict) -> io.NodeOutput:
    """The trained backend: a Stage-1 checkpoint generates the trajectory on its base model, given as a diffusers
    folder (``video_model``) or as the user's native Wan (``native``: model, clip, vae, clip_vision, sampler_name,
    scheduler)."""
    if trained is None:
        raise TTMInputError("trained", "the trained backend needs a Stage 1 checkpoint",
                            "connect Trained Checkpoint Loader (Through-The-Mask) to trained")
    on_native = any(native[name] is not None for name in ("model", "clip", "vae"))
    if video_model is not None and on_native:
        raise TTMInputError("video_model", "both a diffusers model (video_model) and a native Wan (model / clip / vae) "
                            "are connected", "connect the checkpoint's base model one way only")
    if video_model is None and not on_native:
        raise TTMInputError("video_model", "the trained backend needs the checkpoint's base model",
                            "connect Video Model Loader (Through-The-Mask) with its diffusers folder to video_model, "
                            "or the native Wan MODEL, CLIP and VAE to model, clip and vae")
    motion_prompt = objects.prompts.motion_prompt
    if on_native:
        run = NativeStage1(**native)
        trajectory, reading = generate_native(run, trained, image[0], objects, motion_prompt, settings, order)
        label = "native Wan"
    else:
        if not isinstance(video_model, LoadedVideoModel):
            raise TTMInputError("video_model", f"got a {type(video_model).__name__}, not a loaded video model",
                                "connect Video Model Loader (Through-The-Mask)")
        trajectory, reading = generate_trajectory(video_model.model, trained, image[0], objects, motion_prompt,
                                                  settings, progress_callback(node_id), depth_order=order,
                                                  prepare=video_model.prepare)
        label = video_model.model.variant.label
    text = "\n".join([f"{label}: {trajectory.num_frames} frames generated", *reading.notes])
    show_text(node_id, text)
    return io.NodeOutput(trajectory, trajectory.color_video(), trajectory.foreground(),
                         paths_json_from_trajectory(trajectory), ui=ui.PreviewText(text))


class ImageToMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_ImageToMotion",
            display_name="Image To Motion (Through-The-Mask)",
            category=CATEGORY,
            description="Stage 1: make the mask trajectory - where every object is in every frame. The paths "
                        "backend moves each object along keyframes or a SplineEditor spline; the plan backend has "
                        "an LLM plan the keyframes from the motion prompt; the trained backend has a trained "
                        "Stage 1 model generate the objects' masks from the image, the masks and the motion prompt "
                        "(plan and trained: editable, paste paths_json into paths).",
            inputs=[
                io.Image.Input("image", tooltip="The first frame (only its size is used)."),
                Objects.Input("objects", tooltip="The objects to move (TTM_OBJECTS)."),
                io.Combo.Input("backend", options=list(BACKENDS), default="paths",
                               tooltip="paths: objects follow the keyframes/splines you give. plan: the connected "
                                       "LLM plans each object's keyframes from the objects' motion prompt, local "
                                       "prompts and first-frame boxes (the paths input is then ignored). trained: "
                                       "a trained Stage 1 checkpoint (trained) on its base model (video_model: a "
                                       "diffusers folder, or model / clip / vae: a native Wan) generates the masks "
                                       "from the image, the objects and their motion prompt."),
                io.String.Input("paths", multiline=True, default=EXAMPLE_PATHS,
                                tooltip="Paths JSON (version 1): per object (name or 1-based id) either "
                                        "'keyframes' [{frame|t, x, y, scale, rotation, easing}] or a 'spline' "
                                        "(SplineEditor points). Coordinates move the object's centroid; units "
                                        "'normalized' (0..1) or 'pixels'. Objects without a path stay still. "
                                        "See the README for every field."),
                io.Int.Input("num_frames", default=49, min=1, max=4096,
                             tooltip="Frames in the clip, the first frame included (trained: a length the model "
                                     "generates, 1 + 4k for Wan and CogVideoX)."),
                io.Float.Input("fps", default=16.0, min=0.01, max=240.0, step=0.01,
                               tooltip="Playback rate of the trajectory (passed on to the video)."),
                io.String.Input("depth_order", default="",
                                tooltip="Objects from front to back, comma-separated names or ids (e.g. "
                                        "'big coin, 1'). Empty = object 1 in front, then 2, ..."),
                io.String.Input("spline_coords", optional=True, force_input=True,
                                tooltip="Optional: KJNodes SplineEditor coord_str (one spline, or several)."),
                io.String.Input("spline_objects", default="",
                                tooltip="Objects that take the connected splines, in spline order "
                                        "(comma-separated names or ids). Empty = objects 1, 2, ..."),
                io.Int.Input("spline_width", default=0, min=0, max=16384,
                             tooltip="SplineEditor canvas width (its mask_width); 0 = the image width."),
                io.Int.Input("spline_height", default=0, min=0, max=16384,
                             tooltip="SplineEditor canvas height (its mask_height); 0 = the image height."),
                Llm.Input("llm", optional=True, tooltip="plan backend: from LLM Loader or LLM Endpoint."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, optional=True, control_after_generate=False,
                             tooltip="plan backend: the same seed, LLM and inputs give the same plan (retry k uses "
                                     "seed + k). trained backend: the sampler's noise seed (the same seed, "
                                     "checkpoint and inputs give the same trajectory)."),
                io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="plan backend: 0 = always the most likely plan; higher = more varied "
                                       "(sampled with the seed)."),
                io.Int.Input("max_new_tokens", default=1024, min=128, max=8192, optional=True,
                             tooltip="plan backend: the longest answer, in tokens (about 60 per keyframe)."),
                io.Int.Input("attempts", default=3, min=1, max=10, optional=True,
                             tooltip="plan backend: an unusable plan (malformed, unknown names, times outside "
                                     "the clip, objects flung away) is shown to the LLM with what was wrong and "
                                     "asked again, up to this many answers in all."),
                TrainedSocket.Input("trained", optional=True, lazy=True,
                                    tooltip="trained backend: a Stage 1 checkpoint from Trained Checkpoint Loader "
                                            "(Through-The-Mask)."),
                VideoModelSocket.Input("video_model", optional=True, lazy=True,
                                       tooltip="trained backend: the checkpoint's base model from Video Model Loader "
                                               "(Through-The-Mask), e.g. Wan 2.2 TI2V-5B in diffusers format (or "
                                               "connect a native Wan to model / clip / vae instead)."),
                io.Int.Input("steps", default=0, min=0, max=1000, optional=True,
                             tooltip="trained backend: sampling steps; 0 = the base model's recommended count."),
                io.Float.Input("cfg", default=0.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="trained backend: guidance scale on the motion prompt; 0 = the base model's "
                                       "recommended scale, 1 = off."),
                io.Model.Input("model", optional=True, lazy=True,
                               tooltip="trained backend on a native Wan (instead of video_model): the checkpoint's "
                                       "base model, Wan 2.1 I2V or Wan 2.2 TI2V-5B (Load Diffusion Model)."),
                io.Clip.Input("clip", optional=True, lazy=True,
                              tooltip="trained backend on a native Wan: its text encoder (umT5, Load CLIP type wan)."),
                io.Vae.Input("vae", optional=True, lazy=True,
                             tooltip="trained backend on a native Wan: its VAE (2.1 VAE for Wan 2.1, 2.2 VAE for "
                                     "TI2V-5B)."),
                io.ClipVision.Input("clip_vision", optional=True, lazy=True,
                                    tooltip="trained backend on a native Wan 2.1 I2V: CLIP vision (clip_vision_h); "
                                            "optional."),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.SAMPLER_NAMES), default="euler",
                               optional=True, tooltip="trained backend on a native Wan: ComfyUI's sampler."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="simple",
                               optional=True, tooltip="trained backend on a native Wan: ComfyUI's scheduler."),
            ],
            outputs=[
                Trajectory.Output("trajectory", tooltip="The mask trajectory (TTM_TRAJECTORY)."),
                io.Image.Output("preview", tooltip="The trajectory as a colour video (one colour per object)."),
                io.Mask.Output("mask", tooltip="Per frame, where any object is (1) or background (0)."),
                io.String.Output("paths_json", tooltip="The paths JSON (version 1) the trajectory follows: the "
                                                       "LLM's plan (plan), your paths normalized (paths) or "
                                                       "keyframes fit to the generated masks (trained). Paste "
                                                       "it into the paths input to pin or edit it."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, backend=None, paths=None) -> bool | str:
        combo = check_combo("backend", backend, BACKENDS)
        if combo is not True:
            return combo
        if backend == "paths" and isinstance(paths, str) and paths.strip():
            try:
                json.loads(paths)
            except json.JSONDecodeError as err:
                return (f"paths: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}). "
                        "Fix: correct the JSON, or clear the field to keep every object still")
        return True

    @classmethod
    def check_lazy_status(cls, backend=None, **inputs) -> list[str]:
        """The checkpoint and the video model are loaded only for the trained backend (unconnected inputs are
        absent from ``inputs``)."""
        if backend != "trained":
            return []
        return [name for name in ("trained", "video_model", "model", "clip", "vae", "clip_vision")
                if name in inputs and inputs[name] is None]

    @classmethod
    def execute(cls, image: torch.Tensor, objects, backend: str, paths: str, num_frames: int, fps: float,
                depth_order: str, spline_objects: str, spline_width: int, spline_height: int,
                spline_coords: str | None = None, llm=None, seed: int = 0, temperature: float = 0.0,
                max_new_tokens: int = 1024, attempts: int = 3, trained=None, video_model=None, steps: int = 0,
                cfg: float = 0.0, model=None, clip=None, vae=None, clip_vision=None, sampler_name: str = "euler",
                scheduler: str = "simple") -> io.NodeOutput:
        height, width = int(image.shape[1]), int(image.shape[2])
        if (height, width) != objects.size:
            raise TTMInputError("image", f"the image is {width}x{height} but the objects' masks are "
                                f"{objects.size[1]}x{objects.size[0]}", "use the image the objects were made on")
        order = _depth_order(depth_order, objects)
        if backend == "trained":
            settings = Stage1Sampling(frames=num_frames, steps=steps, seed=seed, cfg=cfg, fps=fps)
            native = dict(model=model, clip=clip, vae=vae, clip_vision=clip_vision, sampler_name=sampler_name,
                          scheduler=scheduler)
            return _trained(cls.hidden.unique_id, image, objects, order, trained, settings, video_model, native)
        spec: str | dict = paths
        planned = None
        if backend == "plan":
            planned = _plan(llm, objects, num_frames, fps, seed=seed, temperature=temperature,
                            max_new_tokens=max_new_tokens, attempts=attempts, node_id=cls.hidden.unique_id)
            spec = planned.paths
        elif spline_coords is not None and spline_coords.strip():
            canvas = (spline_width or width, spline_height or height)
            spec = attach_splines(paths, spline_coords, spline_objects, objects.prompts, canvas)
        object_paths = parse_paths(spec, objects.prompts, objects.size, num_frames, mask_centroids(objects.masks))
        text = planned.paths_json if planned is not None else format_paths(normalized_paths(spec, objects.prompts))
        trajectory = trajectory_from_paths(objects, object_paths, num_frames, fps, order,
                                           progress=progress_callback(cls.hidden.unique_id))
        return io.NodeOutput(trajectory, trajectory.color_video(), trajectory.foreground(), text,
                             ui=editor_ui(image, objects, order))
