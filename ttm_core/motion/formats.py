"""The mask trajectory in the formats of ComfyUI core and its peers, both ways.

In (-> ``Trajectory``):
    * per-object MASK batches (any segmenter, core ``SAM3_TrackToMask`` once per object index, painted frames);
    * core SAM 3 video tracking data (``SAM3_TRACK_DATA``), keeping SAM 3's object indices;
    * point tracks - core Wan-Move ``TRACKS``, ATI track JSON, KJNodes SplineEditor coordinates - moving given
      objects: each object follows the robust similarity fit (RANSAC) of the tracks that start inside it.
Out (``Trajectory`` ->):
    * Wan-Move ``TRACKS`` and ATI track JSON (points sampled inside each object, moved with its transform);
    * Time-to-Move inputs (the cut-and-drag video and the per-frame motion mask);
    * the colour label video and per-object MASK batches.

Formats, as read in ComfyUI's own source (file, function; repository and commit in docs/formats.md):
    * ``TRACKS`` (comfy_extras/nodes_wanmove.py, ``WanMoveTracksFromCoords.execute`` / ``GenerateTracks.execute``):
      ``{"track_path": float32 [T, N, 2] (x, y) in pixels of the video, "track_visibility": bool [T, N]}``;
      ``WanMoveTrackToVideo.execute`` reads ``track_path[:length]`` and ``create_pos_embeddings`` maps point
      (x, y) to latent cell (y // 8, x // 8), skipping invisible points and points outside [0, W) x [0, H).
      The visibility may also be ``[T, 1]`` (``WanMoveTracksFromCoords`` with a ``track_mask``); it is optional
      (``tracks.get("track_visibility", ones)``).
    * ATI track JSON (comfy_extras/nodes_wan.py, ``parse_json_tracks``, ``pad_pts``, ``process_tracks``,
      ``WanTrackToVideo.execute``): a list of tracks, each a list of ``{"x": .., "y": ..}`` in pixels of the
      video; every track is padded or cut to ``FIXED_LENGTH`` = 121 points spanning the whole clip (ATI's 24 fps
      convention) and resampled onto the ``length`` frames, so exported tracks have 121 points.
    * KJNodes SplineEditor ``coord_str``: the same point lists (``ttm_core.kjnodes``), one point per frame.
    * ``SAM3_TRACK_DATA`` (comfy_extras/nodes_sam3.py ``SAM3_VideoTrack.execute``; comfy/ldm/sam3/tracker.py
      ``forward_video``, ``pack_masks``, ``unpack_masks``): ``{"packed_masks": uint8 [frames, objects, Hm, Wm/8]
      or None, "n_frames": int, "scores": list[float], "orig_size": (H, W)}``; bit i of byte j is pixel 8 j + i
      of the row (mask logits > 0), frames with fewer objects zero-padded; ``SAM3_TrackToMask.execute`` unpacks
      and resizes bilinearly to ``orig_size``.
Coordinates are continuous pixel coordinates (pixel i covers [i, i + 1)), the convention of ``poses`` and the
one Wan-Move's ``x // 8`` implies.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import TTMInputError
from ..kjnodes import parse_spline_points
from ..types import MAX_OBJECTS, ObjectPrompt, Objects, ProgressFn, Prompts, Trajectory
from .fit import center_crop_box, frame_map
from .poses import IDENTITY, estimate_affines, is_identity
from .render import warp

ATI_LENGTH = 121
"""Points per ATI track: comfy_extras/nodes_wan.py ``FIXED_LENGTH`` (used by ``pad_pts``)."""
SAM3_BITS = (1, 2, 4, 8, 16, 32, 64, 128)
"""Bit weights of comfy/ldm/sam3/tracker.py ``unpack_masks``: bit i of a byte is pixel 8 j + i."""


# ------------------------------------------------------------------------------------------------ helpers


def default_prompts(names: Sequence[str]) -> Prompts:
    """Prompts for objects that came without any: each object's name is also its local prompt."""
    return Prompts("", "", tuple(ObjectPrompt(name, name) for name in names))


def _check_prompts(prompts: Prompts | None, count: int, what: str, names: Sequence[str]) -> Prompts:
    if prompts is None:
        return default_prompts(names)
    if len(prompts.objects) != count:
        raise TTMInputError("prompts", f"the prompts name {len(prompts.objects)} objects "
                            f"({', '.join(prompts.names) or 'none'}) but {count} {what} were given",
                            f"give one object line per {what[:-1] if what.endswith('s') else what}, in order, "
                            "or disconnect prompts to name them automatically")
    return prompts


