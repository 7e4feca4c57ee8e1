"""The label palette of the trained path: object ids as colours a video VAE can carry.

Both trained stages see the mask trajectory as an ordinary RGB video (Through-The-Mask, Sec. 3.1:
the colour-coded segmentation video): Stage 2 VAE-encodes it and concatenates it on the input
channels, Stage 1 generates it. The colours are therefore chosen for separation after a lossy VAE
round trip, not for looks (the previews use ``types.PALETTE``): object ``l`` is ``TRAIN_PALETTE[l-1]``,
the seven non-black corners of the RGB cube first (pairwise distance >= 255), then mid grey
(>= 221 from every corner and from black); the background is black.

``decode_exact`` inverts ``colorize``; ``decode_trajectory`` reads a GENERATED colour video (Stage 1's output after
the VAE decoder: blurred, tinted, noisy, fading) back into labels with a confidence per object per frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import TTMInputError

logger = logging.getLogger(__name__)

TRAIN_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 255, 255),
    (128, 128, 128),
)
"""RGB of object ids 1..8 (background 0 is black)."""
PALETTE_NAME = "rgb-corners-8"
"""Recorded in checkpoints: a checkpoint trained with another palette is refused."""


def palette_tensor(device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 ``[1 + len(TRAIN_PALETTE), 3]`` in 0..1; row 0 is the background."""
    rows = [(0, 0, 0), *TRAIN_PALETTE]
    return torch.tensor(rows, dtype=torch.float32, device=device) / 255.0


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """Label video -> colour-coded video.

    Args:
        labels: integer ``[T, H, W]``, 0 = background, 1..8 = objects.
    Returns:
        float32 ``[T, H, W, 3]`` in 0..1 on the labels' device.
    """
    if labels.ndim != 3 or labels.dtype.is_floating_point:
        raise TTMInputError("labels", f"expected an integer [T, H, W] label video, got {tuple(labels.shape)} "
                            f"{labels.dtype}", "pass a trajectory's labels")
    top = int(labels.max()) if labels.numel() else 0
    if top > len(TRAIN_PALETTE):
        raise TTMInputError("labels", f"object id {top} is beyond the {len(TRAIN_PALETTE)}-colour training palette",
                            f"use at most {len(TRAIN_PALETTE)} objects per clip")
    return palette_tensor(labels.device)[labels.long()]


def palette_labels(labels: torch.Tensor, object_ids: tuple[int, ...]) -> torch.Tensor:
    """A label video with arbitrary object ids -> palette order (object_ids[i] -> i + 1), uint8 ``[...]``;
    ids not listed become background."""
    if len(object_ids) > len(TRAIN_PALETTE):
        raise TTMInputError("objects", f"{len(object_ids)} objects but the training palette has "
                            f"{len(TRAIN_PALETTE)} colours", f"use at most {len(TRAIN_PALETTE)} objects")
    lookup = torch.zeros(256, dtype=torch.uint8, device=labels.device)
    for i, object_id in enumerate(object_ids):
        lookup[int(object_id)] = i + 1
    return lookup[labels.long()]


def decode_exact(video: torch.Tensor) -> torch.Tensor:
    """Colour-coded video -> label video by nearest palette colour (exact inverse of ``colorize``).

    Args:
        video: float ``[T, H, W, 3]`` in 0..1.
    Returns:
        uint8 ``[T, H, W]``.
    """
    palette = palette_tensor(video.device)
    distance = torch.cdist(video.reshape(-1, 3).float(), palette)
    return distance.argmin(dim=1).reshape(video.shape[:3]).to(torch.uint8)


# --- Decoding a GENERATED colour-coded video (Stage 1's output) ---------------------------------------------------
#
# A Stage-1 sample comes out of the base model's VAE decoder: colours are blurred at edges, tinted, noisy, and a
# vanishing object fades towards black rather than switching off. The decoder therefore (1) takes the nearest palette
# colour but keeps only the ids the first frame has (any other palette colour, and any colour too far from every
# palette entry, is background), (2) removes connected components too small to be an object, (3) scores each object
# per frame from how close its pixels are to its colour and how much of its frame-0 area it keeps, and (4) declares
# an object ABSENT in frames it scores below a threshold: its pixels become background, never another id.

