"""ttm_core.eval's metrics on inputs with known answers, and the tiny random-weight CLIP / I3D / ViCLIP
saved in the users' layouts and loaded by the users' loaders (tests/support/eval_models.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval_models import make_tiny_clip, make_tiny_i3d, make_tiny_viclip
from ttm_core.errors import TTMInputError
from ttm_core.eval.adherence import compare_labels, trajectory_adherence
from ttm_core.eval.clip_frame import clip_frame, load_clip
from ttm_core.eval.fvd import frechet_distance, fvd, load_i3d
from ttm_core.eval.motion import average_displacement
from ttm_core.eval.viclip import VICLIP_FILE, load_viclip, viclip_t, viclip_v
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory

H, W, T = 96, 128, 9
BOX = (40, 30, 20, 24)  # top, left, height, width of the object in frame 0


def texture(height: int, width: int, seed: int, base: float) -> torch.Tensor:
    """Smooth random colour texture float32 [H, W, 3] in 0..1 (coarse blobs plus grain for optical flow)."""
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(1, 3, height, width)
    for cell in (16, 4):
        coarse = torch.randn(1, 3, height // cell + 2, width // cell + 2, generator=g)
        total += F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return (base + 0.15 * total[0]).clamp(0, 1).permute(1, 2, 0).contiguous()


def scene(shifts: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured box over a textured background, moved by integer (dx, dy) per frame: (frames, labels)."""
    background = texture(H, W, 1, 0.35)
    patch = texture(BOX[2], BOX[3], 2, 0.7)
    frames = background[None].repeat(len(shifts), 1, 1, 1)
    labels = torch.zeros(len(shifts), H, W, dtype=torch.uint8)
    for t, (dx, dy) in enumerate(shifts):
        top, left = BOX[0] + dy, BOX[1] + dx
        frames[t, top:top + BOX[2], left:left + BOX[3]] = patch
        labels[t, top:top + BOX[2], left:left + BOX[3]] = 1
    return frames, labels


def trajectory_of(labels: torch.Tensor) -> Trajectory:
    objects = Objects(Prompts("a box", "the box slides", (ObjectPrompt("box", "a textured box"),)),
                      (labels[:1] == 1).to(torch.float32))
    return Trajectory(labels, objects, 8.0)


