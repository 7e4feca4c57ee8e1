"""The trajectory in core's and the peers' formats: masks, SAM 3 track data, Wan-Move TRACKS, ATI JSON,
KJNodes coordinates, Time-to-Move inputs. Round trips on scenes whose motion is known exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ttm_core.errors import TTMInputError
from ttm_core.motion.cut_and_drag import cut_and_drag
from ttm_core.motion.formats import (
    ATI_LENGTH,
    TrackExportSettings,
    TrackFitSettings,
    ati_json_from_tracks,
    ati_point_frames,
    masks_from_trajectory,
    motion_mask,
    pack_sam3_masks,
    tracks_dict,
    tracks_from_dict,
    tracks_from_points,
    tracks_from_trajectory,
    trajectory_from_masks,
    trajectory_from_sam3,
    trajectory_from_tracks,
    unpack_sam3_masks,
)
from ttm_core.motion.paths import parse_paths
from ttm_core.motion.poses import mask_centroids
from ttm_core.motion.render import trajectory_from_paths
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory

H, W, T = 96, 128, 9


def scene() -> Objects:
    """A rectangle and a disc (elongated enough to show a rotation), apart from each other."""
    masks = torch.zeros(2, H, W)
    masks[0, 20:44, 14:54] = 1.0
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    masks[1] = (((xx - 92) ** 2 + (yy - 64) ** 2) <= 14 ** 2).to(torch.float32)
    prompts = Prompts("g", "m", (ObjectPrompt("box", "a box"), ObjectPrompt("coin", "a coin")))
    return Objects(prompts, masks)


MOTIONS: dict[str, dict[str, list[dict[str, float]]]] = {
    "translation": {"box": [{"frame": T - 1, "x": 60, "y": 50}], "coin": [{"frame": T - 1, "x": 80, "y": 70}]},
    "rotation": {"box": [{"frame": T - 1, "rotation": 40}], "coin": [{"frame": T - 1, "rotation": -30}]},
    "scaling": {"box": [{"frame": T - 1, "scale": 1.4}], "coin": [{"frame": T - 1, "scale": 0.6}]},
}


def moved(motion: str) -> Trajectory:
    objects = scene()
    spec = {"version": 1, "units": "pixels",
            "objects": {name: {"keyframes": keys} for name, keys in MOTIONS[motion].items()}}
    paths = parse_paths(spec, objects.prompts, objects.size, T, mask_centroids(objects.masks))
    return trajectory_from_paths(objects, paths, T, 16.0)


def mean_iou(a: Trajectory, b: Trajectory) -> float:
    ma, mb = a.object_masks(), b.object_masks()
    inter = (ma & mb).flatten(2).sum(-1).double()
    union = (ma | mb).flatten(2).sum(-1).double().clamp_min(1)
    return float((inter / union).mean())


# ------------------------------------------------------------------------------------------------ masks


def test_trajectory_to_masks_and_back_is_exact() -> None:
    trajectory = moved("translation")
    masks = masks_from_trajectory(trajectory)  # [L, T, H, W]
    sources = [(f"mask_{i + 1}", m) for i, m in enumerate(masks)]
    back = trajectory_from_masks(sources, trajectory.objects.prompts, fps=16.0, image_size=(H, W))
    assert torch.equal(back.labels, trajectory.labels)
    assert torch.equal(back.objects.binary(), trajectory.objects.binary())
    assert back.objects.prompts.names == ("box", "coin") and back.depth_order == (1, 2)
    # one batch, object after object, with object_count
    single = trajectory_from_masks([("masks", masks.flatten(0, 1))], object_count=2)
    assert torch.equal(single.labels, trajectory.labels)
    assert single.objects.prompts.names == ("object 1", "object 2")


def test_masks_depth_order_decides_overlaps() -> None:
    a = torch.zeros(2, 8, 8)
    a[:, 2:6, 2:6] = 1
    b = torch.zeros(2, 8, 8)
    b[:, 4:8, 4:8] = 1
    front = trajectory_from_masks([("masks", a), ("mask_2", b)])
    back = trajectory_from_masks([("masks", a), ("mask_2", b)], depth_order=(2, 1))
    assert int(front.labels[0, 5, 5]) == 1 and int(back.labels[0, 5, 5]) == 2


@pytest.mark.parametrize(("sources", "kwargs", "message"), [
    ([("masks", torch.ones(3, 8, 8)), ("mask_2", torch.ones(3, 8, 9))], {}, "mask_2: the masks are 9x8 but masks"),
    ([("masks", torch.ones(3, 8, 8))], {"image_size": (8, 10)}, "masks: the masks are 8x8 but the image is 10x8"),
    ([("masks", torch.ones(3, 8, 8)), ("mask_2", torch.ones(2, 8, 8))], {}, "mask_2: 2 frames but masks has 3"),
    ([("masks", torch.ones(3, 8, 8)), ("mask_2", torch.cat([torch.zeros(1, 8, 8), torch.ones(2, 8, 8)]))], {},
     "mask_2: the mask is empty at frame 0"),
    ([("masks", torch.ones(3, 8, 8))], {"prompts": Prompts("g", "m", (ObjectPrompt("a", "a"), ObjectPrompt("b", "b")))},
     "prompts: the prompts name 2 objects (a, b) but 1 mask batches were given"),
    ([("masks", torch.ones(5, 8, 8))], {"object_count": 2}, "5 masks do not split into 2 objects"),
    ([("masks", torch.ones(4, 8, 8)), ("mask_2", torch.ones(4, 8, 8))], {"object_count": 2},
     "object_count 2 splits one batch, but 2 mask inputs"),
])
def test_mask_errors(sources, kwargs, message: str) -> None:
    with pytest.raises(TTMInputError) as err:
        trajectory_from_masks(sources, **kwargs)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------------ SAM 3


def sam3_track_data(masks: torch.Tensor, orig_size: tuple[int, int]) -> dict:
    """SAM3_TRACK_DATA the way core builds it (comfy/ldm/sam3/tracker.py forward_video): per frame, mask logits
    at the model resolution packed by pack_masks (logit > 0), stacked [frames, objects, Hm, Wm/8];
    SAM3_VideoTrack adds orig_size. Core's packing is written out here literally, not imported from the pack."""
    logits = masks * 2.0 - 1.0  # > 0 inside
    shifts = torch.arange(8)
    packed = [(((m > 0).view(*m.shape[:-1], -1, 8)) * (1 << shifts)).sum(-1).byte() for m in logits]
    return {"packed_masks": torch.stack(packed, dim=0), "n_frames": masks.shape[0], "scores": [1.0] * masks.shape[1],
            "orig_size": orig_size}


