"""The shipped native Wan workflows, run through the HTTP API on tiny native checkpoints."""

from __future__ import annotations

import asyncio
import io
import uuid

import numpy as np
import pytest
from PIL import Image

from common import load_workflow, watch_prompt
from native_wan import FIXTURES, TINY_FRAMES, TINY_SIZE, tiny_workflow
from ttm_batch.client import ComfyClient

pytestmark = pytest.mark.server
SIZE, FRAMES = TINY_SIZE, TINY_FRAMES


def tiny(name: str, prefix: str, seed: int = 42, steps: int = 2, size: tuple[int, int] = SIZE) -> dict:
    """A shipped workflow on the tiny models: small size, few frames and steps, png output."""
    return tiny_workflow(load_workflow(name), prefix, seed=seed, steps=steps, size=size)


def frames_of(client: ComfyClient, result) -> np.ndarray:
    files = sorted((f for f in result.files() if f.type == "output" and f.filename.endswith(".png")),
                   key=lambda f: f.filename)
    return np.stack([np.asarray(Image.open(io.BytesIO(client.view(f))).convert("RGB")) for f in files])


def cached_nodes(result) -> set[str]:
    return {node for kind, data in result.history["status"]["messages"] if kind == "execution_cached"
            for node in data["nodes"]}


def run(client: ComfyClient, graph: dict):
    return client.run(graph, timeout=900)


# TI2V runs at 64x64: ComfyUI's full-size Wan 2.2 VAE dominates its time on CPU.
@pytest.mark.parametrize("name, sampler_node, size", [("ttm_wan21_i2v_patch_api.json", "19", SIZE),
                                                      ("ttm_wan22_ti2v_api.json", "7", (64, 64))])
def test_workflow_runs_and_same_seed_gives_same_frames(native_wan_client: ComfyClient, name: str,
                                                       sampler_node: str, size: tuple[int, int]) -> None:
    tag = uuid.uuid4().hex[:6]
    first = run(native_wan_client, tiny(name, f"ttm/n_{tag}_a", seed=42, size=size))
    other = run(native_wan_client, tiny(name, f"ttm/n_{tag}_b", seed=7, size=size))
    again = run(native_wan_client, tiny(name, f"ttm/n_{tag}_c", seed=42, size=size))
    assert sampler_node not in cached_nodes(again)  # really sampled again
    a, b, c = (frames_of(native_wan_client, r) for r in (first, other, again))
    assert a.shape == (FRAMES, size[1], size[0], 3)
    assert 0 < a.mean() < 255 and a.std() > 1.0
    assert np.array_equal(a, c)
    assert not np.array_equal(a, b)


def test_a14b_experts_through_the_one_node_path(native_wan_client: ComfyClient) -> None:
    graph = tiny("ttm_wan22_ti2v_api.json", f"ttm/a14b_{uuid.uuid4().hex[:6]}", steps=4)
    graph["10"]["inputs"]["unet_name"] = FIXTURES["wan22_i2v_high"].filename
    graph["12"]["inputs"]["vae_name"] = FIXTURES["wan21_vae"].filename
    graph["30"] = {"class_type": "UNETLoader", "inputs": {"unet_name": FIXTURES["wan22_i2v_low"].filename,
                                                          "weight_dtype": "default"}}
    graph["7"]["inputs"]["model_2"] = ["30", 0]
    result = run(native_wan_client, graph)
    frames = frames_of(native_wan_client, result)
    assert frames.shape == (FRAMES, SIZE[1], SIZE[0], 3)
    log = "\n".join(data.get("exception_message", "") for kind, data in result.history["status"]["messages"])
    assert "error" not in log.lower()


def one_node_on_wan21(prefix: str, masked_blocks: int, seed: int = 5) -> dict:
    """The one-node (Wan native) workflow with Wan 2.1 I2V and its small VAE (fast on CPU). The tiny model's
    default K is 1, so masked_blocks 0 and 1 render the same video while making ComfyUI run the node again."""
    graph = tiny("ttm_wan22_ti2v_api.json", prefix, seed=seed, steps=6)
    graph["10"]["inputs"]["unet_name"] = FIXTURES["wan21_i2v"].filename
    graph["12"]["inputs"]["vae_name"] = FIXTURES["wan21_vae"].filename
    graph["7"]["inputs"]["masked_blocks"] = masked_blocks
    return graph


def test_interrupt_mid_sampling_leaves_the_model_as_it_was(native_wan_server, native_wan_client: ComfyClient) -> None:
    tag = uuid.uuid4().hex[:6]
    before = frames_of(native_wan_client, run(native_wan_client, one_node_on_wan21(f"ttm/i_{tag}_a", 0)))
    cut = one_node_on_wan21(f"ttm/i_{tag}_b", 0, seed=6)
    messages = asyncio.run(watch_prompt(native_wan_server.url, cut, interrupt_on_node="7"))
    assert messages[-1]["type"] == "execution_interrupted"
    steps = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "7"]
    assert steps and max(steps) < 6
    again = one_node_on_wan21(f"ttm/i_{tag}_c", 1)
    result = run(native_wan_client, again)
    assert "7" not in cached_nodes(result)
    assert np.array_equal(frames_of(native_wan_client, result), before)
