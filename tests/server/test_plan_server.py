"""Against a real ComfyUI server: Image To Motion's plan backend, queued through the API.

The objects are the answer corpus's "coins" request (two discs, uploaded as mask PNGs on the example image), so the
corpus answers fit them exactly. The tiny local LLM (LLM Loader, constrained) plans them, the same seed twice gives
the same plan, and the trajectory is what the paths backend's renderer makes of the paths_json output; an LLM
Endpoint on a loopback OpenAI-compatible server replays corpus answers (a bad one, re-asked quoting the error, then a
good one; all bad: an error naming the llm input).
"""

from __future__ import annotations

import io
import json
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from common import ROOT, expect_failure
from fake_openai import FakeOpenAI, Reply, chat_completion
from ttm_batch.client import ComfyClient
from ttm_core.motion.paths import parse_paths
from ttm_core.motion.plan import PlanRequest, parse_plan_answer, plan_to_paths
from ttm_core.motion.poses import mask_centroids
from ttm_core.motion.render import trajectory_from_paths
from ttm_core.types import ObjectPrompt, Objects, Prompts

pytestmark = pytest.mark.server
CORPUS = ROOT / "tests" / "data" / "plan_answers"
COINS = json.loads((CORPUS / "cases.json").read_text())["requests"]["coins"]
FRAMES = 9


def corpus_answer(name: str) -> str:
    return (CORPUS / f"{name}.txt").read_text()


def disc_masks() -> torch.Tensor:
    """float [2, H, W]: the coins request's discs (pixel centres within the radius)."""
    ys, xs = torch.meshgrid(torch.arange(COINS["height"]) + 0.5, torch.arange(COINS["width"]) + 0.5, indexing="ij")
    return torch.stack([((xs - o["disc"][0]) ** 2 + (ys - o["disc"][1]) ** 2 <= o["disc"][2] ** 2).float()
                        for o in COINS["objects"]])


def local_objects() -> Objects:
    prompts = Prompts(COINS["motion_prompt"], COINS["motion_prompt"],
                      tuple(ObjectPrompt(o["name"], o["prompt"]) for o in COINS["objects"]))
    return Objects(prompts, disc_masks())


@pytest.fixture(scope="module")
def mask_files(client: ComfyClient) -> list[str]:
    names = []
    for i, mask in enumerate(disc_masks()):
        data = io.BytesIO()
        Image.fromarray((mask.numpy() * 255).astype(np.uint8), "L").convert("RGB").save(data, "PNG")
        names.append(client.upload_image(data.getvalue(), f"ttm_plan_disc_{i}.png"))
    return names