DEFAULT_MIN_COMPONENT = 16
"""Pixels: smaller connected components of one id are VAE speckles, not objects (a 4 x 4 patch; a latent pixel of
an 8x-downsampling VAE is 64 px, so callers at full resolution may raise it)."""
DEFAULT_MAX_DISTANCE = 0.5
"""RGB distance (0..1 units) beyond which a pixel matches no candidate colour (background). Half the spacing of the
RGB-corner colours: a pixel half-way between an object's colour and black (a blurred edge) is still within reach, a
colour half-way between two objects' colours (orange between red and yellow) is at the limit, and other ids'
colours (>= 0.86 from every candidate) and muddy colours (olive (0.6, 0.6, 0) with red and green: 0.72) are out."""
DEFAULT_MIN_CONFIDENCE = 0.3
"""Objects scoring below this in a frame are absent there (a colour fade to ~70 % of the palette colour)."""
DEFAULT_FULL_AREA_RATIO = 0.25
"""An object keeping at least this fraction of its frame-0 area gets the full area score; below, the score falls
linearly to 0 (objects may legitimately shrink as they move away, so only a large loss counts)."""


@dataclass(frozen=True)
class DecodedLabels:
    """A generated colour-coded video read back as a label video.

    Attributes:
        labels: uint8 ``[T, H, W]``: 0 = background, else one of ``ids``.
        confidence: float32 ``[T, L]`` in 0..1, column ``l`` for object ``ids[l]``: colour score (1 - mean distance
            of the object's pixels to its palette colour / ``max_distance``) times area score (its area relative to
            frame 0, see ``DEFAULT_FULL_AREA_RATIO``); 0 where the object has no pixels.
        absent: bool ``[T, L]``: the object could not be read in that frame (confidence below the threshold); its
            pixels there are background in ``labels``.
        notes: one line per object and run of absent frames, e.g.
            ``"object 2 ('cat') absent in frames 14-20: confidence < 0.3 (lowest 0.05)"``.
        ids: the object ids of the columns of ``confidence`` / ``absent`` (the ``first_ids`` decoded with).
    """

    labels: torch.Tensor
    confidence: torch.Tensor
    absent: torch.Tensor
    notes: tuple[str, ...]
    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.labels.ndim != 3 or self.labels.dtype != torch.uint8:
            raise TTMInputError("labels", f"expected uint8 [T, H, W], got {tuple(self.labels.shape)} "
                                f"{self.labels.dtype}", "build DecodedLabels with decode_trajectory")
        shape = (self.labels.shape[0], len(self.ids))
        if tuple(self.confidence.shape) != shape or not self.confidence.dtype.is_floating_point:
            raise TTMInputError("confidence", f"expected float [T, L] = {shape}, got {tuple(self.confidence.shape)} "
                                f"{self.confidence.dtype}", "one column per object id")
        if self.confidence.numel() and not bool(((self.confidence >= 0) & (self.confidence <= 1)).all()):
            raise TTMInputError("confidence", "values outside 0..1", "clamp the confidences to 0..1")
        if tuple(self.absent.shape) != shape or self.absent.dtype != torch.bool:
            raise TTMInputError("absent", f"expected bool [T, L] = {shape}, got {tuple(self.absent.shape)} "
                                f"{self.absent.dtype}", "one column per object id")
        if not all(isinstance(n, str) for n in self.notes):
            raise TTMInputError("notes", "expected a tuple of strings", "pass one line per note")

    def present(self, object_id: int) -> torch.Tensor:
        """bool ``[T]``: frames in which object ``object_id`` was read (not absent)."""
        if object_id not in self.ids:
            raise TTMInputError("object_id", f"{object_id} is not one of the decoded ids {self.ids}",
                                "ask for an id of the first frame")
        return ~self.absent[:, self.ids.index(object_id)]


