"""Legal sizes and frame counts per family, and how image, trajectory and reference are fitted.

Every family has a pixel grid (one token = VAE ratio x patch pixels: CogVideoX and Wan 2.1 /
2.2-A14B 16 px, Wan 2.2 TI2V 32 px, I2VGen-XL 8 px), a frame rule (causal video VAEs: 1 + 4k
frames; I2VGen-XL: any count >= 2) and, for CogVideoX 1.0 I2V, one fixed size and length (its
learned positional embeddings were trained for 720 x 480 px, 49 frames). ``plan_frames`` turns
what the user has (the image, the trajectory's frames and fps) and asks for (0 = automatic) into a
legal ``FramePlan`` and says, in plain words, everything it changed:

* size: automatic = the image's size, rounded down to the grid (as the comfy backend and ComfyUI's
  own Wan nodes do); asked sizes are rounded down to the grid; fixed-size families use their size.
  When the aspect ratio changes, the image is centre-cropped to it first (never stretched).
* frames: automatic = the trajectory's frame count, rounded down to the rule (the same rounding
  diffusers' Wan pipeline applies); fixed-length families use their length. The trajectory and
  the reference video are resampled in time (nearest frame, the mapping of the token grids) and
  the fps is scaled so the clip keeps the trajectory's duration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from ...errors import TTMInputError
from ...motion.fit import frame_map

MAX_SIDE = 8192
"""Largest width or height accepted (far above what any supported model was trained at)."""


@dataclass(frozen=True)
class SizeRules:
    """The sizes and frame counts a loaded model can generate.

    Attributes:
        label: the family's name, for messages.
        multiple: (rows, columns) in pixels that height and width must be multiples of.
        fixed_size: (height, width) when only one size works, else None.
        fixed_frames: the only frame count that works, else None.
        temporal_ratio: frames per latent frame (4 for the causal video VAEs, 1 for UNets).
        causal: frames must be 1 + temporal_ratio * k.
        min_frames: the fewest frames.
    """

    label: str
    multiple: tuple[int, int]
    fixed_size: tuple[int, int] | None
    fixed_frames: int | None
    temporal_ratio: int
    causal: bool
    min_frames: int

    def __post_init__(self) -> None:
        if min(self.multiple) < 1 or self.temporal_ratio < 1 or self.min_frames < 1:
            raise ValueError(f"invalid size rules {self}")

    def legal_frames(self, frames: int) -> int:
        """``frames`` rounded down to the frame rule, at least ``min_frames``."""
        if self.fixed_frames is not None:
            return self.fixed_frames
        if self.causal:
            r = self.temporal_ratio
            frames = (max(frames, 1) - 1) // r * r + 1
            low = (self.min_frames - 1 + r - 1) // r * r + 1
            return max(frames, low)
        return max(frames, self.min_frames)

    def snap(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) rounded down to the pixel grid, at least one token each."""
        mh, mw = self.multiple
        return max(mh, height // mh * mh), max(mw, width // mw * mw)


@dataclass(frozen=True)
class FramePlan:
    """What is generated and how the user's image and trajectory map onto it.

    Attributes:
        height, width, num_frames: the generated video.
        fps: the generated video's frame rate (keeps the trajectory's duration).
        source_size: (H, W) of the image and trajectory.
        source_frames: frames of the trajectory.
        crop: (y0, x0, y1, x1) of the centred crop taken from the image and trajectory (end-exclusive).
        notes: every change made, in plain words (empty when nothing changed).
    """

    height: int
    width: int
    num_frames: int
    fps: float
    source_size: tuple[int, int]
    source_frames: int
    crop: tuple[int, int, int, int]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        y0, x0, y1, x1 = self.crop
        h, w = self.source_size
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"crop {self.crop} is outside {self.source_size}")
        if self.num_frames < 1 or self.height < 1 or self.width < 1 or not self.fps > 0:
            raise ValueError(f"invalid frame plan {self}")
        object.__setattr__(self, "notes", tuple(self.notes))

    def frame_sources(self) -> list[int]:
        """Trajectory frame shown by each generated frame: floor(f (T - 1) / (F - 1) + 1/2).

        The same nearest-frame mapping ``attention.grids.token_grid_from_labels`` uses, so the
        reference video, the token grid and the dual-clock masks agree frame by frame.
        """
        return frame_map(self.source_frames, self.num_frames)