def workflow(mask_files: list[str], llm: dict, **motion: object) -> dict:
    objects = "\n".join(f"{o['name']}: {o['prompt']}" for o in COINS["objects"])
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "ttm_coins.png"}},
        "2": {"class_type": "LoadImageMask", "inputs": {"image": mask_files[0], "channel": "red"}},
        "3": {"class_type": "LoadImageMask", "inputs": {"image": mask_files[1], "channel": "red"}},
        "4": {"class_type": "TTM_PromptDecompose", "inputs": {
            "backend": "manual", "global_prompt": "Two silver coins on a dark table.",
            "motion_prompt": COINS["motion_prompt"], "objects": objects, "llm_answer": ""}},
        "5": {"class_type": "TTM_ObjectsFromMasks", "inputs": {
            "split_components": False, "min_area": 16, "image": ["1", 0], "prompts": ["4", 0], "masks": ["2", 0],
            "mask_2": ["3", 0]}},
        "6": llm,
        "7": {"class_type": "TTM_ImageToMotion", "inputs": {
            "backend": "plan", "paths": "", "num_frames": FRAMES, "fps": 16.0, "depth_order": "",
            "spline_objects": "", "spline_width": 0, "spline_height": 0, "image": ["1", 0], "objects": ["5", 0],
            "llm": ["6", 0], "seed": 0, "temperature": 0.0, "max_new_tokens": 600, "attempts": 3, **motion}},
        "8": {"class_type": "PreviewAny", "inputs": {"source": ["7", 3]}},
        "9": {"class_type": "MaskToImage", "inputs": {"mask": ["7", 2]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
    }


LOCAL_LLM = {"class_type": "TTM_LLMLoader", "inputs": {
    "model": "Llama-3.1-8B-Instruct", "device": "cpu", "precision": "fp32", "constrained": True}}


def endpoint(url: str) -> dict:
    return {"class_type": "TTM_LLMEndpoint", "inputs": {
        "base_url": url, "model": "llama3.1:8b", "api_key_env": "", "timeout": 30.0, "retries": 0,
        "json_schema": False}}


def run(client: ComfyClient, prompt: dict) -> tuple[str, np.ndarray]:
    """Queue ``prompt``: the paths_json text and the foreground masks [T, H, W] (bool) it produced."""
    result = client.run(prompt, timeout=600)
    assert result.status == "success", result.error
    (text,) = result.history["outputs"]["8"]["text"]
    files = [f for f in result.files() if f.node_id == "10"]
    frames = np.stack([np.asarray(Image.open(io.BytesIO(client.view(f))).convert("L")) > 127 for f in files])
    return text, frames


def rendered_by_the_paths_backend(text: str) -> np.ndarray:
    """The foreground the paths backend's renderer makes of ``text`` here, in-process: [T, H, W] bool."""
    objects = local_objects()
    paths = parse_paths(text, objects.prompts, objects.size, FRAMES, mask_centroids(objects.masks))
    return trajectory_from_paths(objects, paths, FRAMES, 16.0).foreground().numpy() > 0.5


def test_tiny_local_llm_plans_reproducibly_and_the_trajectory_follows_paths_json(
        client: ComfyClient, mask_files: list[str]) -> None:
    first, first_frames = run(client, workflow(mask_files, LOCAL_LLM, seed=7, temperature=1.0))
    other, _ = run(client, workflow(mask_files, LOCAL_LLM, seed=8, temperature=1.0))
    again, again_frames = run(client, workflow(mask_files, LOCAL_LLM, seed=7, temperature=1.0))
    assert again == first and np.array_equal(again_frames, first_frames)  # seeded: the same plan and trajectory
    request = PlanRequest.from_objects(local_objects(), "", FRAMES, 16.0)
    for text in (first, other):
        paths = json.loads(text)  # constrained decoding: always a usable plan, the first time
        assert paths["version"] == 1 and paths["units"] == "pixels"
        assert set(paths["objects"]) <= {"left coin", "big coin"}
        parse_paths(text, request.prompts(), (request.height, request.width), FRAMES, request.rest_positions())
    assert first_frames.shape == (FRAMES, COINS["height"], COINS["width"])
    expected = rendered_by_the_paths_backend(first)
    assert np.mean(first_frames != expected) < 1e-3  # plan -> paths JSON -> the paths backend's renderer


def test_endpoint_bad_answer_is_re_asked_then_the_good_one_is_used(client: ComfyClient,
                                                                   mask_files: list[str]) -> None:
    bad, good = corpus_answer("easing_with_hyphens"), corpus_answer("fence_and_prose_mistral_style")
    with FakeOpenAI.running() as fake:
        fake.replies = [Reply(body=chat_completion(bad)), Reply(body=chat_completion(good))]
        text, frames = run(client, workflow(mask_files, endpoint(fake.url), seed=3, temperature=0.2))
    first, second = (r["body"] for r in fake.requests)
    assert (first["seed"], second["seed"]) == (3, 4)
    assert second["messages"][-2] == {"role": "assistant", "content": bad}
    assert "unknown easing \"ease-in-out\"" in second["messages"][-1]["content"]
    request = PlanRequest.from_objects(local_objects(), "", FRAMES, 16.0)
    assert json.loads(text) == plan_to_paths(parse_plan_answer(good, request))
    assert np.mean(frames != rendered_by_the_paths_backend(text)) < 1e-3
    assert frames[-1].any() and not np.array_equal(frames[-1], frames[0])  # the plan moved something


def test_plan_errors_name_the_llm_input(client: ComfyClient, mask_files: list[str]) -> None:
    with FakeOpenAI.running() as fake:
        fake.replies = [Reply(body=chat_completion(corpus_answer("flung_far_away"))),
                        Reply(body=chat_completion(corpus_answer("t_as_frame_numbers")))]
        expect_failure(client, workflow(mask_files, endpoint(fake.url), attempts=2, seed=uuid.uuid4().int % 1000),
                       "llm: no usable answer in 2 attempt(s): object 'left coin' keyframe 2: t 24 is outside 0..1",
                       "Fix: use a larger instruction-tuned model")
    no_llm = workflow(mask_files, LOCAL_LLM)
    no_llm["7"]["inputs"].pop("llm")
    no_llm.pop("6")
    expect_failure(client, no_llm, "llm: the plan backend needs an LLM",
                   "connect an LLM Loader or an LLM Endpoint node to the llm input")


def test_paths_backend_echoes_its_paths_normalized(client: ComfyClient, mask_files: list[str]) -> None:
    paths = '{"objects": {"2": {"keyframes": [{"t": 1, "x": 0.5, "y": 0.5}]}}}'
    prompt = workflow(mask_files, LOCAL_LLM, backend="paths", paths=paths)
    prompt["7"]["inputs"].pop("llm")
    prompt.pop("6")
    text, frames = run(client, prompt)
    assert text == ('{"version": 1, "units": "normalized", "objects": {\n'
                    '  "big coin": {"keyframes": [\n    {"t": 1, "x": 0.5, "y": 0.5}]}}}')
    assert np.mean(frames != rendered_by_the_paths_backend(text)) < 1e-3