def test_sam3_bits_unpack_exactly_as_core() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 2, 16, 24, generator=generator) > 0.5
    packed = sam3_track_data(masks.float(), (16, 24))["packed_masks"]
    assert packed.shape == (3, 2, 16, 3) and packed.dtype == torch.uint8
    assert torch.equal(unpack_sam3_masks(packed), masks)
    assert torch.equal(pack_sam3_masks(masks), packed)
    # bit i of byte j is pixel 8 j + i
    one = torch.zeros(1, 16, dtype=torch.bool)
    one[0, 10] = True
    assert pack_sam3_masks(one).tolist() == [[0, 4]]


def test_sam3_track_data_to_trajectory_keeps_indices() -> None:
    trajectory = moved("translation")
    # SAM 3 holds three objects at model resolution 2x ours; object 1 is found only later in the clip
    model_res = F.interpolate(masks_from_trajectory(trajectory).permute(1, 0, 2, 3), scale_factor=2.0,
                              mode="nearest")  # [T, 2, 2H, 2W]
    late = torch.zeros(T, 1, 2 * H, 2 * W)
    late[3:, 0, :10, :10] = 1
    data = sam3_track_data(torch.cat([model_res[:, :1], late, model_res[:, 1:]], dim=1), (H, W))
    result = trajectory_from_sam3(data, "0, 2", fps=16.0)
    assert result.objects.ids == (1, 3)
    assert result.objects.prompts.names == ("sam3 object 0", "sam3 object 2")
    expected = trajectory.labels.clone()
    expected[expected == 2] = 3
    assert torch.equal(result.labels, expected)
    with pytest.raises(TTMInputError, match=r"SAM 3 object\(s\) \[1\] are not in frame 0.*in frame 0: \[0, 2\]"):
        trajectory_from_sam3(data)
    with pytest.raises(TTMInputError, match="'5' is not an object index of this track data"):
        trajectory_from_sam3(data, "0, 5")
    with pytest.raises(TTMInputError, match="SAM 3 tracked no object"):
        trajectory_from_sam3({"packed_masks": None, "n_frames": 4, "scores": [], "orig_size": (H, W)})
    with pytest.raises(TTMInputError, match="expected SAM3_TRACK_DATA"):
        trajectory_from_sam3({"masks": 1})


