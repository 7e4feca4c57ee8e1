"""The model-free cut-and-drag animation (``warp`` backend of Motion-to-Video).

Every object's pixels are moved along the trajectory and composited back to front with
soft edges over a background whose revealed parts are filled by inpainting. This is the
Time-to-Move style reference video that the training-free diffusion backend denoises from
("dual-clock"), so it is a plain function of (image, trajectory).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ..errors import TTMInputError
from ..types import ProgressFn, Trajectory
from .poses import estimate_affines, is_identity
from .render import CHUNK, Box, affine_grid, clip_box, integer_shifts, support_box


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with edge replication; sigma 0 = identity."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3.0 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    padded = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    padded = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Square dilation of float ``[N, 1, H, W]`` masks by ``radius`` pixels."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def push_pull_fill(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown pixels smoothly from known ones (push-pull, Gortler et al. 1996).

    Known pixels are averaged down an image pyramid until every coarse pixel has support,
    then the pyramid is pulled back up, each level keeping what it knows and taking the rest
    from the level below. Exact where ``known`` is 1; O(H W) time and memory.

    Args:
        values: float ``[C, H, W]``.
        known: float ``[H, W]`` in 0..1 (1 = keep this pixel).
    Returns:
        float ``[C, H, W]``; mid-grey if nothing is known.
    """
    weight = known.to(values.dtype)[None, None]
    premultiplied = values[None] * weight
    levels = [(premultiplied, weight)]
    while not bool((weight > 0).all()) and max(weight.shape[-2:]) > 1:
        premultiplied = F.avg_pool2d(premultiplied, 2, ceil_mode=True)
        weight = F.avg_pool2d(weight, 2, ceil_mode=True)
        levels.append((premultiplied, weight))
    coarse_p, coarse_w = levels[-1]
    filled = torch.where(coarse_w > 0, coarse_p / coarse_w.clamp_min(1e-12), torch.full_like(coarse_p, 0.5))
    for level_p, level_w in reversed(levels[:-1]):
        up = F.interpolate(filled, size=level_p.shape[-2:], mode="bilinear", align_corners=False)
        color = level_p / level_w.clamp_min(1e-12)
        alpha = level_w.clamp(0.0, 1.0)
        filled = color * alpha + up * (1.0 - alpha)
    return filled[0]


