"""Score rendered sets: every metric for every configuration, against a benchmark set.

A *set* is a folder in the layout ``benchset`` writes (``clips.jsonl`` or ``jobs.jsonl`` with each clip's
id, prompt and trajectory file; ``reference/<id>.mp4``); a real set built by hand or with ``ttm-data`` works
the same when it has these files. A *configuration* is a folder of rendered videos, one per clip: ``<id>.mp4`` (or any
video extension) or the first video under ``<id>/`` (what ``ttm-batch --out`` writes).

Per clip: adherence (mean IoU and centroid error, and per object and frame), AD, CLIPFrame, ViCLIP-T (with
the clip's global prompt), ViCLIP-V (with its reference video). Per configuration: FVD against the
reference set, with both set sizes. A metric whose model is not given is skipped and said so (``skipped``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TTMInputError
from ..types import ProgressFn
from .videos import find_video, read_video

LOG = logging.getLogger(__name__)

METRICS = ("adherence", "ad", "clip_frame", "viclip_t", "viclip_v", "fvd")
NEEDS = {"clip_frame": "clip", "viclip_t": "viclip", "viclip_v": "viclip", "fvd": "i3d"}


def read_set(folder: Path) -> list[dict[str, Any]]:
    """The clips of a set (its ``clips.jsonl``, else its ``jobs.jsonl``), each with ``id`` and, when it has
    them, ``trajectory`` and ``prompt``."""
    jobs = folder / "clips.jsonl"
    if not jobs.is_file():
        jobs = folder / "jobs.jsonl"
    if not jobs.is_file():
        raise TTMInputError("set", f"{jobs} does not exist", "pass a folder made by `ttm-eval generate-set` (or one "
                            "with a jobs.jsonl of clip ids, prompts and trajectory files)")
    clips = []
    for number, line in enumerate(jobs.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
        except json.JSONDecodeError as error:
            raise TTMInputError("set", f"{jobs} line {number} is not JSON ({error.msg})", "fix the line") from error
        if not isinstance(job, dict) or not isinstance(job.get("id"), str):
            raise TTMInputError("set", f"{jobs} line {number} has no id", "give every clip an \"id\"")
        clips.append(job)
    if not clips:
        raise TTMInputError("set", f"{jobs} lists no clips", "generate a set with at least one clip")
    return clips


def _load_models(metrics: Sequence[str], models: Mapping[str, str | Path | None], device: str) -> dict[str, Any]:
    """Load what the metrics need, before any video is read (a missing file fails at once)."""
    loaded: dict[str, Any] = {}
    if "clip_frame" in metrics:
        from .clip_frame import load_clip

        loaded["clip"] = load_clip(models["clip"] or "", device)
    if "viclip_t" in metrics or "viclip_v" in metrics:
        from .viclip import load_viclip

        loaded["viclip"] = load_viclip(models["viclip"] or "", models.get("viclip_tokenizer"), device)
    if "fvd" in metrics:
        from .fvd import load_i3d

        loaded["i3d"] = load_i3d(models["i3d"] or "", device)
    return loaded


def _prompt(set_dir: Path, job: Mapping[str, Any]) -> str:
    """The clip's global prompt: its ``prompt`` field, else the one its trajectory file carries."""
    if isinstance(job.get("prompt"), str):
        return str(job["prompt"])
    if job.get("trajectory"):
        from ..motion.trajectory_file import read_trajectory

        return read_trajectory(set_dir / job["trajectory"], "trajectory").objects.prompts.global_prompt
    raise TTMInputError("set", f"clip {job['id']!r} has neither a prompt nor a trajectory file",
                        "give it a \"prompt\" (ViCLIP-T compares the video with it)")


def _adherence(video: torch.Tensor, trajectory_path: Path, tracker: Any, device: str) -> dict[str, Any]:
    from ..motion.trajectory_file import read_trajectory
    from .adherence import trajectory_adherence

    # A model that renders at its own size or length: compared in the video's frame (centre crop, resample).
    result = trajectory_adherence(video, read_trajectory(trajectory_path, "trajectory"), tracker, fit=True,
                                  device=device)
    clip = result.per_clip()
    return {"mean_iou": clip["mean_iou"], "mean_centroid_error_px": clip["mean_centroid_error_px"],
            "adherence": clip, "objects": result.object_rows()}