# ------------------------------------------------------------------------------------------------ tracks


@pytest.mark.parametrize("motion", sorted(MOTIONS))
@pytest.mark.parametrize("with_transforms", [True, False])
def test_trajectory_to_tracks_and_back(motion: str, with_transforms: bool, record_property) -> None:
    trajectory = moved(motion)
    if not with_transforms:  # a tracked trajectory: the motion is estimated from the labels
        trajectory = Trajectory(trajectory.labels, trajectory.objects, trajectory.fps)
    path, visibility, owners = tracks_from_trajectory(trajectory, TrackExportSettings(points_per_object=24))
    assert path.dtype == torch.float32 and path.shape == (T, 48, 2) and visibility.dtype == torch.bool
    assert owners == [1] * 24 + [2] * 24
    tracks = tracks_dict(path, visibility)
    back = trajectory_from_tracks(trajectory.objects, *tracks_from_dict(tracks), fps=16.0)
    score = mean_iou(trajectory, back)
    record_property("mean_iou", score)
    assert score >= 0.9, score
    assert torch.equal(back.labels[0], trajectory.labels[0])


def test_tracks_for_another_video_size_and_length_map_back() -> None:
    """Tracks for an 832x480-like video (other aspect: centre crop, as core crops the start image) and another
    frame count come back onto the trajectory's pixels."""
    trajectory = moved("translation")
    settings = TrackExportSettings(points_per_object=16, width=160, height=96, num_frames=5)
    path, visibility, _ = tracks_from_trajectory(trajectory, settings)
    assert path.shape == (5, 32, 2)
    back = trajectory_from_tracks(trajectory.objects, path.numpy().astype(np.float64), visibility.numpy(), 16.0,
                                  track_size=(96, 160), num_frames=T)
    assert back.num_frames == T
    assert mean_iou(trajectory, back) >= 0.85


def test_robust_fit_ignores_a_wrong_track() -> None:
    trajectory = moved("translation")
    path, visibility, _ = tracks_from_trajectory(trajectory, TrackExportSettings(points_per_object=12))
    path = path.clone()
    path[1:, 0] += torch.tensor([30.0, -25.0])  # one of the box's tracks jumps away
    back = trajectory_from_tracks(trajectory.objects, path.double().numpy(), visibility.numpy(), 16.0)
    assert mean_iou(trajectory, back) >= 0.95


def test_ati_json_and_kjnodes_coordinates_in_and_out() -> None:
    trajectory = moved("translation")
    path, _, _ = tracks_from_trajectory(trajectory, TrackExportSettings(points_per_object=8))
    text = ati_json_from_tracks(path)
    parsed = json.loads(text)
    assert len(parsed) == 16 and all(len(track) == ATI_LENGTH for track in parsed)
    assert parsed[0][0] == {"x": round(float(path[0, 0, 0]), 2), "y": round(float(path[0, 0, 1]), 2)}
    assert parsed[0][-1] == {"x": round(float(path[-1, 0, 0]), 2), "y": round(float(path[-1, 0, 1]), 2)}
    points, seen = tracks_from_points(text)
    assert points.shape == (ATI_LENGTH, 16, 2) and seen.all()
    back = trajectory_from_tracks(trajectory.objects, points, seen, 16.0, num_frames=T, ati_points=True)
    assert mean_iou(trajectory, back) >= 0.9
    # Each frame reads the point core's process_tracks reads for it, which holds that frame's position.
    rows = [int(np.searchsorted(ati_point_frames(T), f)) for f in range(T)]
    assert np.allclose(points[rows], path.double().numpy(), atol=0.006)
    # KJNodes' single-quoted coord_str: one spline moves the box; the coin stays still on request
    spline = str([{"x": 34 + 3 * t, "y": 32 + t} for t in range(T)])
    points, seen = tracks_from_points(spline, "coordinates")
    back = trajectory_from_tracks(trajectory.objects, points, seen, 16.0,
                                  settings=TrackFitSettings(still_without_tracks=True), what="coordinates")
    assert back.transforms is not None
    assert torch.equal(back.transforms[-1, 0, :, 2], torch.tensor([24.0, 8.0], dtype=torch.float64))
    assert torch.equal(back.labels[-1] == 2, back.labels[0] == 2)