def _check_ids(first_ids: Sequence[int], names: Sequence[str]) -> tuple[int, ...]:
    ids = tuple(first_ids)
    size = len(TRAIN_PALETTE)
    if not ids:
        raise TTMInputError("first_ids", "no object ids given", "pass the ids present in the first frame, e.g. (1, 2)")
    if len(ids) > size:
        raise TTMInputError("first_ids", f"{len(ids)} objects but the training palette has {size} colours",
                            f"use at most {size} objects per clip")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= size]
    if bad:
        raise TTMInputError("first_ids", f"ids {bad} are not palette object ids 1..{size}",
                            f"pass the first frame's object ids, each in 1..{size} (0 is the background)")
    if len(set(ids)) != len(ids):
        raise TTMInputError("first_ids", f"repeated ids in {ids}", "list each object id once")
    if names and len(names) != len(ids):
        raise TTMInputError("names", f"{len(names)} names for {len(ids)} object ids",
                            "pass one name per id of first_ids, or none")
    return ids


def _check_video(video: torch.Tensor) -> torch.Tensor:
    if not isinstance(video, torch.Tensor):
        raise TTMInputError("video", f"expected a torch tensor, got {type(video).__name__}",
                            "pass torch.as_tensor(video)")
    if video.ndim != 4 or video.shape[-1] != 3:
        hint = ("it looks channels-first: einops.rearrange(video, 't c h w -> t h w c')"
                if video.ndim == 4 and video.shape[1] == 3 else "pass the decoded frames as [T, H, W, 3]")
        raise TTMInputError("video", f"expected a float [T, H, W, 3] video, got shape {tuple(video.shape)}", hint)
    if not video.dtype.is_floating_point:
        raise TTMInputError("video", f"expected float values in 0..1, got {video.dtype}",
                            "convert 8-bit frames with video.float() / 255")
    if 0 in video.shape:
        raise TTMInputError("video", f"empty video {tuple(video.shape)}", "pass at least one frame of 1 x 1 px")
    if not bool(torch.isfinite(video).all()):
        raise TTMInputError("video", "contains NaN or infinite values", "decode the latents again (check the dtype)")
    low, high = float(video.min()), float(video.max())
    if low < -0.1:  # a little over/undershoot is normal for a VAE decoder; [-1, 1] output is not
        raise TTMInputError("video", f"values go down to {low:.3f}, expected 0..1",
                            "a VAE decodes to [-1, 1]: pass (video + 1) / 2")
    if high > 1.1:
        raise TTMInputError("video", f"values go up to {high:.3f}, expected 0..1", "8-bit frames: divide by 255")
    return video.detach().float().clamp(0.0, 1.0).cpu()


