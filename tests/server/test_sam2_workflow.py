"""Against a real ComfyUI server: caption -> Prompt Decompose -> SAM2 Segment -> the motion slice,
with the tiny models in the server's models folder (conftest puts them there under the shipped
names), the loaders through their nodes, the HTTP backend against a loopback OpenAI server, and
bad input as clear errors."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from common import ROOT, expect_failure, load_workflow
from fake_openai import FakeOpenAI, Reply, chat_completion
from tiny_models import TinyModels
from ttm_batch.client import ComfyClient

pytestmark = pytest.mark.server
SHIPPED = "ttm_sam2_llm_api.json"
NEW_NODES = ["TTM_SAM2Loader", "TTM_SAM2Segment", "TTM_DetectorLoader", "TTM_LLMLoader", "TTM_LLMEndpoint"]
COINS_ANSWER = json.dumps({"motion_prompt": "Two coins slide across the table.", "objects": [
    {"name": "left coin", "prompt": "a small silver coin sliding to the right"},
    {"name": "big coin", "prompt": "a large silver coin gliding down and to the left"}]})


def fresh(workflow: dict) -> dict:
    """A copy with a new output prefix (identical prompts are served from ComfyUI's cache)."""
    workflow = json.loads(json.dumps(workflow))
    for node in workflow.values():
        if node["class_type"] == "TTM_VideoCombine":
            node["inputs"]["filename_prefix"] = f"ttm/test_{uuid.uuid4().hex[:8]}"
    return workflow


def decode_video(client: ComfyClient, result, tmp_path: Path) -> np.ndarray:
    (video,) = [f for f in result.files() if f.filename.endswith(".mp4")]
    path = tmp_path / video.filename
    path.write_bytes(client.view(video))
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def images_of(client: ComfyClient, result, node_id: str) -> list[np.ndarray]:
    files = [f for f in result.files() if f.node_id == node_id]
    return [np.asarray(Image.open(io.BytesIO(client.view(f)))) for f in files]


def test_new_nodes_are_listed_with_tooltips(client: ComfyClient) -> None:
    info = client.object_info()
    for node_id in NEW_NODES:
        node = info[node_id]
        assert node["category"] == "Through-The-Mask" and "Through-The-Mask" in node["display_name"]
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["TTM_SAM2Segment"]["output"] == ["TTM_OBJECTS", "MASK", "IMAGE", "STRING"]
    assert info["TTM_PromptDecompose"]["output"] == ["TTM_PROMPTS", "STRING", "STRING", "STRING"]
    models = info["TTM_SAM2Loader"]["input"]["required"]["model"]
    options = models[1]["options"] if models[0] == "COMBO" else models[0]
    assert {"sam2.1_hiera_tiny.pt", "ttm-tiny-sam2.1.safetensors", "ttm-tiny-hf-sam2"} <= set(options)
    assert not any(o.startswith("ttm-tiny-hf-sam2/") for o in options)  # HF folders are one entry


def test_shipped_workflow_runs_with_the_tiny_models(client: ComfyClient, tmp_path: Path) -> None:
    """The API workflow exactly as shipped: local LLM (constrained), Grounding DINO, SAM2, warp, mp4."""
    workflow = fresh(load_workflow(SHIPPED))
    result = client.run(workflow, timeout=600)
    frames = decode_video(client, result, tmp_path)
    assert frames.shape == (33, 288, 384, 3)
    first = np.asarray(Image.open(ROOT / "examples" / "ttm_coins.png").convert("RGB"))
    assert np.abs(frames[0].astype(float) - first).mean() < 3.0  # starts from the image
    assert np.abs(frames[-1].astype(float) - frames[0]).mean() > 1.0  # object 1 really moved
    (preview,) = images_of(client, result, "10")
    assert preview.shape[:2] == (288, 384)


def test_http_llm_points_and_kjnodes_coordinates(client: ComfyClient, tmp_path: Path) -> None:
    """An LLM Endpoint on loopback answers like Llama would; SAM2 (HF folder) segments each named
    object from a KJNodes coordinate string; the masks come out one per object, disjoint."""
    with FakeOpenAI.running() as fake:
        fake.replies = [Reply(body=chat_completion(f"Here is the decomposition:\n{COINS_ANSWER}"))]
        workflow = fresh(load_workflow(SHIPPED))
        workflow["2"] = {"class_type": "TTM_LLMEndpoint", "inputs": {
            "base_url": fake.url, "model": "llama3.1:8b", "api_key_env": "", "timeout": 30.0, "retries": 0,
            "json_schema": False}}
        workflow["3"]["inputs"]["seed"] = 11
        workflow["4"]["inputs"]["model"] = "ttm-tiny-hf-sam2"
        workflow["6"]["inputs"].update(mode="points_boxes", positive_coords=["20", 0])
        workflow["6"]["inputs"].pop("detector")
        workflow["20"] = {"class_type": "PrimitiveString",
                          "inputs": {"value": '[{"x": 100, "y": 150}, {"x": 340, "y": 180}]'}}
        workflow["21"] = {"class_type": "MaskToImage", "inputs": {"mask": ["6", 1]}}
        workflow["22"] = {"class_type": "PreviewImage", "inputs": {"images": ["21", 0]}}
        result = client.run(workflow, timeout=600)
    (request,) = fake.requests
    assert request["body"]["seed"] == 11 and request["body"]["model"] == "llama3.1:8b"
    masks = images_of(client, result, "22")
    assert len(masks) == 2  # one mask per object: left coin, big coin
    binary = [m[..., 0] > 127 for m in masks]
    assert all(b.any() for b in binary) and not (binary[0] & binary[1]).any()
    assert decode_video(client, result, tmp_path).shape[0] == 33


def test_loader_variants_and_automatic_mode(client: ComfyClient, tmp_path: Path) -> None:
    """A .safetensors Meta checkpoint through the loader node, manual prompts, automatic mode."""
    workflow = fresh(load_workflow(SHIPPED))
    for node in ("2", "5"):
        workflow.pop(node)
    workflow["3"]["inputs"].update(backend="manual", objects="coin: a coin sliding to the right")
    workflow["3"]["inputs"].pop("llm")
    workflow["4"]["inputs"].update(model="ttm-tiny-sam2.1.safetensors", device="cpu", precision="fp32")
    workflow["6"]["inputs"].update(mode="automatic", auto_points_per_side=4, auto_score_threshold=0.0)
    workflow["6"]["inputs"].pop("detector")
    result = client.run(workflow, timeout=600)
    assert decode_video(client, result, tmp_path).shape == (33, 288, 384, 3)


def test_bad_inputs_come_back_as_clear_errors(client: ComfyClient) -> None:
    def variant(**changes: dict) -> dict:
        workflow = fresh(load_workflow(SHIPPED))
        for node_id, inputs in changes.items():
            workflow[node_id.lstrip("n")]["inputs"].update(inputs)
        return workflow

    expect_failure(client, variant(n4={"model": "nope.pt"}), "model: 'nope.pt' is not in models/sam2")
    expect_failure(client, variant(n5={"model": "nope"}), "model: 'nope' is not in models/grounding-dino")
    expect_failure(client, variant(n2={"model": "nope"}), "model: 'nope' is not in models/LLM")
    expect_failure(client, variant(n6={"mode": "clicks"}), "mode: 'clicks' is not one of points_boxes, text, automatic")
    expect_failure(client, variant(n6={"mode": "points_boxes", "points": '{"1": [[10, 10]'}),
                   "points: not valid JSON")
    expect_failure(client, variant(n3={"backend": "llm", "global_prompt": "  "}), "global_prompt: the caption is empty")
    no_detector = variant()
    no_detector["6"]["inputs"].pop("detector")
    expect_failure(client, no_detector, "detector: text mode needs an open-vocabulary detector")
    no_llm = variant()
    no_llm["3"]["inputs"].pop("llm")
    expect_failure(client, no_llm, "llm: the llm backend needs an LLM")
    missing_point = variant(n3={"backend": "manual", "objects": "left coin: a\nbig coin: b"},
                            n6={"mode": "points_boxes", "points": '{"left coin": [[100, 150]]}'})
    expect_failure(client, missing_point, "points: no point or box for 'big coin'")
    endpoint = variant()
    endpoint["2"] = {"class_type": "TTM_LLMEndpoint", "inputs": {
        "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "sk-live-123", "timeout": 5.0,
        "retries": 0, "json_schema": False}}
    expect_failure(client, endpoint, "api_key_env: this takes the NAME of an environment variable")
    endpoint["2"]["inputs"]["api_key_env"] = ""
    expect_failure(client, endpoint, "base_url: http://127.0.0.1:9/v1/chat/completions failed 1 time(s)")
    # ... and the server still runs the next prompt.
    assert any(f.filename.endswith(".mp4") for f in client.run(variant(), timeout=600).files())


def test_the_pack_loads_without_the_sam2_package(comfy_server, tiny_models: TinyModels) -> None:
    """The nodes import with sam2 missing; the SAM2 loader then says how to install it."""
    import subprocess

    code = (
        "import sys, importlib, asyncio\n"
        "sys.argv = ['main.py', '--cpu']  # ComfyUI parses its command line on import\n"
        "sys.modules['sam2'] = None\n"
        f"sys.path.insert(0, {str(comfy_server.install.comfy_dir)!r})\n"
        f"sys.path.insert(0, {str(comfy_server.base / 'custom_nodes')!r})\n"
        "import comfy.options\n"
        "comfy.options.enable_args_parsing()\n"
        "import folder_paths\n"
        f"folder_paths.models_dir = {str(comfy_server.base / 'models')!r}\n"
        "pack = importlib.import_module('ComfyUI-Through-The-Mask')\n"
        "nodes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())\n"
        "loader = next(n for n in nodes if n.__name__ == 'SAM2Loader')\n"
        "print(len(nodes))\n"
        "print(loader.validate_inputs(model='sam2.1_hiera_tiny.pt', device='auto', precision='auto'))\n"
    )
    result = subprocess.run([comfy_server.install.python, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=comfy_server.install.comfy_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    count, message = result.stdout.strip().splitlines()[-2:]
    assert int(count) >= 10
    assert message.startswith("model: sam2.1_hiera_tiny.pt is a Meta checkpoint but the sam2 package is not "
                              "installed. Fix: install Meta's sam2 package")