def paint_labels(masks: torch.Tensor, ids: Sequence[int], depth_order: Sequence[int]) -> torch.Tensor:
    """uint8 ``[T, H, W]`` from per-object masks ``[T, L, H, W]`` (thresholded at 0.5), back to front."""
    index_of = {object_id: i for i, object_id in enumerate(ids)}
    labels = torch.zeros(masks.shape[0], masks.shape[2], masks.shape[3], dtype=torch.uint8)
    for object_id in reversed(tuple(depth_order) or tuple(ids)):
        labels[masks[:, index_of[object_id]] >= 0.5] = object_id
    return labels


def _order(depth_order: Sequence[int], ids: Sequence[int]) -> tuple[int, ...]:
    order = tuple(depth_order) or tuple(ids)
    if sorted(order) != sorted(ids):
        raise TTMInputError("depth_order", f"{list(order)} is not an ordering of the object ids {list(ids)}",
                            "list every object once, front first, or leave it empty")
    return order


# ------------------------------------------------------------------------------------------------ masks in/out


def trajectory_from_masks(sources: Sequence[tuple[str, torch.Tensor]], prompts: Prompts | None = None,
                          fps: float = 16.0, depth_order: Sequence[int] = (), object_count: int = 0,
                          image_size: tuple[int, int] | None = None) -> Trajectory:
    """A trajectory from per-object MASK batches (one ``[T, H, W]`` batch per object).

    Args:
        sources: (input name, MASK ``[T, H, W]`` or ``[H, W]``) pairs, one per object, in object order.
        prompts: one object line per object; ``None`` names them "object 1", "object 2", ...
        fps: playback rate.
        depth_order: object ids (1..L) front to back; empty = object 1 in front.
        object_count: 0 = every source is one object; K > 0 = the single source holds K objects' frames
            one object after the other (object 1's T frames, then object 2's: what core "Batch Masks" of the
            per-object batches gives, and what ``masks_from_trajectory`` returns).
        image_size: (H, W) the masks must have (the first frame's), or ``None``.
    Returns:
        the Trajectory: objects = the frame-0 masks, ids 1..L, labels painted back to front.
    """
    batches: list[tuple[str, torch.Tensor]] = []
    for name, mask in sources:
        if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or mask.numel() == 0:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TTMInputError(name, f"expected a MASK batch [frames, H, W], got {shape}", "connect a MASK output")
        batches.append((name, (mask[None] if mask.ndim == 2 else mask).detach().to("cpu", torch.float32)))
    if not batches:
        raise TTMInputError("masks", "no masks were given", "connect one MASK batch per object")
    if object_count > 0:
        if len(batches) != 1:
            raise TTMInputError("object_count", f"object_count {object_count} splits one batch, but {len(batches)} "
                                "mask inputs are connected", "connect only masks, or set object_count to 0")
        name, batch = batches[0]
        if batch.shape[0] % object_count:
            raise TTMInputError(name, f"{batch.shape[0]} masks do not split into {object_count} objects of equal "
                                "length", "give every object the same number of frames, one object after the other")
        frames = batch.shape[0] // object_count
        batches = [(f"{name} (object {i + 1})", batch[i * frames:(i + 1) * frames]) for i in range(object_count)]
    if len(batches) > MAX_OBJECTS:
        raise TTMInputError("masks", f"{len(batches)} objects were given", f"use at most {MAX_OBJECTS} objects")
    first_name, first = batches[0]
    size = image_size or (int(first.shape[1]), int(first.shape[2]))
    for name, batch in batches:
        if tuple(batch.shape[1:]) != tuple(size):
            against = "the image" if image_size else f"{first_name}"
            raise TTMInputError(name, f"the masks are {batch.shape[2]}x{batch.shape[1]} but {against} is "
                                f"{size[1]}x{size[0]} (WxH)", "make every mask at the image's size, or resize it")
        if batch.shape[0] != first.shape[0]:
            raise TTMInputError(name, f"{batch.shape[0]} frames but {first_name} has {first.shape[0]}",
                                "give every object a mask for every frame of the clip")
        if not bool((batch[0] >= 0.5).any()):
            raise TTMInputError(name, "the mask is empty at frame 0, so the object has no first-frame mask",
                                "start the clip at a frame where every object is visible, or drop this object")
    names = [f"object {i + 1}" for i in range(len(batches))]
    prompts = _check_prompts(prompts, len(batches), "mask batches", names)
    stacked = torch.stack([b for _, b in batches], dim=1).clamp(0.0, 1.0)  # [T, L, H, W]
    objects = Objects(prompts, (stacked[0] >= 0.5).to(torch.float32))
    order = _order(depth_order, objects.ids)
    return Trajectory(paint_labels(stacked, objects.ids, order), objects, fps, order)