def test_a_shifted_object_gives_the_iou_and_centroid_error_the_shift_implies() -> None:
    # Intended: 2 px/frame to the right. Rendered: the same plus a drift of 1 px/frame downwards, so at frame t
    # the object is t px below its place: IoU = (h - t) / (h + t) for a box of height h, centroid error t px.
    _, intended = scene([(2 * t, 0) for t in range(T)])
    video, rendered = scene([(2 * t, t) for t in range(T)])
    trajectory = trajectory_of(intended)
    expected_iou = np.array([(BOX[2] - t) / (BOX[2] + t) for t in range(T)])

    exact = compare_labels(rendered, trajectory)  # the metric itself, on the true label video
    np.testing.assert_allclose(exact.iou[:, 0], expected_iou, atol=1e-12)
    np.testing.assert_allclose(exact.centroid_error[:, 0], np.arange(T), atol=1e-9)

    seen: list[tuple[int, int]] = []
    tracked = trajectory_adherence(video, trajectory, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (T, T)
    np.testing.assert_allclose(tracked.iou[:, 0], expected_iou, atol=0.05)
    np.testing.assert_allclose(tracked.centroid_error[:, 0], np.arange(T), atol=0.75)
    clip = tracked.per_clip()
    assert clip["frames"] == T
    assert clip["mean_iou"] == pytest.approx(expected_iou.mean(), abs=0.03)
    assert clip["mean_centroid_error_px"] == pytest.approx(np.arange(T).mean(), abs=0.5)
    assert clip["mean_centroid_error_share"] == pytest.approx(clip["mean_centroid_error_px"] / math.hypot(H, W))
    assert tracked.per_object()[0]["name"] == "box"


def test_a_video_that_follows_its_trajectory_scores_iou_near_one() -> None:
    video, labels = scene([(2 * t, t) for t in range(T)])
    result = trajectory_adherence(video, trajectory_of(labels))
    assert result.per_clip()["min_iou"] > 0.9
    assert result.per_clip()["max_centroid_error_px"] < 1.0


def test_adherence_refuses_a_video_of_another_length_before_tracking_or_fits_the_trajectory() -> None:
    video, labels = scene([(0, 0)] * 3)
    with pytest.raises(TTMInputError, match="video: the video has 2 frames, the trajectory 3"):
        trajectory_adherence(video[:2], trajectory_of(labels))
    # A trajectory twice the video's size and of 2T - 1 frames: fitted (nearest frames, resized) it is the video's.
    moving, truth = scene([(2 * t, t) for t in range(5)])
    big = torch.nn.functional.interpolate(truth[[0, 0, 1, 1, 2, 2, 3, 3, 4]][:, None].float(), scale_factor=2,
                                          mode="nearest")[:, 0].to(torch.uint8)
    fitted = trajectory_adherence(moving, trajectory_of(big), fit=True)
    assert fitted.iou.shape == (5, 1) and fitted.per_clip()["min_iou"] > 0.9


def test_average_displacement_of_a_known_translation() -> None:
    # A texture panned by (3, 4) px per frame: every pixel moves 5 px per frame.
    big = texture(H + 4 * 6, W + 3 * 6, 3, 0.5)
    video = torch.stack([big[4 * t:4 * t + H, 3 * t:3 * t + W] for t in range(6)])
    assert average_displacement(video) == pytest.approx(5.0, rel=0.1)
    assert average_displacement(video[:1].repeat(4, 1, 1, 1)) < 0.05


def test_identical_sets_give_fvd_zero_and_different_sets_more(tmp_path: Path) -> None:
    model = load_i3d(make_tiny_i3d(tmp_path / "i3d_torchscript.pt"))
    g = torch.Generator().manual_seed(0)
    videos = [torch.rand(8, 32, 40, 3, generator=g) for _ in range(3)]
    darker = [v * 0.5 for v in videos]
    same = fvd(model, videos, videos, num_frames=8)
    other = fvd(model, videos, darker, num_frames=8)
    assert (same.generated, same.reference, same.num_frames) == (3, 3, 8)
    assert same.fvd < 1e-6 * max(1.0, other.fvd)
    assert other.fvd > 0.1
    # The Frechet distance of Gaussians with the same covariance is the squared distance of the means.
    a = np.random.default_rng(0).normal(size=(50, 4))
    assert frechet_distance(a, a + 3.0) == pytest.approx(4 * 9.0, rel=1e-6)
    with pytest.raises(TTMInputError, match="generated: 1 video"):
        fvd(model, videos[:1], videos, num_frames=8)


def test_missing_weights_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TTMInputError, match=r"i3d: I3D TorchScript file .*i3d_torchscript.pt' does not exist"):
        load_i3d(tmp_path / "i3d_torchscript.pt")
    with pytest.raises(TTMInputError, match=rf"viclip: ViCLIP checkpoint .*{VICLIP_FILE}' does not exist"):
        load_viclip(tmp_path / VICLIP_FILE)
    (tmp_path / "clip").mkdir()
    with pytest.raises(TTMInputError, match=r"clip: .*clip/config.json is missing"):
        load_clip(tmp_path / "clip")


def test_a_shuffled_clip_has_lower_clipframe(tmp_path: Path) -> None:
    encoder = load_clip(make_tiny_clip(tmp_path / "clip"))
    video, _ = scene([(6 * t, 3 * t) for t in range(12)])
    shuffled = video[torch.tensor([0, 6, 11, 1, 7, 3, 10, 2, 8, 4, 9, 5])]
    ordered_score, shuffled_score = clip_frame(encoder, video), clip_frame(encoder, shuffled)
    assert -1.0 <= shuffled_score < ordered_score <= 1.0
    assert clip_frame(encoder, video[:1].repeat(3, 1, 1, 1)) == pytest.approx(1.0, abs=1e-5)


def test_tiny_viclip_loads_from_the_published_layout_and_scores(tmp_path: Path) -> None:
    model = load_viclip(make_tiny_viclip(tmp_path / "viclip"))
    assert model.model.config.frames == 4 and model.model.config.width == 64
    tokens, end = model.tokenize(["a red ball"])
    assert tokens.shape == (1, 32) and int(end[0]) >= 2 and int(tokens[0, end[0]]) == model.tokenizer.eos_token_id
    g = torch.Generator().manual_seed(0)
    videos = [torch.rand(10, 40, 48, 3, generator=g) for _ in range(2)]
    embeddings = model.embed_videos(videos)
    assert embeddings.shape == (2, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
    same = viclip_v(model, videos, videos)
    torch.testing.assert_close(same, torch.ones(2))
    text = viclip_t(model, videos, ["a red ball", "two coins"])
    assert text.shape == (2,) and bool((text.abs() <= 1).all())
    state = torch.load(tmp_path / "viclip" / VICLIP_FILE, weights_only=True)["model"]
    state.pop("vision_encoder.proj")
    torch.save({"model": state}, tmp_path / "viclip" / VICLIP_FILE)
    with pytest.raises(TTMInputError, match="does not fit ViCLIP's layout"):
        load_viclip(tmp_path / "viclip" / VICLIP_FILE)