def score_set(set_dir: Path, configs: Mapping[str, Path], *, metrics: Sequence[str] = ("adherence", "ad"),
              models: Mapping[str, str | Path | None] | None = None, tracker: Any = None, device: str = "cpu",
              fvd_frames: int = 16, batch_size: int = 8, reference_dir: Path | None = None,
              progress: ProgressFn | None = None) -> dict[str, Any]:
    """Score every configuration's videos against the set.

    Args:
        set_dir: the set folder (``jobs.jsonl``, ``trajectories/``, ``reference/``).
        configs: configuration name -> folder of its rendered videos.
        metrics: any of ``METRICS``.
        models: local paths: ``clip`` (CLIP folder), ``viclip`` (checkpoint file), ``viclip_tokenizer``
            (folder; default the checkpoint's), ``i3d`` (TorchScript file).
        tracker: the adherence tracker (default the flow tracker).
        device: torch device of the models.
        reference_dir: reference videos (default ``set_dir/reference``).
        progress: (clips done, clips in all configurations).
    Returns:
        a JSON-ready dict: ``configs`` (per configuration: ``clips`` with their metrics, ``fvd``, ``count``,
        ``missing``), ``summary`` (per configuration: each metric's mean over its clips, and FVD), ``settings``.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise TTMInputError("metrics", f"unknown metric(s) {', '.join(unknown)}", f"use any of {', '.join(METRICS)}")
    if not configs:
        raise TTMInputError("videos", "no configuration to score", "pass --videos NAME=FOLDER at least once")
    for name, folder in configs.items():
        if not folder.is_dir():
            raise TTMInputError("videos", f"the folder of {name!r}, {folder}, does not exist",
                                "pass the folder its videos were rendered to")
    models = dict(models or {})
    clips = read_set(set_dir)
    reference_dir = reference_dir or set_dir / "reference"
    loaded = _load_models(metrics, {k: models.get(k) for k in ("clip", "viclip", "viclip_tokenizer", "i3d")}, device)
    reference_features: list[np.ndarray] = []
    references: dict[str, torch.Tensor] = {}

    def reference(clip_id: str) -> torch.Tensor:
        if clip_id not in references:
            path = find_video(reference_dir, clip_id)
            if path is None:
                raise TTMInputError("reference", f"no reference video for clip {clip_id!r} in {reference_dir}",
                                    "pass --reference FOLDER with <id>.mp4 per clip (generate-set writes them)")
            references[clip_id] = read_video(path, "reference")[0]
        return references[clip_id]

    total = len(clips) * len(configs)
    done = 0
    out: dict[str, Any] = {}
    for name, folder in configs.items():
        rows, missing, features = [], [], []
        for job in clips:
            path = find_video(folder, job["id"])
            if path is None:
                missing.append(job["id"])
                LOG.warning("%s: no video for clip %s in %s", name, job["id"], folder)
            else:
                video = read_video(path)[0]
                row: dict[str, Any] = {"id": job["id"], "video": str(path)}
                if "adherence" in metrics and job.get("trajectory"):
                    row.update(_adherence(video, set_dir / job["trajectory"], tracker, device))
                if "ad" in metrics and video.shape[0] > 1:
                    from .motion import average_displacement

                    row["ad"] = average_displacement(video)
                if "clip_frame" in metrics and video.shape[0] > 1:
                    from .clip_frame import clip_frame

                    row["clip_frame"] = clip_frame(loaded["clip"], video, batch_size)
                if "viclip_t" in metrics:
                    from .viclip import viclip_t

                    row["viclip_t"] = float(viclip_t(loaded["viclip"], [video], [_prompt(set_dir, job)])[0])
                if "viclip_v" in metrics:
                    from .viclip import viclip_v

                    row["viclip_v"] = float(viclip_v(loaded["viclip"], [video], [reference(job["id"])])[0])
                if "fvd" in metrics:
                    from .fvd import i3d_features

                    features.append(i3d_features(loaded["i3d"], [video], num_frames=fvd_frames, device=device))
                rows.append(row)
            done += 1
            if progress is not None:
                progress(done, total)
        config: dict[str, Any] = {"videos": str(folder), "count": len(rows), "missing": missing, "clips": rows}
        if "fvd" in metrics:
            from .fvd import frechet_distance, i3d_features

            if not reference_features:
                reference_features = [i3d_features(loaded["i3d"], [reference(job["id"])], num_frames=fvd_frames,
                                                   device=device) for job in clips]
            if len(features) >= 2:
                value = frechet_distance(np.concatenate(features), np.concatenate(reference_features))
            else:
                value = math.nan
                LOG.warning("%s: FVD needs 2 or more rendered videos, %d found", name, len(features))
            config["fvd"] = {"fvd": value, "generated": len(features), "reference": len(reference_features),
                             "num_frames": fvd_frames}
        out[name] = config
    summary = {}
    for name, config in out.items():
        row_summary: dict[str, float] = {}
        for metric in ("mean_iou", "mean_centroid_error_px", "ad", "clip_frame", "viclip_t", "viclip_v"):
            values = [r[metric] for r in config["clips"] if isinstance(r.get(metric), float)
                      and math.isfinite(r[metric])]
            if values:
                row_summary[metric] = float(np.mean(values))
        if "fvd" in config:
            row_summary["fvd"] = config["fvd"]["fvd"]
        summary[name] = row_summary
    return {"set": str(set_dir), "settings": {"metrics": list(metrics), "device": device, "fvd_frames": fvd_frames,
                                              "tracker": type(tracker).__name__ if tracker else "FlowTrackSettings",
                                              "models": {k: str(v) for k, v in models.items() if v}},
            "configs": out, "summary": summary}