def masks_from_trajectory(trajectory: Trajectory) -> torch.Tensor:
    """float32 ``[L, T, H, W]`` in {0, 1}: where each object is in each frame (objects in id order)."""
    return trajectory.object_masks().permute(1, 0, 2, 3).to(torch.float32).contiguous()


# ------------------------------------------------------------------------------------------------ SAM 3


def unpack_sam3_masks(packed: torch.Tensor) -> torch.Tensor:
    """bool ``[..., H, 8 W']`` from SAM 3's bit-packed uint8 ``[..., H, W']``, exactly as core's
    comfy/ldm/sam3/tracker.py ``unpack_masks`` (bit i of byte j is pixel 8 j + i)."""
    bits = torch.tensor(SAM3_BITS, dtype=torch.uint8, device=packed.device)
    return (packed.unsqueeze(-1) & bits).bool().view(*packed.shape[:-1], -1)


def pack_sam3_masks(masks: torch.Tensor) -> torch.Tensor:
    """The inverse, as core's comfy/ldm/sam3/tracker.py ``pack_masks``: ``[..., H, W]`` (> 0 is set, W a
    multiple of 8) -> uint8 ``[..., H, W / 8]``. Used to build SAM3_TRACK_DATA the way core does."""
    binary = masks > 0
    shifts = torch.arange(8, device=masks.device)
    return (binary.view(*masks.shape[:-1], -1, 8) * (1 << shifts)).sum(-1).byte()


def parse_indices(text: str, count: int) -> list[int]:
    """SAM 3 object indices from "0, 2" (empty = all ``count``); out-of-range or malformed ones are errors
    (core's ``SAM3_TrackToMask`` drops them silently; here the user hears about it)."""
    if not text.strip():
        return list(range(count))
    indices: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not (part.isascii() and part.isdigit()) or int(part) >= count:
            raise TTMInputError("object_indices", f"{part!r} is not an object index of this track data "
                                f"(0..{count - 1})", "list SAM 3 object indices separated by commas, e.g. '0, 2'")
        if int(part) in indices:
            raise TTMInputError("object_indices", f"index {part} is listed twice", "list every object once")
        indices.append(int(part))
    return indices