def _runs(frames: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted frame indices as (first, last)."""
    runs: list[tuple[int, int]] = []
    for f in frames:
        if runs and f == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], f)
        else:
            runs.append((f, f))
    return runs


def decode_trajectory(video: torch.Tensor, first_ids: Sequence[int], *, names: Sequence[str] = (),
                      min_component: int = DEFAULT_MIN_COMPONENT, max_distance: float = DEFAULT_MAX_DISTANCE,
                      min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                      full_area_ratio: float = DEFAULT_FULL_AREA_RATIO) -> DecodedLabels:
    """Generated colour-coded video -> label video, with a confidence per object per frame.

    Args:
        video: float ``[T, H, W, 3]`` in 0..1 (a VAE's output mapped to 0..1; up to 0.1 of over/undershoot is
            clamped).
        first_ids: the objects' ids (those of the first frame's masks s(0)), each in 1..8; only these are read.
            Pixels nearest another palette colour, or farther than ``max_distance`` from every colour, are
            background.
        names: optional object names for the notes, one per id.
        min_component: connected components (8-connected) of one id smaller than this many pixels become
            background; 0 keeps all.
        max_distance: RGB distance (0..1 units, 0 < d <= sqrt(3)) beyond which a pixel matches no colour.
        min_confidence: objects scoring below this in a frame are absent there (all their pixels background).
        full_area_ratio: fraction of the frame-0 area at which the area score reaches 1 (in (0, 1]).
    Returns:
        ``DecodedLabels`` on the video's device: uint8 labels ``[T, H, W]``, float32 confidence and bool absent
        ``[T, len(first_ids)]``, notes for the frames an object could not be read in.
    """
    ids = _check_ids(first_ids, names)
    if isinstance(min_component, bool) or not isinstance(min_component, int) or min_component < 0:
        raise TTMInputError("min_component", f"expected a pixel count >= 0, got {min_component!r}",
                            f"use e.g. {DEFAULT_MIN_COMPONENT} (0 keeps every component)")
    if not 0.0 < max_distance <= 3 ** 0.5:
        raise TTMInputError("max_distance", f"{max_distance} is outside (0, 1.732]",
                            f"use e.g. {DEFAULT_MAX_DISTANCE} (RGB distance in 0..1 units)")
    if not 0.0 <= min_confidence <= 1.0:
        raise TTMInputError("min_confidence", f"{min_confidence} is outside 0..1", f"use e.g. {DEFAULT_MIN_CONFIDENCE}")
    if not 0.0 < full_area_ratio <= 1.0:
        raise TTMInputError("full_area_ratio", f"{full_area_ratio} is outside (0, 1]",
                            f"use e.g. {DEFAULT_FULL_AREA_RATIO}")
    device = video.device if isinstance(video, torch.Tensor) else torch.device("cpu")
    frames = _check_video(video)
    import cv2  # a requirement of the pack (requirements.txt), imported where components are needed

    count, height, width = frames.shape[:3]
    # Candidates: background and the first frame's ids only. Another id's colour is >= 0.86 from every candidate
    # (palette spacing), so beyond max_distance: it reads as background, never as a neighbouring id.
    candidates = palette_tensor()[[0, *ids]]
    keep = torch.tensor([0, *ids], dtype=torch.uint8)  # candidate row -> output label
    labels = torch.zeros(count, height, width, dtype=torch.uint8)
    distance_sum = torch.zeros(count, len(ids), dtype=torch.float64)
    area = torch.zeros(count, len(ids), dtype=torch.float64)
    for t in range(count):  # per frame: bounded memory (a [H*W, 9] distance table) at full resolution
        distance = torch.cdist(frames[t].reshape(-1, 3), candidates)
        nearest, index = distance.min(dim=1)
        label = keep[index]
        label[nearest > max_distance] = 0
        label_np = label.reshape(height, width).numpy()
        nearest_np = nearest.reshape(height, width).numpy()
        for col, object_id in enumerate(ids):
            mask = (label_np == object_id).astype(np.uint8)
            if min_component > 0 and mask.any():
                _, components, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
                small = stats[:, cv2.CC_STAT_AREA] < min_component
                small[0] = False  # component 0 is everything outside the mask
                speckle = small[components]
                label_np[speckle] = 0
                mask[speckle] = 0
            pixels = mask.astype(bool)
            area[t, col] = float(pixels.sum())
            distance_sum[t, col] = float(nearest_np[pixels].sum())
        labels[t] = torch.from_numpy(label_np)
    # Confidence = colour score x area score.
    mean_distance = distance_sum / area.clamp(min=1.0)
    colour = (1.0 - mean_distance / max_distance).clamp(0.0, 1.0)
    notes: list[str] = []
    # Area relative to frame 0; an object not readable in frame 0 is measured against its largest appearance.
    reference = torch.where(area[0] > 0, area[0], area.max(dim=0).values)
    ratio = area / reference.clamp(min=1.0)
    area_score = (ratio / full_area_ratio).clamp(0.0, 1.0)
    confidence = (colour * area_score).where(area > 0, torch.zeros_like(colour)).float()
    absent = confidence < min_confidence
    for col, object_id in enumerate(ids):
        gone = absent[:, col]
        if gone.any():
            labels[gone] = torch.where(labels[gone] == object_id, torch.zeros_like(labels[gone]), labels[gone])
        name = f"object {object_id}" + (f" ({names[col]!r})" if names else "")
        for first, last in _runs(torch.nonzero(gone).flatten().tolist()):
            span = f"frame {first}" if first == last else f"frames {first}-{last}"
            lowest = float(confidence[first:last + 1, col].min())
            reason = ("no pixels of its colour" if bool((area[first:last + 1, col] == 0).all())
                      else f"confidence < {min_confidence:g} (lowest {lowest:.2f})")
            notes.append(f"{name} absent in {span}: {reason}")
    for note in notes:
        logger.info("decode_trajectory: %s", note)
    return DecodedLabels(labels=labels.to(device), confidence=confidence.to(device), absent=absent.to(device),
                         notes=tuple(notes), ids=ids)


# --- Reading labels in a VAE's latent space ----------------------------------------------------------------------
#
# A VAE with random (or merely unfamiliar) weights cannot carry palette colours back to pixels, but it maps each solid
# palette colour to its own latent vector. Classifying every latent cell by its nearest colour latent therefore reads
# a latent video as labels at latent resolution with any VAE: what the overfit tests use to score a Stage-1 sample
# without decoding it.
def latent_palette(encode: Callable[[torch.Tensor], torch.Tensor], frames: int, size: tuple[int, int]
                   ) -> torch.Tensor:
    """One latent vector per palette colour and latent frame position.

    Encodes one solid video per colour (row 0 background black, row ``l`` = ``TRAIN_PALETTE[l - 1]``) and
    averages its latents over space. Kept per latent frame position because a causal video VAE (Wan,
    CogVideoX) encodes latent frame 0 from pixel frame 0 alone and the others from groups of frames, so
    the same colour has different latents there.

    Args:
        encode: float ``[F, H, W, 3]`` in 0..1 -> latents ``[1, C, F_lat, h, w]`` (e.g.
            ``lambda v: family.encode_reference(pipeline, v, device)``: the space the denoiser works in).
        frames: pixel frames ``F`` of the videos to read (the generated length).
        size: ``(H, W)`` in pixels.
    Returns:
        float32 ``[1 + len(TRAIN_PALETTE), C, F_lat]`` on the encoder's device.
    """
    if frames < 1 or min(size) < 1:
        raise TTMInputError("frames", f"{frames} frames of {size[1]}x{size[0]} px", "give a non-empty video size")
    rows = []
    for colour in palette_tensor():
        video = colour.view(1, 1, 1, 3).expand(frames, size[0], size[1], 3).contiguous()
        latents = encode(video)
        if latents.ndim != 5 or latents.shape[0] != 1:
            raise TTMInputError("encode", f"expected latents [1, C, F, h, w], got {tuple(latents.shape)}",
                                "return the VAE latents of one video")
        rows.append(latents[0].float().mean(dim=(-2, -1)))
    return torch.stack(rows)


def classify_latents(latents: torch.Tensor, palette: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Latent video -> label video at latent resolution, by the nearest colour latent.

    Every cell (latent frame, row, column) takes the label whose ``latent_palette`` vector at that latent
    frame position is nearest (Euclidean over channels), among background and ``ids`` only (as
    ``decode_trajectory`` reads only the first frame's ids).

    Args:
        latents: float ``[C, F_lat, h, w]`` or ``[1, C, F_lat, h, w]``, in the encoder's space.
        palette: ``latent_palette``'s ``[1 + len(TRAIN_PALETTE), C, F_lat]``.
        ids: object ids (1..len(TRAIN_PALETTE)) a cell may take besides background.
    Returns:
        uint8 ``[F_lat, h, w]``: 0 = background, else one of ``ids``.
    """
    if latents.ndim == 5 and latents.shape[0] == 1:
        latents = latents[0]
    if latents.ndim != 4 or palette.ndim != 3 or latents.shape[:2] != palette.shape[1:]:
        raise TTMInputError("latents", f"latents {tuple(latents.shape)} do not match the palette "
                            f"{tuple(palette.shape)} ([C, F_lat, h, w] against [K, C, F_lat])",
                            "build the palette with the same VAE and frame count")
    labels = sorted({0, *(int(i) for i in ids)})
    if labels[-1] >= palette.shape[0]:
        raise TTMInputError("ids", f"object id {labels[-1]} is beyond the {palette.shape[0] - 1}-colour palette",
                            f"use ids 1..{palette.shape[0] - 1}")
    rows = palette[labels].to(latents.device, torch.float32)  # [K', C, F]
    distance = (latents.float()[None] - rows[..., None, None]).square().sum(dim=1)  # [K', F, h, w]
    lookup = torch.tensor(labels, dtype=torch.uint8, device=latents.device)
    return lookup[distance.argmin(dim=0)]
