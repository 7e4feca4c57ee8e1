"""The native Wan fixtures (tests/native_wan.py) through ComfyUI's own loaders and stock graphs.

Everything runs on a real ComfyUI server (``native_wan_server``) with core nodes only: the
files are found by the stock loader nodes, detected as the intended model classes, and the
stock Wan 2.1 I2V, Wan 2.2 I2V-A14B (two experts) and Wan 2.2 TI2V graphs render frames that
depend on the seed and only on the seed.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from native_wan import (
    FIXTURES,
    GRAPH_FIXTURES,
    TimedRun,
    build_cached,
    detect_native_wan,
    load_graph,
    run_timed,
    set_seed,
)
from ttm_batch.client import ComfyClient

pytestmark = pytest.mark.server
LOG = logging.getLogger(__name__)
SAMPLERS = ("KSampler", "KSamplerAdvanced")


def test_every_fixture_is_listed_by_its_loader_node(native_wan_client: ComfyClient) -> None:
    info = native_wan_client.object_info()
    choices = {
        "diffusion_models": info["UNETLoader"]["input"]["required"]["unet_name"][0],
        "vae": info["VAELoader"]["input"]["required"]["vae_name"][0],
        "clip_vision": info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0],
        "text_encoders": info["CLIPLoader"]["input"]["required"]["clip_name"][0],
    }
    for fixture in FIXTURES.values():
        assert fixture.filename in choices[fixture.folder], f"{fixture.relpath} not offered by its loader"


def test_each_checkpoint_is_detected_as_the_intended_model(native_wan_models: dict[str, Path]) -> None:
    report = detect_native_wan(native_wan_models)
    LOG.info("detection: %s", report)
    for key, fixture in FIXTURES.items():
        found = report[key]
        # A key the module wants but the file lacks would stay torch.empty memory (random, unseeded).
        assert found["missing"] == [], f"{key}: ComfyUI's module wants keys the file lacks: {found['missing']}"
        assert found["unexpected"] == [], f"{key}: keys ComfyUI ignores: {found['unexpected']}"
        for name, value in fixture.expect.items():
            assert found[name] == value, f"{key}: {name} is {found[name]!r}, expected {value!r}"
        if fixture.kind == "wan_dit":
            for name in ("dim", "ffn_dim", "num_heads", "num_layers"):
                assert found[name] == fixture.config[name], f"{key}: {name}"
            assert found["text_dim"] == 4096  # never read from the file: the text encoder must be 4096 wide
            assert found["patch_size"] == [1, 2, 2]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_small_fixtures_rebuild_byte_identical(native_wan_models: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    small = [key for key, fixture in FIXTURES.items() if fixture.kind in ("wan_dit", "wan21_vae", "taehv48")]
    monkeypatch.setenv("TTM_NATIVE_WAN_CACHE", str(tmp_path / "cache"))
    rebuilt = build_cached(small)
    for key in small:
        assert rebuilt[key].parent == tmp_path / "cache"
        assert sha256(rebuilt[key]) == sha256(native_wan_models[key]), f"{key} is not deterministic"
    # The two A14B experts share an architecture but not their weights.
    assert sha256(native_wan_models["wan22_i2v_high"]) != sha256(native_wan_models["wan22_i2v_low"])


def webp_frames(client: ComfyClient, run: TimedRun) -> np.ndarray:
    files = [f for f in run.result.files() if f.filename.endswith(".webp")]
    assert len(files) == 1, list(run.result.files())
    with Image.open(io.BytesIO(client.view(files[0]))) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def video_size(graph: dict) -> tuple[int, int, int]:
    """(frames, height, width) the graph asks for, from its WanImageToVideo / Wan22ImageToVideoLatent."""
    for node in graph.values():
        if node["class_type"] in ("WanImageToVideo", "Wan22ImageToVideoLatent"):
            inputs = node["inputs"]
            return inputs["length"], inputs["height"], inputs["width"]
    raise AssertionError("no Wan latent node in the graph")


def assert_plausible_frames(frames: np.ndarray, shape: tuple[int, int, int], label: str) -> None:
    assert frames.dtype == np.uint8
    assert frames.shape == (*shape, 3), f"{label}: frames {frames.shape}, expected {(*shape, 3)}"
    # Random weights give texture, not pictures; what must not happen is NaN (saved as 0),
    # a saturated or flat image, or a still video.
    saturated = float(np.mean((frames == 0) | (frames == 255)))
    assert saturated < 0.25, f"{label}: {saturated:.0%} of the values are 0 or 255"
    assert frames.reshape(shape[0], -1).std(axis=1).min() > 5.0, f"{label}: a frame is (nearly) flat"
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 1.0, f"{label}: the frames do not change"


@pytest.mark.parametrize("name", list(GRAPH_FIXTURES))
def test_stock_graph_runs_and_depends_on_the_seed_only(name: str, native_wan_client: ComfyClient) -> None:
    graph = load_graph(name)
    classes = {node["class_type"] for node in graph.values()}
    assert not any(c.startswith("TTM_") for c in classes), "stock graphs use core nodes only"
    samplers = {node_id for node_id, node in graph.items() if node["class_type"] in SAMPLERS}
    runs: dict[str, TimedRun] = {}
    frames: dict[str, np.ndarray] = {}
    # a, then b, then a again: ComfyUI's cache keeps only the last prompt's sampler output, so
    # the third run really samples again (asserted below) while the encoders stay cached.
    for label, seed in (("a", 42), ("b", 7), ("a_again", 42)):
        runs[label] = run_timed(native_wan_client, set_seed(copy.deepcopy(graph), seed), timeout=600)
        frames[label] = webp_frames(native_wan_client, runs[label])
        assert_plausible_frames(frames[label], video_size(graph), f"{name} seed {seed}")
        per_class: dict[str, float] = {}
        for node_id, seconds in runs[label].node_seconds.items():
            class_type = graph[node_id]["class_type"]
            per_class[class_type] = round(per_class.get(class_type, 0.0) + seconds, 2)
        LOG.info("%s seed %d (%s): %.1f s; per node class: %s", name, seed, label, runs[label].seconds, per_class)

    assert not samplers & runs["a_again"].cached_nodes, "the repeat was served from ComfyUI's cache"
    np.testing.assert_array_equal(frames["a_again"], frames["a"], err_msg=f"{name}: same seed, different frames")
    difference = np.abs(frames["b"].astype(np.int16) - frames["a"]).mean(axis=(1, 2, 3))
    if "Wan22ImageToVideoLatent" in classes:
        # TI2V: the start image's latent frame is pinned (noise_mask 0; WAN22 turns the mask into
        # per-frame timesteps and scale_latent_inpaint returns the clean latent), and the Wan VAE
        # decoders are causal, so frame 0 is the same for every seed and only the rest differs.
        assert difference[0] < 0.5, f"{name}: frame 0 depends on the seed ({difference[0]:.2f})"
        assert difference[1:].min() > 1.0, f"{name}: seeds 42 and 7 give (nearly) the same frames: {difference}"
    else:
        assert difference.min() > 1.0, f"{name}: seeds 42 and 7 give (nearly) the same frames: {difference}"


def test_a_length_off_the_1_plus_4k_grid_is_rounded_down(native_wan_client: ComfyClient) -> None:
    """WanImageToVideo makes ((length - 1) // 4) + 1 latent frames; the VAE decodes 4T - 3."""
    graph = load_graph("native_wan22_a14b_i2v_api.json")
    latent_node = next(node for node in graph.values() if node["class_type"] == "WanImageToVideo")
    latent_node["inputs"]["length"] = 12
    frames = webp_frames(native_wan_client, run_timed(native_wan_client, graph))
    assert frames.shape == (9, 64, 64, 3)