def trajectory_from_sam3(track_data: Mapping[str, Any], object_indices: str = "", prompts: Prompts | None = None,
                         fps: float = 16.0, depth_order: Sequence[int] = ()) -> Trajectory:
    """A trajectory straight from core's ``SAM3_TRACK_DATA``, keeping SAM 3's object indices.

    SAM 3 object index k becomes object id k + 1 (label k + 1), named "sam3 object k" unless prompts are given
    (one object line per selected index, in the order listed). Masks are unpacked bit for bit as core does,
    resized bilinearly to ``orig_size`` as ``SAM3_TrackToMask`` does, and thresholded at 0.5.

    Args:
        track_data: the SAM3_TRACK_DATA dict (``packed_masks``, ``n_frames``, ``scores``, ``orig_size``).
        object_indices: comma-separated SAM 3 indices, e.g. "0, 2"; empty = every object.
        prompts: optional object lines for the selected objects.
        fps: playback rate.
        depth_order: ids (index + 1) front to back; empty = the listed order, first in front.
    """
    if not isinstance(track_data, Mapping) or "packed_masks" not in track_data or "orig_size" not in track_data:
        raise TTMInputError("track_data", f"expected SAM3_TRACK_DATA (a dict with packed_masks, n_frames, scores, "
                            f"orig_size), got {type(track_data).__name__}",
                            "connect core SAM3 Video Track's track_data output")
    packed = track_data["packed_masks"]
    if packed is None:
        raise TTMInputError("track_data", f"SAM 3 tracked no object in any of the {track_data.get('n_frames')} "
                            "frames (packed_masks is None)",
                            "give SAM3 Video Track an initial_mask or a text prompt that finds the objects")
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim != 4:
        raise TTMInputError("track_data", f"packed_masks must be uint8 [frames, objects, H, W/8], got "
                            f"{getattr(packed, 'dtype', type(packed).__name__)} {tuple(getattr(packed, 'shape', ()))}",
                            "connect core SAM3 Video Track's track_data output unchanged")
    frames, count = int(packed.shape[0]), int(packed.shape[1])
    n_frames = track_data.get("n_frames", frames)
    if n_frames != frames:
        raise TTMInputError("track_data", f"n_frames is {n_frames} but packed_masks has {frames} frames",
                            "connect core SAM3 Video Track's track_data output unchanged")
    height, width = (int(v) for v in track_data["orig_size"])
    indices = parse_indices(object_indices, count)
    if not indices:
        raise TTMInputError("track_data", "the track data holds no objects", "track at least one object")
    if len(indices) > MAX_OBJECTS:
        raise TTMInputError("object_indices", f"{len(indices)} objects selected",
                            f"select at most {MAX_OBJECTS} with object_indices, e.g. '0, 1, 2'")
    masks = torch.empty(frames, len(indices), height, width, dtype=torch.float32)
    for t in range(frames):  # frame by frame: the unpacked model-resolution masks of a long clip are large
        binary = unpack_sam3_masks(packed[t, indices].cpu()).to(torch.float32)[None]  # [1, L, Hm, Wm]
        resized = F.interpolate(binary, size=(height, width), mode="bilinear", align_corners=False)[0]
        masks[t] = (resized >= 0.5).to(torch.float32)
    empty = [k for j, k in enumerate(indices) if not bool(masks[0, j].any())]
    if empty:
        present = [k for j, k in enumerate(indices) if bool(masks[0, j].any())]
        raise TTMInputError("object_indices", f"SAM 3 object(s) {empty} are not in frame 0 (they were found later "
                            f"in the clip); objects in frame 0: {present or 'none'}",
                            "select objects present in frame 0 with object_indices, or start the clip later")
    names = [f"sam3 object {k}" for k in indices]
    prompts = _check_prompts(prompts, len(indices), "SAM 3 objects", names)
    ids = tuple(k + 1 for k in indices)
    if any(i > 255 for i in ids):
        raise TTMInputError("object_indices", f"indices {indices} exceed 254", "select indices 0..254")
    objects = Objects(prompts, masks[0].clone(), ids)
    order = _order(depth_order, ids)
    return Trajectory(paint_labels(masks, ids, order), objects, fps, order)


# ------------------------------------------------------------------------------------------------ tracks in


@dataclass(frozen=True)
class TrackFitSettings:
    """How point tracks move objects.

    Attributes:
        ransac_threshold: largest distance (pixels) at which a track still agrees with an object's motion;
            tracks farther off are outliers of the similarity fit (cv2.estimateAffinePartial2D, RANSAC).
        still_without_tracks: an object no track starts in stays still (True) or is an error (False).
    """

    ransac_threshold: float = 3.0
    still_without_tracks: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ransac_threshold) and self.ransac_threshold > 0):
            raise TTMInputError("ransac_threshold", f"{self.ransac_threshold} is not a positive number of pixels",
                                "use e.g. 3")