@pytest.mark.parametrize(("path", "visibility", "message"), [
    (np.zeros((0, 3, 2)), np.zeros((0, 3), bool), "tracks: the tracks are empty (0 frames, 3 tracks)"),
    (np.full((4, 2, 2), 30.0), np.ones((4, 2), bool), "no track starts inside object 2 ('coin')"),
    (np.where(np.arange(8).reshape(4, 1, 2) == 5, np.nan, 30.0), np.ones((4, 1), bool),
     "track 0 has a NaN or infinite point at frame 2"),
    (np.full((4, 1, 2), 0.5), np.ones((4, 1), bool), "every coordinate is within 0..1: the tracks look normalized"),
    (np.array([[[30.0, 30.0]], [[900.0, 30.0]]]), np.ones((2, 1), bool),
     "track 0 is at (900.0, 30.0) at frame 1, more than a frame outside the 128x96 video"),
])
def test_track_errors(path: np.ndarray, visibility: np.ndarray, message: str) -> None:
    with pytest.raises(TTMInputError) as err:
        trajectory_from_tracks(scene(), path, visibility, 16.0)
    assert message in str(err.value)


def test_track_dict_and_json_errors() -> None:
    with pytest.raises(TTMInputError, match="expected TRACKS"):
        tracks_from_dict({"path": 1})
    with pytest.raises(TTMInputError, match=r"track_path must be \[frames, tracks, 2\]"):
        tracks_from_dict({"track_path": torch.zeros(4, 3)})
    with pytest.raises(TTMInputError, match=r"track_visibility is \(4, 2\) but track_path is \(4, 3, 2\)"):
        tracks_from_dict({"track_path": torch.zeros(4, 3, 2), "track_visibility": torch.ones(4, 2, dtype=torch.bool)})
    _, vis = tracks_from_dict({"track_path": torch.zeros(4, 3, 2), "track_visibility": torch.ones(4, 1) > 0})
    assert vis.shape == (4, 3)  # core WanMoveTracksFromCoords with a track_mask gives [T, 1]
    with pytest.raises(TTMInputError, match="track_json: not valid JSON"):
        tracks_from_points("[{x: 1}")
    with pytest.raises(TTMInputError, match="ransac_threshold: 0 is not a positive number"):
        TrackFitSettings(ransac_threshold=0)


# ------------------------------------------------------------------------------------------------ Time-to-Move


def test_time_to_move_inputs() -> None:
    trajectory = moved("translation")
    image = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(1))
    video = cut_and_drag(image, trajectory)
    mask = motion_mask(trajectory)
    assert video.shape == (T, H, W, 3) and mask.shape == (T, H, W)
    assert torch.equal(mask, (trajectory.labels > 0).float())
    assert torch.allclose(video[0], image, atol=1e-6)


@pytest.mark.parametrize("size, target, box", [
    ((500, 1000), (480, 832), (0, 67, 500, 866)),  # core: round((1000 - 1000 * (832/480) / 2) / 2)
    ((288, 384), (64, 64), (0, 48, 288, 288)),
    ((288, 384), (480, 720), (16, 0, 256, 384)),
    ((480, 640), (480, 640), (0, 0, 480, 640)),
    ((1080, 1920), (480, 832), (0, 24, 1080, 1872)),
])
def test_center_crop_is_comfyuis_start_image_crop(size, target, box) -> None:
    """The crop ComfyUI's common_upscale(crop="center") makes of a start image: margin rounded, both sides equal
    (a box one pixel off would put every TRACKS point and mask one pixel off the image)."""
    from ttm_core.motion.fit import center_crop_box

    assert center_crop_box(size, target) == box