def push_pull_fill_many(values: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``push_pull_fill`` of one image for several known-masks at once: ``[L, C, H, W]``, each equal to
    ``push_pull_fill(values, known[l])`` (each mask's pyramid stops at its own depth), in one pass of
    batched pooling and upsampling instead of L.

    Args:
        values: float ``[C, H, W]``.
        known: float ``[L, H, W]`` in 0..1.
    """
    weight = known.to(values.dtype)[:, None]  # [L, 1, H, W]
    premultiplied = values[None] * weight
    levels = [(premultiplied, weight)]
    # depth[l]: the level where mask l's pyramid stops (every pixel supported, or 1x1).
    depth = torch.full((known.shape[0],), -1, dtype=torch.int64)
    while True:
        done = (weight > 0).flatten(1).all(1).cpu() | (max(weight.shape[-2:]) <= 1)
        depth[(depth < 0) & done] = len(levels) - 1
        if bool((depth >= 0).all()):
            break
        premultiplied = F.avg_pool2d(premultiplied, 2, ceil_mode=True)
        weight = F.avg_pool2d(weight, 2, ceil_mode=True)
        levels.append((premultiplied, weight))
    filled = None
    for index in range(len(levels) - 1, -1, -1):
        level_p, level_w = levels[index]
        coarsest = torch.where(level_w > 0, level_p / level_w.clamp_min(1e-12), torch.full_like(level_p, 0.5))
        if filled is None:
            filled = coarsest
        else:
            up = F.interpolate(filled, size=level_p.shape[-2:], mode="bilinear", align_corners=False)
            color = level_p / level_w.clamp_min(1e-12)
            alpha = level_w.clamp(0.0, 1.0)
            pulled = color * alpha + up * (1.0 - alpha)
            starts_here = (depth == index).to(level_p.device)[:, None, None, None]
            filled = torch.where(starts_here, coarsest, pulled)
    assert filled is not None
    return filled


def check_first_frame(image: torch.Tensor, trajectory: Trajectory) -> None:
    """Raise TTMInputError unless ``image`` is one RGB image ``[H, W, 3]`` of the trajectory's size."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise TTMInputError("image", f"expected one RGB image [H, W, 3], got {tuple(image.shape)}",
                            "connect a single image (the first frame)")
    if tuple(image.shape[:2]) != trajectory.size:
        raise TTMInputError("image", f"the image is {image.shape[1]}x{image.shape[0]} (WxH) but the trajectory is "
                            f"{trajectory.size[1]}x{trajectory.size[0]}",
                            "use the image the objects were segmented on, or resize it to the trajectory's size")


def cut_and_drag(image: torch.Tensor, trajectory: Trajectory, feather: float = 1.0,
                 device: torch.device | str | None = None, progress: ProgressFn | None = None,
                 chunk: int = CHUNK) -> torch.Tensor:
    """Render the cut-and-drag video: objects moved along the trajectory, holes inpainted.

    Per frame t (back to front in the trajectory's depth order):
        out = base_t;  out = out * (1 - a_l) + C_l,t * a_l
    where base_t is the image with the source regions of the objects displaced at t filled
    by push-pull inpainting, a_l = blur(labels_t == l, feather) is object l's soft visible
    region, and C_l,t is the object's colour layer moved by its affine (the image itself
    when the object has not moved, so an unmoved frame reproduces the image exactly).

    Work is done only where objects are: the inpainting once per clip, each a_l and C_l,t on
    the box of object l's visible pixels (widened by the blur), C_l,t a copy for whole-pixel
    translations and ``F.grid_sample`` of that box otherwise, written into a preallocated
    output chunk by chunk. The result equals the whole-frame formula above.

    Args:
        image: float ``[H, W, 3]`` in 0..1, the first frame x(0).
        trajectory: the mask trajectory at the image's size.
        feather: soft-edge radius (Gaussian sigma) in pixels; 0 = hard edges.
        device: where to compute; default the image's device.
        progress: called with (frame + 1, T) for every frame after each chunk; may raise to cancel.
        chunk: frames per chunk.
    Returns:
        float32 ``[T, H, W, 3]`` in 0..1 (on the CPU).
    """
    check_first_frame(image, trajectory)
    if not (math.isfinite(feather) and feather >= 0):
        raise TTMInputError("feather", f"feather {feather} is not a non-negative number", "use e.g. 1.0")
    device = image.device if device is None else torch.device(device)
    objects = trajectory.objects
    affines = trajectory.transforms if trajectory.transforms is not None else estimate_affines(trajectory)
    affines = affines.to(torch.float64)
    finite = torch.isfinite(affines).flatten(-2).all(-1)  # [T, L]
    identity = is_identity(torch.nan_to_num(affines, nan=2.0))  # [T, L]
    copies = integer_shifts(torch.nan_to_num(affines, nan=0.5)) & finite
    moving = ~identity.all(0)  # [L]
    num_frames = trajectory.num_frames
    height, width = trajectory.size

    picture = image.to(device=device, dtype=torch.float32).clamp(0.0, 1.0)  # [H, W, 3]
    planar = rearrange(picture, "h w c -> c h w")
    source = objects.binary().to(device=device, dtype=torch.float32)  # [L, H, W]
    holes = [_hole(source[i], feather) if bool(moving[i]) else None for i in range(objects.count)]
    if bool(moving.any()):
        hole_union = torch.zeros(height, width, device=device)
        for hole in holes:
            if hole is not None:
                _max_into(hole_union, hole)
        background = rearrange(push_pull_fill(planar, (hole_union <= 0).to(planar.dtype)), "c h w -> h w c")
    else:
        background = picture
    # Object colours extended outward from the mask so resampled edges never pick up the
    # surroundings the object was cut from.
    movers = [i for i in range(objects.count) if bool(moving[i])]
    layers = dict(zip(movers, push_pull_fill_many(planar, source[movers]))) if movers else {}

    index_of = {object_id: i for i, object_id in enumerate(objects.ids)}
    back_to_front = [index_of[i] for i in reversed(trajectory.depth_order)]
    reach = math.ceil(3.0 * feather) if feather > 0 else 0  # gaussian_blur's radius: how far alpha spreads
    bases: dict[tuple[int, ...], torch.Tensor] = {}
    video = torch.empty(num_frames, height, width, 3, dtype=torch.float32)
    for start in range(0, num_frames, chunk):
        stop = min(num_frames, start + chunk)
        out = video[start:stop] if device.type == "cpu" else torch.empty(stop - start, height, width, 3, device=device)
        labels = trajectory.labels[start:stop]
        boxes = label_boxes(labels, objects.ids)  # [n, L, 4] on the CPU
        labels = labels.to(device)
        sets = [tuple(i for i in range(objects.count) if not bool(identity[t, i])) for t in range(start, stop)]
        for displaced in dict.fromkeys(sets):
            frames = [k for k, d in enumerate(sets) if d == displaced]
            base = _base(bases, displaced, picture, background, holes)
            if len(frames) == stop - start:
                out.copy_(base.expand_as(out))
            else:
                out[frames] = base
        for i in back_to_front:
            _composite(out, labels, boxes[:, i], start, objects.ids[i], feather, reach, picture, layers.get(i),
                       affines[start:stop, i], identity[start:stop, i], copies[start:stop, i])
        if device.type != "cpu":
            video[start:stop].copy_(out)
        if progress is not None:
            for t in range(start, stop):
                progress(t + 1, num_frames)
    return video


def _composite(out: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, start: int, object_id: int,
               feather: float, reach: int, picture: torch.Tensor, layer: torch.Tensor | None, affines: torch.Tensor,
               identity: torch.Tensor, copies: torch.Tensor) -> None:
    """Draw one object over a chunk of frames in place: out = out * (1 - a) + C * a on its boxes.

    Args:
        out: float ``[n, H, W, 3]``, the chunk so far.
        labels: uint8 ``[n, H, W]``; boxes: int ``[n, 4]`` of the object's pixels (``label_boxes``).
        reach: the blur's radius; affines / identity / copies: the object's ``[n, ...]`` rows.
    All frames' boxes share one size (the largest, moved inside the image), so alpha is one blur and
    the colours of resampled frames one ``grid_sample``; a box's inner edges lie beyond the blur's
    reach of the object (zeros, as in the whole frame), and at the image's border it pads as before.
    """
    height, width = out.shape[1:3]
    present = [k for k in range(out.shape[0]) if int(boxes[k, 1]) > int(boxes[k, 0])]
    if not present:
        return
    wanted = [clip_box((int(boxes[k, 0]) - reach, int(boxes[k, 1]) + reach, int(boxes[k, 2]) - reach,
                        int(boxes[k, 3]) + reach), (height, width)) for k in present]
    box_h, box_w = max(y1 - y0 for y0, y1, _, _ in wanted), max(x1 - x0 for _, _, x0, x1 in wanted)
    origins = [(min(y0, height - box_h), min(x0, width - box_w)) for y0, _, x0, _ in wanted]
    visible = torch.stack([labels[k, oy:oy + box_h, ox:ox + box_w] for k, (oy, ox) in zip(present, origins)])
    alpha = (visible == object_id).to(torch.float32)[:, None]
    if feather > 0:
        alpha = gaussian_blur(alpha, feather)
    alpha = rearrange(alpha, "n 1 h w -> n h w 1")
    colors: list[torch.Tensor | None] = []
    resampled = []
    for j, (k, (oy, ox)) in enumerate(zip(present, origins)):
        if bool(identity[k]):
            colors.append(picture[oy:oy + box_h, ox:ox + box_w])
        elif bool(copies[k]):
            assert layer is not None
            dx, dy = (round(float(v)) for v in affines[k, :, 2])
            colors.append(_shifted(layer, (oy - dy, oy + box_h - dy, ox - dx, ox + box_w - dx)))
        else:
            colors.append(None)
            resampled.append(j)
    if resampled:
        assert layer is not None
        rows = [present[j] for j in resampled]
        grid = affine_grid(affines[rows], (height, width), torch.tensor([origins[j] for j in resampled]),
                           (box_h, box_w)).to(out.device)
        sampled = F.grid_sample(layer[None].expand(len(rows), -1, -1, -1), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        for j, color in zip(resampled, rearrange(sampled, "n c h w -> n h w c")):
            colors[j] = color
    for j, (k, (oy, ox)) in enumerate(zip(present, origins)):
        region = out[k, oy:oy + box_h, ox:ox + box_w]
        # The old whole-frame formula, not lerp_: the same float rounding, so 8-bit frames stay identical.
        region.copy_(region * (1.0 - alpha[j]) + colors[j] * alpha[j])  # type: ignore[operator]


def label_boxes(labels: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    """int64 ``[T, L, 4]`` (y0, y1, x0, x1): the box of each object's pixels in each frame of a uint8
    label video ``[T, H, W]``; (0, 0, 0, 0) where the object is absent.

    One pass for all objects: each label becomes a bit (its object's position), and the bits are
    OR-reduced along rows and columns (numpy), so the cost does not grow with the objects.
    """
    count = len(ids)
    lut = np.zeros(256, dtype=np.uint8 if count <= 8 else np.uint16)
    for position, object_id in enumerate(ids):
        lut[object_id] = 1 << position
    bits = lut[labels.cpu().numpy()]
    rows = np.bitwise_or.reduce(bits, axis=2)  # [T, H]
    cols = np.bitwise_or.reduce(bits, axis=1)  # [T, W]
    out = np.zeros((labels.shape[0], count, 4), dtype=np.int64)
    for position in range(count):
        bit = lut.dtype.type(1 << position)
        in_rows, in_cols = (rows & bit) != 0, (cols & bit) != 0
        present = in_rows.any(1)
        height, width = in_rows.shape[1], in_cols.shape[1]
        out[:, position, 0] = np.where(present, in_rows.argmax(1), 0)
        out[:, position, 1] = np.where(present, height - in_rows[:, ::-1].argmax(1), 0)
        out[:, position, 2] = np.where(present, in_cols.argmax(1), 0)
        out[:, position, 3] = np.where(present, width - in_cols[:, ::-1].argmax(1), 0)
    return torch.from_numpy(out)


def _hole(mask: torch.Tensor, feather: float) -> tuple[Box, torch.Tensor] | None:
    """An object's soft hole, blur(dilate(mask)), on the box where it is non-zero: (box, [h, w])."""
    box = support_box(mask > 0)
    if box is None:
        return None
    ring = math.ceil(2.0 * feather) + 1
    radius = max(1, math.ceil(3.0 * feather)) if feather > 0 else 0
    margin = ring + radius + 1
    size = (mask.shape[0], mask.shape[1])
    y0, y1, x0, x1 = clip_box((box[0] - margin, box[1] + margin, box[2] - margin, box[3] + margin), size)
    crop = mask[y0:y1, x0:x1][None, None]
    # The crop's inner borders lie beyond dilation and blur (zero there, so replicate padding pads
    # zeros as the whole frame would); where the crop meets the image border it pads as before.
    return (y0, y1, x0, x1), gaussian_blur(dilate(crop, ring), feather).clamp(0.0, 1.0)[0, 0]


def _max_into(canvas: torch.Tensor, hole: tuple[Box, torch.Tensor]) -> None:
    (y0, y1, x0, x1), values = hole
    torch.maximum(canvas[y0:y1, x0:x1], values, out=canvas[y0:y1, x0:x1])


def _base(cache: dict[tuple[int, ...], torch.Tensor], displaced: tuple[int, ...], picture: torch.Tensor,
          background: torch.Tensor, holes: list[tuple[Box, torch.Tensor] | None]) -> torch.Tensor:
    """The frame before any object is drawn: the picture with the holes of the ``displaced`` objects
    inpainted, ``[H, W, 3]``; one per set of displaced objects (a clip has few), kept in ``cache``."""
    if displaced not in cache:
        if len(cache) >= 8:
            cache.pop(next(iter(cache)))
        height, width = picture.shape[:2]
        hole = torch.zeros(height, width, device=picture.device)
        for i in displaced:
            if holes[i] is not None:
                _max_into(hole, holes[i])  # type: ignore[arg-type]
        cache[displaced] = picture * (1.0 - hole[..., None]) + background * hole[..., None] if displaced else picture
    return cache[displaced]


def _shifted(layer: torch.Tensor, box: Box) -> torch.Tensor:
    """``[h, w, 3]``: the planar ``layer`` [3, H, W] read at ``box`` (may reach outside; zeros there),
    what bilinear sampling gives for a whole-pixel shift."""
    y0, y1, x0, x1 = box
    height, width = layer.shape[-2:]
    cy0, cy1, cx0, cx1 = clip_box(box, (height, width))
    if cy0 == y0 and cy1 == y1 and cx0 == x0 and cx1 == x1:
        return rearrange(layer[:, y0:y1, x0:x1], "c h w -> h w c")
    out = torch.zeros(y1 - y0, x1 - x0, 3, device=layer.device, dtype=layer.dtype)
    if cy1 > cy0 and cx1 > cx0:
        out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = rearrange(layer[:, cy0:cy1, cx0:cx1], "c h w -> h w c")
    return out