def tracks_from_dict(tracks: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Core's TRACKS dict -> (float64 ``[T, N, 2]``, bool ``[T, N]``), checked.

    ``track_visibility`` may be ``[T, N]``, ``[T, 1]`` (core ``WanMoveTracksFromCoords`` with a track_mask:
    one flag per frame for every track) or missing (all visible, as ``WanMoveTrackToVideo`` assumes).
    """
    if not isinstance(tracks, Mapping) or "track_path" not in tracks:
        raise TTMInputError("tracks", f"expected TRACKS (a dict with track_path and track_visibility), got "
                            f"{type(tracks).__name__}", "connect a TRACKS output, e.g. core WanMoveTracksFromCoords")
    path = tracks["track_path"]
    path = path.detach().cpu().to(torch.float64).numpy() if isinstance(path, torch.Tensor) else np.asarray(path, float)
    if path.ndim != 3 or path.shape[-1] != 2:
        raise TTMInputError("tracks", f"track_path must be [frames, tracks, 2], got {tuple(path.shape)}",
                            "pass core's TRACKS dict unchanged")
    visibility = tracks.get("track_visibility")
    if visibility is None:
        vis = np.ones(path.shape[:2], dtype=bool)
    else:
        vis = visibility.detach().cpu().numpy() if isinstance(visibility, torch.Tensor) else np.asarray(visibility)
        vis = vis.astype(bool)
        if vis.shape == (path.shape[0], 1):
            vis = np.repeat(vis, path.shape[1], axis=1)
        if vis.shape != path.shape[:2]:
            raise TTMInputError("tracks", f"track_visibility is {tuple(vis.shape)} but track_path is "
                                f"{tuple(path.shape)}", "give one visibility flag per frame and track ([T, N])")
    return path, vis


def tracks_from_points(value: object, what: str = "track_json") -> tuple[np.ndarray, np.ndarray]:
    """ATI track JSON or KJNodes coordinates -> (float64 ``[T, N, 2]``, bool ``[T, N]``).

    One point per frame per track. Tracks shorter than the longest are invisible after their end (as ATI's
    ``pad_pts`` pads them with invisible points) and keep their last position.
    """
    groups = parse_spline_points(value, what)
    length = max(len(g) for g in groups)
    path = np.zeros((length, len(groups), 2), dtype=np.float64)
    vis = np.zeros((length, len(groups)), dtype=bool)
    for n, group in enumerate(groups):
        points = np.asarray(group, dtype=np.float64)
        path[:len(group), n] = points
        path[len(group):, n] = points[-1]
        vis[:len(group), n] = True
    return path, vis


def _check_track_values(path: np.ndarray, vis: np.ndarray, size: tuple[int, int], what: str) -> None:
    frames, count = path.shape[:2]
    if frames == 0 or count == 0:
        raise TTMInputError(what, f"the tracks are empty ({frames} frames, {count} tracks)",
                            "give at least one track with at least one point")
    bad = ~np.isfinite(path).all(-1)
    if bad.any():
        t, n = (int(v) for v in np.argwhere(bad)[0])
        raise TTMInputError(what, f"track {n} has a NaN or infinite point at frame {t} "
                            f"({int(bad.sum())} such points)", "give finite pixel coordinates for every point")
    height, width = size
    if width > 8 and height > 8 and np.abs(path).max() <= 1.0:
        raise TTMInputError(what, "every coordinate is within 0..1: the tracks look normalized",
                            f"give pixel coordinates of the {width}x{height} video (multiply x by the width and "
                            "y by the height)")
    far = vis & ((path[..., 0] < -width) | (path[..., 0] > 2 * width)
                 | (path[..., 1] < -height) | (path[..., 1] > 2 * height))
    if far.any():
        t, n = (int(v) for v in np.argwhere(far)[0])
        x, y = path[t, n]
        raise TTMInputError(what, f"track {n} is at ({x:.1f}, {y:.1f}) at frame {t}, more than a frame outside "
                            f"the {width}x{height} video the tracks are read in",
                            "set track_width and track_height to the size the tracks were made for")


def _similarity_lsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping src -> dst, ``[2, 3]``."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var = (a ** 2).sum()
    if var <= 1e-12:
        out = IDENTITY.numpy().copy()
        out[:, 2] = mu_d - mu_s
        return out
    # complex-number form: dst ~ z * src with z = s e^{i theta}
    za, zb = a[:, 0] + 1j * a[:, 1], b[:, 0] + 1j * b[:, 1]
    z = (np.conj(za) * zb).sum() / var
    linear = np.array([[z.real, -z.imag], [z.imag, z.real]])
    return np.concatenate([linear, (mu_d - linear @ mu_s)[:, None]], axis=1)


def fit_similarity(src: np.ndarray, dst: np.ndarray, threshold: float) -> np.ndarray:
    """Robust similarity src -> dst ``[2, 3]``: translation for one point, else RANSAC
    (cv2.estimateAffinePartial2D, seeded) refined by least squares on its inliers."""
    if len(src) == 1:
        out = IDENTITY.numpy().copy()
        out[:, 2] = dst[0] - src[0]
        return out
    if len(src) >= 3:
        try:
            import cv2  # a requirement of the pack (requirements.txt), imported when a fit needs it
        except ImportError as err:
            raise TTMInputError("tracks", f"OpenCV, a requirement of the pack, is not installed ({err})",
                                "pip install -r requirements.txt (opencv-python-headless) into ComfyUI's "
                                "Python") from err
        cv2.setRNGSeed(0)
        affine, inliers = cv2.estimateAffinePartial2D(src.astype(np.float64), dst.astype(np.float64),
                                                      method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                                      maxIters=2000, confidence=0.995, refineIters=10)
        if affine is not None and inliers is not None and int(inliers.sum()) >= 2:
            keep = inliers[:, 0].astype(bool)
            return _similarity_lsq(src[keep], dst[keep])
    return _similarity_lsq(src, dst)


def _crop_mapping(size: tuple[int, int], target: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, sx, sy): object-image pixel (x, y) -> target video pixel ((x - left) sx, (y - top) sy), the
    centre crop + resize core Wan nodes apply to the start image (comfy.utils.common_upscale 'center')."""
    top, left, crop_h, crop_w = center_crop_box(size, target)
    return left, top, target[1] / crop_w, target[0] / crop_h


def _resample_tracks(path: np.ndarray, vis: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Linear resampling of tracks in time onto ``frames`` frames (the first and last points kept)."""
    length = path.shape[0]
    if frames == length:
        return path, vis
    position = np.linspace(0.0, length - 1, frames) if frames > 1 else np.zeros(1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, length - 1)
    w = (position - low)[:, None, None]
    out = path[low] * (1.0 - w) + path[high] * w
    out_vis = vis[low] & np.where(w[..., 0] > 0, vis[high], True)
    return out, out_vis


def trajectory_from_tracks(objects: Objects, path: np.ndarray, visibility: np.ndarray, fps: float,
                           track_size: tuple[int, int] | None = None, num_frames: int = 0,
                           depth_order: Sequence[int] = (), settings: TrackFitSettings | None = None,
                           what: str = "tracks", progress: ProgressFn | None = None,
                           ati_points: bool = False) -> Trajectory:
    """Move ``objects`` with point tracks: each object follows the similarity fit of the tracks starting in it.

    A track belongs to the front-most object whose first-frame mask contains its frame-0 point (and must be
    visible at frame 0). Per frame, each object's similarity is fitted robustly (RANSAC) to its tracks
    visible in that frame; with none visible the object is hidden in that frame.

    Args:
        objects: the first-frame objects (at the image's size).
        path: float ``[T, N, 2]`` (x, y) in pixels of a ``track_size`` video.
        visibility: bool ``[T, N]``.
        fps: playback rate of the trajectory.
        track_size: (H, W) the tracks' pixels refer to; ``None`` = the objects' size. Mapped back through the
            centre crop core Wan nodes use (see ``_crop_mapping``).
        num_frames: 0 = one trajectory frame per track point; else the tracks are resampled linearly in time.
        depth_order: ids front to back; empty = the objects' order.
        settings: RANSAC threshold and what to do with objects no track starts in.
        what: the input name used in error messages.
        progress: called with (frame + 1, T) per rendered frame.
        ati_points: the tracks are ATI JSON (121 points each): with ``num_frames`` each frame takes the point
            core's ``process_tracks`` reads for it (``ati_point_frames``), not a linear resampling.
    """
    settings = settings or TrackFitSettings()
    size = objects.size
    source = (int(track_size[0]), int(track_size[1])) if track_size else size
    _check_track_values(path, visibility, source, what)
    if num_frames < 0:
        raise TTMInputError("num_frames", f"{num_frames} frames", "use 0 (as many as track points) or more")
    if ati_points and num_frames:
        rows = [int(np.searchsorted(ati_point_frames(num_frames, path.shape[0]), frame)) for frame in range(num_frames)]
        path, visibility = path[rows], visibility[rows]
    else:
        path, visibility = _resample_tracks(path, visibility, num_frames or path.shape[0])
    left, top, sx, sy = _crop_mapping(size, source)
    points = np.stack([path[..., 0] / sx + left, path[..., 1] / sy + top], axis=-1)  # object-image pixels
    order = _order(depth_order, objects.ids)
    index_of = {object_id: i for i, object_id in enumerate(objects.ids)}
    height, width = size
    start = points[0]
    inside = (start[:, 0] >= 0) & (start[:, 0] < width) & (start[:, 1] >= 0) & (start[:, 1] < height)
    owner = np.full(start.shape[0], -1)
    binary = objects.binary().numpy()
    cols = np.clip(np.floor(start[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.floor(start[:, 1]).astype(int), 0, height - 1)
    for object_id in reversed(order):  # the front-most object claims shared pixels last
        i = index_of[object_id]
        owner[inside & visibility[0] & binary[i, rows, cols]] = i
    frames = points.shape[0]
    affines = torch.empty(frames, objects.count, 2, 3, dtype=torch.float64)
    shown = torch.ones(frames, objects.count, dtype=torch.bool)
    for i, name in enumerate(objects.prompts.names):
        mine = np.flatnonzero(owner == i)
        if mine.size == 0 and not settings.still_without_tracks:
            raise TTMInputError(what, f"no track starts inside object {objects.ids[i]} ({name!r}) at frame 0",
                                "add tracks that start on the object, or enable still_without_tracks to keep "
                                "such objects still")
        last = IDENTITY.numpy()
        for t in range(frames):
            if mine.size == 0 or t == 0:
                affines[t, i] = IDENTITY
                continue
            seen = mine[visibility[t, mine]]
            if seen.size == 0:
                shown[t, i] = False
                affines[t, i] = torch.from_numpy(last)
                continue
            last = fit_similarity(start[seen], points[t, seen], settings.ransac_threshold)
            affines[t, i] = torch.from_numpy(last)
    affines[is_identity(affines, tol=1e-6)] = IDENTITY
    masks = objects.masks[:, None]
    labels = torch.zeros(frames, height, width, dtype=torch.uint8)
    for t in range(frames):
        moved = warp(masks, affines[t])[:, 0]
        for object_id in reversed(order):
            i = index_of[object_id]
            if bool(shown[t, i]):
                labels[t][moved[i] >= 0.5] = object_id
        if progress is not None:
            progress(t + 1, frames)
    return Trajectory(labels, objects, fps, order, transforms=affines)


# ------------------------------------------------------------------------------------------------ tracks out


@dataclass(frozen=True)
class TrackExportSettings:
    """How a trajectory becomes point tracks.

    Attributes:
        points_per_object: tracks sampled inside each object (spread out by farthest-point sampling).
        width, height: size of the video the tracks are for (core WanMoveTrackToVideo's width/height);
            0 = the trajectory's. The trajectory is mapped through the centre crop + resize core Wan nodes
            apply to the start image.
        num_frames: frames of the tracks (WanMoveTrackToVideo's length); 0 = the trajectory's. Frames are
            matched by nearest index (``fit.frame_map``).
        margin: pixels kept between sampled points and the object's edge (when the object is big enough).
    """

    points_per_object: int = 32
    width: int = 0
    height: int = 0
    num_frames: int = 0
    margin: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.points_per_object <= 4096:
            raise TTMInputError("points_per_object", f"{self.points_per_object}", "use 1..4096 points per object")
        for name in ("width", "height", "num_frames", "margin"):
            if getattr(self, name) < 0:
                raise TTMInputError(name, f"{getattr(self, name)} is negative", "use 0 for 'as the trajectory'")
        if (self.width == 0) != (self.height == 0):
            raise TTMInputError("width", f"width {self.width} with height {self.height}",
                                "set both to the video's size, or both to 0 for the trajectory's size")


def sample_points(mask: np.ndarray, count: int, margin: int = 2) -> np.ndarray:
    """float64 ``[k, 2]`` pixel-centre points (x, y) inside a bool ``[H, W]`` mask, k = min(count, pixels):
    farthest-point sampling from the pixel nearest the centroid, inside the mask eroded by ``margin`` when
    that leaves enough pixels. Deterministic."""
    region = mask
    if margin > 0:
        eroded = ndimage.binary_erosion(mask, iterations=margin)
        if eroded.sum() >= count:
            region = eroded
    ys, xs = np.nonzero(region)
    candidates = np.stack([xs, ys], axis=1).astype(np.float64) + 0.5
    if len(candidates) > 20000:  # a regular subset keeps the sampling O(count * 20k)
        candidates = candidates[:: math.ceil(len(candidates) / 20000)]
    chosen = [int(np.argmin(((candidates - candidates.mean(0)) ** 2).sum(1)))]
    distance = ((candidates - candidates[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(count, len(candidates)):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, ((candidates - candidates[nxt]) ** 2).sum(1))
    return candidates[chosen]


def tracks_from_trajectory(trajectory: Trajectory, settings: TrackExportSettings | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Point tracks of a trajectory, for core Wan-Move (``TRACKS``) and ATI.

    Points are sampled inside each object's visible first-frame region and moved with the object's per-frame
    affine (``trajectory.transforms`` when present, else estimated from the label video by
    ``poses.estimate_affines``). A point is visible in a frame when it lands inside its object's label
    region there (and inside the video); where an object is absent it keeps its last position, invisible.

    Returns:
        (track_path float32 ``[T, N, 2]`` in pixels of the target video, track_visibility bool ``[T, N]``,
        owner: the object id of each track).
    """
    settings = settings or TrackExportSettings()
    affines = trajectory.transforms if trajectory.transforms is not None else estimate_affines(trajectory)
    labels = trajectory.labels.numpy()
    height, width = trajectory.size
    binary = trajectory.objects.binary().numpy()
    starts, owners = [], []
    for i, object_id in enumerate(trajectory.objects.ids):
        region = binary[i] & (labels[0] == object_id)
        if not region.any():
            region = binary[i]
        points = sample_points(region, settings.points_per_object, settings.margin)
        starts.append(points)
        owners.extend([i] * len(points))
    start = np.concatenate(starts)
    owner = np.asarray(owners)
    frames = trajectory.num_frames
    path = np.empty((frames, len(start), 2))
    vis = np.zeros((frames, len(start)), dtype=bool)
    previous = start.copy()
    homogeneous = np.concatenate([start, np.ones((len(start), 1))], axis=1)
    ids = np.asarray(trajectory.objects.ids)
    for t in range(frames):
        a = affines[t].numpy()[owner]  # [N, 2, 3]
        moved = np.einsum("nij,nj->ni", a, homogeneous)
        known = np.isfinite(moved).all(1)
        path[t] = np.where(known[:, None], moved, previous)
        previous = path[t]
        cols, rows = np.floor(path[t, :, 0]).astype(int), np.floor(path[t, :, 1]).astype(int)
        inside = known & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
        vis[t, inside] = labels[t, rows[inside], cols[inside]] == ids[owner[inside]]
    target = (settings.height or height, settings.width or width)
    left, top, sx, sy = _crop_mapping((height, width), target)
    path = np.stack([(path[..., 0] - left) * sx, (path[..., 1] - top) * sy], axis=-1)
    vis &= (path[..., 0] >= 0) & (path[..., 0] < target[1]) & (path[..., 1] >= 0) & (path[..., 1] < target[0])
    if settings.num_frames:
        picked = frame_map(frames, settings.num_frames)
        path, vis = path[picked], vis[picked]
    owner_ids = [int(ids[i]) for i in owner]
    return torch.from_numpy(path.astype(np.float32)), torch.from_numpy(vis), owner_ids


def tracks_dict(path: torch.Tensor, visibility: torch.Tensor) -> dict[str, torch.Tensor]:
    """Core's TRACKS value, as comfy_extras/nodes_wanmove.py ``WanMoveTracksFromCoords.execute`` builds it."""
    return {"track_path": path.to(torch.float32), "track_visibility": visibility.to(torch.bool)}


def ati_point_frames(num_frames: int, length: int = ATI_LENGTH) -> np.ndarray:
    """float64 ``[length]``: the video frame each ATI point stands for, as core reads the points.

    comfy_extras/nodes_wan.py ``process_tracks(tracks, size, num_frames=length_of_video - 1)`` keeps point 0 for
    frame 0 and, for frame f >= 1, point ``1 + (1 + (f - 1) a) // b`` (``a = 120 / gcd(120, F)``,
    ``b = F / gcd(120, F)``, F = frames - 1: its ``repeat_interleave(..., b)[1::a]``). Those points get exactly
    their frame; points between them are interpolated in time, points after the last one hold it.
    """
    span = num_frames - 1
    if span <= 0:
        return np.zeros(length)
    g = math.gcd(length - 1, span)
    a, b = (length - 1) // g, span // g
    hit: dict[int, float] = {0: 0.0}
    for frame in range(1, span + 1):
        hit.setdefault(1 + (1 + (frame - 1) * a) // b, float(frame))
    points = sorted(hit)
    return np.interp(np.arange(length), points, [hit[i] for i in points])


def ati_json_from_tracks(path: torch.Tensor, length: int = ATI_LENGTH) -> str:
    """ATI track JSON (comfy_extras/nodes_wan.py ``WanTrackToVideo``): one list of ``{"x", "y"}`` per track,
    ``length`` (121) points placed so that core's ``process_tracks`` reads, for every video frame, the
    track's position at that frame (``ati_point_frames``). ATI's JSON has no visibility: every point is shown.

    Args:
        path: float ``[T, N, 2]`` (x, y) pixels, one row per video frame (T = the video's length).
    """
    track = path.to(torch.float64).numpy()
    times = ati_point_frames(track.shape[0], length)
    low = np.floor(times).astype(int)
    high = np.minimum(low + 1, track.shape[0] - 1)
    w = (times - low)[:, None, None]
    points = track[low] * (1.0 - w) + track[high] * w
    tracks = [[{"x": round(float(x), 2), "y": round(float(y), 2)} for x, y in points[:, n]]
              for n in range(points.shape[1])]
    return json.dumps(tracks, separators=(",", ":"))


# ------------------------------------------------------------------------------------------------ Time-to-Move


def motion_mask(trajectory: Trajectory) -> torch.Tensor:
    """float32 ``[T, H, W]`` in {0, 1}: the per-frame mask of Time-to-Move (where the dragged objects are in
    each frame: every object of the trajectory). Pairs with ``cut_and_drag.cut_and_drag``'s video."""
    return trajectory.foreground()
