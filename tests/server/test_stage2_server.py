"""Stage 2 through diffusers against a real ComfyUI server, via its HTTP API only.

The shipped workflows name the real model folders (CogVideoX-5b-I2V, i2vgen-xl); each test swaps in
a tiny random model of a family (``tiny/<family>`` under the server's models/diffusers, saved in
the users' layout) through the API prompt, a small size, two steps and png output (lossless
frames to compare).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import ROOT, expect_failure, load_workflow, watch_prompt
from stage2_cases import one_thread, server_models, tiny_model_dir  # noqa: F401 (fixtures)
from tiny_diffusers import TINY_FAMILIES
from ttm_batch.client import ComfyClient, PromptResult
from ttm_core.stage2.diffusers.loader import load_video_model
from ttm_core.stage2.diffusers.run import _pil
from ttm_core.stage2.diffusers.sizes import fit_frames, plan_frames

pytestmark = pytest.mark.server
COG, UNET = "ttm_cogvideox_i2v_api.json", "ttm_i2vgen_xl_api.json"
LEGACY = ROOT / "tests" / "data" / "legacy"
DEFAULT_K = {"i2vgen-xl": 3}  # the tiny UNet's encoder has 3 spatial attention blocks; the tiny DiTs: max(1, 2 / 4)


def workflow(family: str, frames: int | None = None, legacy: bool = False, **node7: object) -> dict:
    """A shipped workflow with the tiny model of ``family`` swapped in; png output under a fresh prefix.
    ``legacy``: the workflow as shipped before the split, with the deprecated all-in-one node."""
    name = UNET if family == "i2vgen-xl" else COG
    wf = json.loads((LEGACY / name).read_text()) if legacy else load_workflow(name)
    wf["10"]["inputs"]["model"] = f"tiny/{family}"
    wf["6"]["inputs"]["num_frames"] = frames or (4 if family == "i2vgen-xl" else 9)
    wf["7"]["inputs"].update({"steps": 2, "width": 64, "height": 64, **node7})
    wf["8"]["inputs"].update(format="png", filename_prefix=f"ttm/stage2_{uuid.uuid4().hex[:8]}")
    return wf


def frames_of(client: ComfyClient, result: PromptResult) -> np.ndarray:
    """uint8 [F, H, W, 3] from the png sequence Video Combine wrote."""
    files = sorted((f for f in result.files() if f.node_id == "8"), key=lambda f: f.filename)
    assert files, list(result.files())
    return np.stack([np.asarray(Image.open(io.BytesIO(client.view(f))).convert("RGB")) for f in files])


def messages_of(result: PromptResult, kind: str) -> list[dict]:
    return [data for k, data in result.history.get("status", {}).get("messages", []) if k == kind]


def cached_nodes(result: PromptResult) -> set[str]:
    return {n for data in messages_of(result, "execution_cached") for n in data.get("nodes", [])}


def ui_text(result: PromptResult, node: str = "7") -> str:
    return "\n".join(result.history["outputs"].get(node, {}).get("text", []))


def test_loader_lists_the_models_and_every_input_has_a_tooltip(client: ComfyClient, server_models: Path) -> None:
    info = client.object_info()
    loader = info["TTM_VideoModelLoader"]
    assert loader["category"] == "Through-The-Mask" and loader["output"] == ["TTM_VIDEO_MODEL"]
    options = loader["input"]["required"]["model"][1]["options"]
    assert {f"tiny/{family}" for family in TINY_FAMILIES} <= set(options)
    stage2, legacy = info["TTM_DiffusersMotionToVideo"], info["TTM_MaskedMotionToVideo"]
    for node in (loader, stage2, legacy):
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{name} has no tooltip"
    assert stage2["input"]["required"]["video_model"][0] == "TTM_VIDEO_MODEL"
    assert {"seed", "steps", "cfg", "negative_prompt", "width", "height", "length", "self_strength", "cross_strength",
            "masked_blocks", "start_percent", "end_percent", "guidance", "object_clock", "background_clock",
            "clock_units"} <= set(stage2["input"]["required"])
    # the deprecated all-in-one node keeps its schema, so saved workflows still load
    assert legacy["input"]["required"]["backend"][1]["options"] == ["warp", "comfy", "diffusers"]
    optional = legacy["input"]["optional"]
    assert {"video_model", "prompts", "seed", "steps", "cfg", "negative_prompt", "width", "height", "length",
            "self_strength", "cross_strength", "masked_blocks", "start_percent", "end_percent", "guidance",
            "object_clock", "background_clock", "clock_units"} <= set(optional)
    assert optional["seed"][1]["tooltip"].startswith("comfy and diffusers backends: ")
    assert optional["video_model"][1]["tooltip"].startswith("diffusers backend: ")
    assert optional["sampler_name"][1]["tooltip"].startswith("comfy backend: ")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_each_family_runs_its_workflow_and_the_same_seed_gives_the_same_frames(
        client: ComfyClient, server_models: Path, family: str) -> None:
    first = client.run(workflow(family, seed=5), timeout=600)
    frames = frames_of(client, first)
    count = 4 if family == "i2vgen-xl" else 9
    assert frames.shape == (count, 64, 64, 3)
    assert frames.std() > 1.0 and frames.min() < frames.max()  # a real picture, not a constant
    assert f"64x64, {count} frames" in ui_text(first)
    loader_text = ui_text(first, "10")
    assert loader_text.startswith({"cogvideox-1.0-i2v": "CogVideoX 1.0 I2V", "cogvideox-1.5-i2v": "CogVideoX 1.5 I2V",
                                   "wan2.1-i2v": "Wan 2.1 I2V", "wan2.2-i2v-a14b": "Wan 2.2 I2V-A14B",
                                   "wan2.2-ti2v-5b": "Wan 2.2 TI2V-5B", "i2vgen-xl": "I2VGen-XL"}[family])
    # The same seed again; K given explicitly (= the default) so ComfyUI re-executes instead of using its cache.
    second = client.run(workflow(family, seed=5, masked_blocks=DEFAULT_K.get(family, 1)), timeout=600)
    assert "7" not in cached_nodes(second)
    assert np.array_equal(frames_of(client, second), frames)
    other = client.run(workflow(family, seed=6), timeout=600)
    assert not np.array_equal(frames_of(client, other), frames)


def _stock_frames(tiny_model_dir: Path, family: str, seed: int, steps: int, frames: int) -> np.ndarray:
    """The stock diffusers pipeline on what the workflow feeds it, as Video Combine would write it."""
    m = load_video_model(tiny_model_dir / family)
    wf = load_workflow(COG)
    image = torch.from_numpy(np.asarray(Image.open(ROOT / "examples" / "ttm_coins.png").convert("RGB")) / 255.0)
    plan = plan_frames(_rules(m), tuple(image.shape[:2]), frames, 8.0, 64, 64)
    prompt = wf["4"]["inputs"]["global_prompt"]
    negative = wf["7"]["inputs"]["negative_prompt"]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        video = m.pipeline(image=_pil(fit_frames(image[None].float(), plan)[0]), prompt=prompt,
                           negative_prompt=negative, height=64, width=64, num_frames=frames,
                           num_inference_steps=steps, guidance_scale=wf["7"]["inputs"]["cfg"],
                           generator=torch.Generator().manual_seed(seed), output_type="pt",
                           max_sequence_length=m.text_tokens).frames[0]
    return video.permute(0, 2, 3, 1).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


def _rules(m):
    from ttm_core.stage2.diffusers.run import size_rules

    return size_rules(m)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to 8-bit rounding of float round-off (the server and this process use other thread counts)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())


def _run_and_interrupt(client: ComfyClient, prompt: dict, node: str = "7") -> list[dict]:
    """Queue with the websocket open and /interrupt at the node's first progress message."""
    seen: list[dict] = []
    with client.socket(timeout=1.0) as socket:
        prompt_id = client.queue(prompt)
        deadline = time.monotonic() + 300
        interrupted = False
        while time.monotonic() < deadline:
            message = socket.receive()
            if message is None or message.get("data", {}).get("prompt_id") not in (None, prompt_id):
                continue
            seen.append(message)
            if not interrupted and message["type"] == "progress" and message["data"]["node"] == node:
                client.interrupt()
                interrupted = True
            if message["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                break
    return seen


def test_interrupt_leaves_the_model_unpatched_and_strength_zero_equals_stock(
        client: ComfyClient, server_models: Path, tiny_model_dir: Path) -> None:
    family = "cogvideox-1.0-i2v"
    fresh = frames_of(client, client.run(workflow(family, seed=21), timeout=600))
    # A different generation (other seed, other strength), cancelled at its first denoising step.
    seen = _run_and_interrupt(client, workflow(family, seed=22, cross_strength=0.5, steps=400))
    assert seen[-1]["type"] == "execution_interrupted"
    done = [m["data"]["value"] for m in seen if m["type"] == "progress" and m["data"]["node"] == "7"]
    assert done and max(done) < 400  # stopped inside the denoising loop
    again = client.run(workflow(family, seed=21, masked_blocks=1), timeout=600)
    assert "7" not in cached_nodes(again)
    assert np.array_equal(frames_of(client, again), fresh)  # the next identical run equals a fresh one
    # Masking and guidance off after the interrupted masked run: the stock pipeline's video.
    off = client.run(workflow(family, seed=23, self_strength=0.0, cross_strength=0.0, object_clock=0.0,
                              background_clock=0.0), timeout=600)
    _close(frames_of(client, off), _stock_frames(tiny_model_dir, family, 23, 2, 9))


def test_freeing_comfyui_memory_unloads_and_the_next_run_reloads(comfy_server, client: ComfyClient,
                                                                  server_models: Path) -> None:
    """ComfyUI's own /free unloads our registered components; the next run loads them again."""
    family = "wan2.1-i2v"
    before = frames_of(client, client.run(workflow(family, seed=31), timeout=600))
    client._request("POST", "/free", {"unload_models": True})
    time.sleep(1.5)  # the prompt worker applies the flag when it wakes
    log_size = comfy_server.log_path.stat().st_size
    after = client.run(workflow(family, seed=31, masked_blocks=1), timeout=600)
    assert "10" in cached_nodes(after)  # the loaded model object is reused ...
    with comfy_server.log_path.open("rb") as log:
        log.seek(log_size)
        assert b"Requested to load _Component" in log.read()  # ... and ComfyUI loads its components again
    assert np.array_equal(frames_of(client, after), before)


def test_progress_is_reported_per_denoising_step(client: ComfyClient, server_models: Path) -> None:
    with client.socket(timeout=1.0) as socket:
        prompt_id = client.queue(workflow("cogvideox-1.5-i2v", seed=41, steps=5))
        steps = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            message = socket.receive()
            if message is None or message.get("data", {}).get("prompt_id") not in (None, prompt_id):
                continue
            if message["type"] == "progress" and message["data"]["node"] == "7":
                steps.append((message["data"]["value"], message["data"]["max"]))
            if message["type"] in ("execution_success", "execution_error"):
                break
    assert steps == [(i, 5) for i in range(1, 6)]


def test_bad_inputs_come_back_as_clear_errors(client: ComfyClient, server_models: Path) -> None:
    loose = server_models / "loose-weights"
    loose.mkdir(exist_ok=True)
    (loose / "wan2.1_i2v_480p_14B_fp16.safetensors").write_bytes(b"")
    svd = server_models / "stable-video-diffusion-img2vid-xt"
    svd.mkdir(exist_ok=True)
    (svd / "model_index.json").write_text(json.dumps({"_class_name": "StableVideoDiffusionPipeline",
                                                       "unet": ["diffusers", "UNetSpatioTemporalConditionModel"]}))
    family = "cogvideox-1.0-i2v"
    wf = workflow(family)
    wf["10"]["inputs"]["model"] = "CogVideoX-5b-I2V"  # the shipped name, not installed on the test server
    expect_failure(client, wf, "model: there is no folder 'CogVideoX-5b-I2V'", "tiny/cogvideox-1.0-i2v")
    wf["10"]["inputs"]["model"] = "loose-weights"
    expect_failure(client, wf, "has no model_index.json", "wan2.1_i2v_480p_14B_fp16.safetensors")
    wf["10"]["inputs"]["model"] = "stable-video-diffusion-img2vid-xt"
    expect_failure(client, wf, "StableVideoDiffusionPipeline (unet: UNetSpatioTemporalConditionModel)",
                 "no text prompt")
    long_prompt = workflow(family)
    long_prompt["4"]["inputs"]["objects"] = ("left coin: " + "a small silver coin " * 12 + "\n"
                                             "big coin: a large silver coin")
    expect_failure(client, long_prompt, "prompts: the local prompt of 'left coin' is", "reads at most 32")
    small = client.upload_image(_png(np.full((100, 100, 3), 128)), "ttm_stage2_small.png")
    other_image = workflow(family)
    other_image["11"] = {"class_type": "LoadImage", "inputs": {"image": small}}
    other_image["7"]["inputs"]["image"] = ["11", 0]
    expect_failure(client, other_image, "image: the image is 100x100 (WxH) but the trajectory is 384x288")
    no_model = workflow(family)
    del no_model["7"]["inputs"]["video_model"]
    expect_failure(client, no_model, "video_model")
    legacy_no_model = workflow(family, legacy=True)
    del legacy_no_model["7"]["inputs"]["video_model"]
    expect_failure(client, legacy_no_model, "video_model: the diffusers engine needs a model")
    bad_clock = workflow(family, object_clock=0.1, background_clock=0.5)
    expect_failure(client, bad_clock, "object_clock: the object clock (0.1) ends before the background clock")
    bad_window = workflow(family, start_percent=0.8, end_percent=0.2)
    expect_failure(client, bad_window, "end_percent: 0.2 is before start_percent 0.8")
    # ... and the server still serves the next prompt.
    assert frames_of(client, client.run(workflow(family, seed=51), timeout=600)).shape[0] == 9


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_trajectory_frames_are_resampled_and_zero_objects_sample_plainly(client: ComfyClient,
                                                                         server_models: Path) -> None:
    resampled = client.run(workflow("wan2.1-i2v", frames=12, seed=61), timeout=600)
    assert frames_of(client, resampled).shape[0] == 9
    assert "12 frames is not a legal length for Wan 2.1 I2V (1 + 4k); 9 frames are generated" in ui_text(resampled)
    plain = workflow("wan2.1-i2v", seed=62)
    plain["12"] = {"class_type": "TTM_PromptDecompose",
                   "inputs": {"backend": "manual", "global_prompt": "two silver coins on a dark table",
                              "motion_prompt": "", "objects": "", "llm_answer": ""}}
    plain["7"]["inputs"]["prompts"] = ["12", 0]
    result = client.run(plain, timeout=600)
    assert "no objects: plain image-to-video sampling" in ui_text(result)
    assert frames_of(client, result).shape == (9, 64, 64, 3)
    mismatch = workflow("wan2.1-i2v", seed=63)
    mismatch["12"] = dict(plain["12"], inputs=dict(plain["12"]["inputs"], objects="coin: a coin"))
    mismatch["7"]["inputs"]["prompts"] = ["12", 0]
    expect_failure(client, mismatch, "prompts: the prompts name 1 objects but the trajectory has 2")


def test_a_connected_loader_costs_nothing_while_the_backend_is_warp(client: ComfyClient, server_models: Path) -> None:
    """The deprecated all-in-one node loads its video model lazily: only when its backend is diffusers."""
    wf = workflow("wan2.2-ti2v-5b", legacy=True, backend="warp")
    wf["10"]["inputs"]["dtype"] = "fp32"  # a loader input no other test uses: nothing cached to hide behind
    result = client.run(wf, timeout=600)
    assert "10" not in result.history["outputs"] and "10" not in cached_nodes(result)  # never executed
    assert frames_of(client, result).shape == (9, 288, 384, 3)  # the warp animation at the image's size
    wf["7"]["inputs"]["backend"] = "diffusers"
    result = client.run(wf, timeout=600)
    assert ui_text(result, "10").startswith("Wan 2.2 TI2V-5B, float32")
    assert frames_of(client, result).shape == (9, 64, 64, 3)


def test_the_notes_reach_the_node_in_the_frontend_while_it_runs(comfy_server, server_models: Path) -> None:
    """The diffusers node sends its summary and notes as ComfyUI's progress text (it needs its hidden unique_id)."""
    messages = asyncio.run(watch_prompt(comfy_server.url, workflow("wan2.1-i2v", frames=12, seed=71), None))
    assert messages[-1]["type"] == "execution_success", messages[-1]
    texts = [m["data"]["text"] for m in messages if m["type"] == "progress_text" and m["data"]["node"] == "7"]
    assert len(texts) == 1, texts
    assert texts[0].startswith("Wan 2.1 I2V: 64x64, 9 frames")
    assert "12 frames is not a legal length for Wan 2.1 I2V" in texts[0]