def _centre_crop(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred (y0, x0, y1, x1) box of aspect ``aspect`` (= w / h) inside height x width."""
    if width / height > aspect:
        crop_w = max(1, min(width, round(height * aspect)))
        x0 = (width - crop_w) // 2
        return 0, x0, height, x0 + crop_w
    crop_h = max(1, min(height, round(width / aspect)))
    y0 = (height - crop_h) // 2
    return y0, 0, y0 + crop_h, width


def plan_frames(rules: SizeRules, source_size: tuple[int, int], source_frames: int, fps: float,
                width: int = 0, height: int = 0, num_frames: int = 0) -> FramePlan:
    """A legal frame plan (see the module docstring); 0 = automatic for width, height, num_frames.

    Raises:
        TTMInputError: for negative or absurd sizes and frame counts.
    """
    for name, value in (("width", width), ("height", height), ("num_frames", num_frames)):
        if value < 0 or value > (MAX_SIDE if name != "num_frames" else 100_000):
            raise TTMInputError(name, f"{value} is out of range", f"use 0 (automatic) or a positive {name}")
    if (width == 0) != (height == 0):
        raise TTMInputError("width" if width == 0 else "height", "only one of width and height was given",
                            "give both, or leave both at 0 for the automatic size")
    src_h, src_w = source_size
    notes: list[str] = []
    if rules.fixed_size is not None:
        out_h, out_w = rules.fixed_size
        if width and (height, width) != (out_h, out_w):
            notes.append(f"{rules.label} generates only {out_w}x{out_h}; the asked {width}x{height} was replaced")
        elif (src_h, src_w) != (out_h, out_w):
            notes.append(f"{rules.label} generates only {out_w}x{out_h}")
    elif width:
        out_h, out_w = rules.snap(height, width)
        if (out_h, out_w) != (height, width):
            notes.append(f"{width}x{height} was rounded down to {out_w}x{out_h} (multiples of "
                         f"{rules.multiple[1]}x{rules.multiple[0]} px for {rules.label})")
    else:
        out_h, out_w = rules.snap(src_h, src_w)
        if (out_h, out_w) != (src_h, src_w):
            notes.append(f"the {src_w}x{src_h} image is generated at {out_w}x{out_h} (multiples of "
                         f"{rules.multiple[1]}x{rules.multiple[0]} px for {rules.label})")
    crop = _centre_crop(src_h, src_w, out_w / out_h)
    y0, x0, y1, x1 = crop
    if (y1 - y0, x1 - x0) != (src_h, src_w):
        notes.append(f"the image and trajectory were centre-cropped to {x1 - x0}x{y1 - y0} px to keep the "
                     f"{out_w}:{out_h} aspect ratio")
    asked = num_frames or source_frames
    frames = rules.legal_frames(asked)
    if rules.fixed_frames is not None and asked != frames:
        notes.append(f"{rules.label} generates only {frames} frames")
    elif frames != asked:
        rule = f"1 + {rules.temporal_ratio}k" if rules.causal else f"at least {rules.min_frames}"
        notes.append(f"{asked} frames is not a legal length for {rules.label} ({rule}); {frames} frames are generated")
    out_fps = float(fps)
    if frames != source_frames:
        if source_frames > 1 and frames > 1:
            out_fps = fps * (frames - 1) / (source_frames - 1)
        notes.append(f"the {source_frames}-frame trajectory was resampled to {frames} frames"
                     + (f"; fps {fps:g} -> {out_fps:.4g} keeps its duration" if out_fps != fps else ""))
    return FramePlan(out_h, out_w, frames, out_fps, (src_h, src_w), source_frames, crop, tuple(notes))


def fit_frames(frames: torch.Tensor, plan: FramePlan, chunk: int = 8) -> torch.Tensor:
    """Crop and resize IMAGE-layout frames to the plan (bilinear with antialiasing), a few at a time.

    Args:
        frames: float ``[N, H, W, 3]`` at the plan's source size (N is not resampled here).
    Returns:
        float32 ``[N, height, width, 3]`` in 0..1 on the frames' device.
    """
    y0, x0, y1, x1 = plan.crop
    out = torch.empty(frames.shape[0], plan.height, plan.width, frames.shape[-1], dtype=torch.float32,
                      device=frames.device)
    for start in range(0, frames.shape[0], chunk):
        part = rearrange(frames[start:start + chunk, y0:y1, x0:x1].to(torch.float32), "n h w c -> n c h w")
        if part.shape[-2:] != (plan.height, plan.width):
            part = F.interpolate(part, size=(plan.height, plan.width), mode="bilinear", align_corners=False,
                                 antialias=True)
        out[start:start + chunk] = rearrange(part, "n c h w -> n h w c").clamp(0.0, 1.0)
    return out


def fit_labels(labels: torch.Tensor, plan: FramePlan) -> torch.Tensor:
    """uint8 ``[T, h, w]``: the trajectory's labels cropped like the image (resized later by area shares)."""
    y0, x0, y1, x1 = plan.crop
    return labels[:, y0:y1, x0:x1].contiguous()
