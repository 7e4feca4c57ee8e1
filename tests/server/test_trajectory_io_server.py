"""Against a real ComfyUI server: Save Trajectory then Load Trajectory gives the same trajectory bit for bit (it
saves back to the same bytes, and Motion To Video · Warp renders the same frames from it); names that leave the
input or output folder and files that are not trajectories are refused; Prompt Decompose parses an LLM answer
that arrives through its llm_answer_text socket (here from core's PrimitiveStringMultiline, as it would from core
TextGenerate's generated_text)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from common import expect_failure, load_workflow
from tools.comfy_harness import ComfyServer
from ttm_batch.client import ComfyClient, OutputFile, PromptResult
from ttm_core.motion.trajectory_file import read_trajectory

pytestmark = pytest.mark.server
FRAMES = 9


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A plain ComfyUI with the pack (no models needed: the warp path is model-free)."""
    with ComfyServer(tmp_path_factory.mktemp("comfyui-trajectory-io")) as started:
        yield started


@pytest.fixture(scope="module")
def comfy(server: ComfyServer) -> ComfyClient:
    return ComfyClient(server.url, timeout=60)


def tag() -> str:
    return uuid.uuid4().hex[:8]


def save_frames(workflow: dict, node: str, source: list, prefix: str) -> None:
    workflow[node] = {"class_type": "SaveImage", "inputs": {"images": source, "filename_prefix": prefix}}


def frames_of(client: ComfyClient, result: PromptResult, node: str) -> np.ndarray:
    files = sorted((f for f in result.files() if f.node_id == node), key=lambda f: f.filename)
    assert files, f"node {node} saved no frames"
    return np.stack([np.asarray(Image.open(io.BytesIO(client.view(f)))) for f in files])


def saved_trajectory(result: PromptResult, node: str) -> OutputFile:
    (item,) = result.history["outputs"][node]["trajectories"]
    return OutputFile(node, item["filename"], item["subfolder"], item["type"])


def test_nodes_are_listed_with_tooltips(comfy: ComfyClient) -> None:
    info = comfy.object_info()
    for node_id in ("TTM_SaveTrajectory", "TTM_LoadTrajectory"):
        node = info[node_id]
        assert node["category"] == "Through-The-Mask" and "Through-The-Mask" in node["display_name"]
        for name, spec in {**node["input"]["required"], **node["input"].get("optional", {})}.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert info["TTM_SaveTrajectory"]["output_node"] is True
    assert info["TTM_SaveTrajectory"]["output"] == ["STRING"]
    assert info["TTM_LoadTrajectory"]["output"] == ["TTM_TRAJECTORY", "TTM_OBJECTS", "TTM_PROMPTS", "IMAGE", "FLOAT"]
    optional = info["TTM_PromptDecompose"]["input"]["optional"]
    assert list(optional)[-1] == "llm_answer_text"  # appended: old workflows keep their widget order
    assert optional["llm_answer_text"][0] == "STRING" and optional["llm_answer_text"][1]["forceInput"] is True


def test_save_then_load_is_exact_and_renders_the_same_frames(server: ComfyServer, comfy: ComfyClient) -> None:
    name = tag()
    workflow = load_workflow("ttm_warp_paths_api.json")
    workflow["6"]["inputs"]["num_frames"] = FRAMES
    del workflow["8"], workflow["9"]
    workflow["20"] = {"class_type": "TTM_SaveTrajectory",
                      "inputs": {"trajectory": ["6", 0], "filename_prefix": f"ttm/saved_{name}"}}
    save_frames(workflow, "21", ["7", 0], f"ttm/original_{name}")
    first = comfy.run(workflow, timeout=300)
    saved = saved_trajectory(first, "20")
    assert saved.filename == f"saved_{name}_00001_.npz" and saved.subfolder == "ttm"
    data = comfy.view(saved)
    trajectory = read_trajectory(server.base / "output" / "ttm" / saved.filename)
    assert trajectory.transforms is not None and trajectory.num_frames == FRAMES  # authored paths keep their affines
    assert trajectory.objects.prompts.names == ("left coin", "big coin") and trajectory.fps == 16.0

    # Upload it into the input folder the way ttm-batch does, and render from the loaded trajectory alone.
    uploaded = comfy.upload_image(data, f"loaded_{name}.npz", subfolder="trajectories")
    assert uploaded == f"trajectories/loaded_{name}.npz"
    info = comfy.object_info()["TTM_LoadTrajectory"]["input"]["required"]["file"]
    assert uploaded in (info[1]["options"] if info[0] == "COMBO" else info[0])
    second = {
        "1": workflow["1"],
        "30": {"class_type": "TTM_LoadTrajectory", "inputs": {"file": uploaded}},
        "31": {"class_type": "TTM_WarpMotionToVideo",
               "inputs": {"image": ["1", 0], "trajectory": ["30", 0], "feather": 1.0}},
        "32": {"class_type": "TTM_SaveTrajectory",
               "inputs": {"trajectory": ["30", 0], "filename_prefix": f"ttm/resaved_{name}"}},
        "33": {"class_type": "PreviewAny", "inputs": {"source": ["30", 4]}},
    }
    save_frames(second, "34", ["31", 0], f"ttm/loaded_{name}")
    save_frames(second, "35", ["30", 3], f"ttm/preview_{name}")
    result = comfy.run(second, timeout=300)
    assert comfy.view(saved_trajectory(result, "32")) == data  # saved again: the very same bytes
    assert np.array_equal(frames_of(comfy, result, "34"), frames_of(comfy, first, "21"))
    preview = frames_of(comfy, result, "35")
    assert preview.shape == (FRAMES, 288, 384, 3)
    assert np.array_equal(preview, np.rint(trajectory.color_video().numpy() * 255).astype(np.uint8))
    assert json.loads(result.history["outputs"]["33"]["text"][0]) == 16.0


def test_names_outside_the_folders_and_bad_files_are_refused(server: ComfyServer, comfy: ComfyClient) -> None:
    def load(file: str) -> dict:
        return {"30": {"class_type": "TTM_LoadTrajectory", "inputs": {"file": file}},
                "33": {"class_type": "PreviewAny", "inputs": {"source": ["30", 4]}}}

    (server.base / "output" / "escape.npz").write_bytes(b"x")
    expect_failure(comfy, load("../output/escape.npz"), "file: '../output/escape.npz' leaves the input folder",
                   "Fix: pick a file from the list")
    expect_failure(comfy, load("/etc/passwd"), "file: '/etc/passwd' is not a name inside the input folder")
    expect_failure(comfy, load("nope.npz"), "file: 'nope.npz' is not in ComfyUI's input folder")
    (server.base / "input" / "outside").symlink_to(server.base / "output", target_is_directory=True)
    expect_failure(comfy, load("outside/escape.npz"), "points outside the input folder")
    comfy.upload_image((server.base / "input" / "ttm_coins.png").read_bytes(), "not_a_trajectory.npz")
    expect_failure(comfy, load("not_a_trajectory.npz"),
                   "file: 'not_a_trajectory.npz' is not a trajectory file (not a ZIP / .npz archive, or truncated)",
                   "Fix: save it again with Save Trajectory")
    workflow = load_workflow("ttm_warp_paths_api.json")
    workflow["20"] = {"class_type": "TTM_SaveTrajectory",
                      "inputs": {"trajectory": ["6", 0], "filename_prefix": "../outside"}}
    expect_failure(comfy, workflow, "filename_prefix: '../outside' contains '..' or '.' parts")


ANSWER = ('Motion-specific prompt: "Two coins slide across the table."\n'
          "Answer: [[left coin: a small silver coin sliding right] [big coin: a large coin gliding down]]")


def decompose(answer: str, backend: str = "llm_answer") -> dict:
    workflow = load_workflow("ttm_warp_paths_api.json")
    prompts = workflow["4"]
    prompts["inputs"].update(backend=backend, llm_answer="", llm_answer_text=["40", 0])
    return {"40": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": answer}}, "4": prompts,
            "41": {"class_type": "PreviewAny", "inputs": {"source": ["4", 3]}},
            "42": {"class_type": "PreviewAny", "inputs": {"source": ["4", 2]}}}


def test_prompt_decompose_parses_an_answer_from_its_socket(comfy: ComfyClient) -> None:
    result = comfy.run(decompose(ANSWER), timeout=120)
    parsed = json.loads(result.history["outputs"]["41"]["text"][0])
    assert parsed == {"motion_prompt": "Two coins slide across the table.",
                      "objects": [{"name": "left coin", "prompt": "a small silver coin sliding right"},
                                  {"name": "big coin", "prompt": "a large coin gliding down"}]}
    assert result.history["outputs"]["42"]["text"][0] == "Two coins slide across the table."
    expect_failure(comfy, decompose("Sure! Here you go."), "llm_answer_text: no motion prompt or object list found")
    literal = decompose(ANSWER)
    literal["4"]["inputs"]["llm_answer_text"] = "Sure! Here you go."  # given as text in an API prompt
    expect_failure(comfy, literal, "llm_answer_text: no motion prompt or object list found")  # refused at queue
    expect_failure(comfy, decompose(ANSWER, backend="manual"),
                   "llm_answer_text: an LLM answer is connected but the backend is 'manual'",
                   "Fix: set backend to llm_answer to parse it, or disconnect llm_answer_text")
    # The shipped workflow, saved before the socket existed, still runs unchanged.
    old = load_workflow("ttm_warp_paths_api.json")
    assert "llm_answer_text" not in old["4"]["inputs"]
    assert comfy.run({"4": old["4"], "41": {"class_type": "PreviewAny", "inputs": {"source": ["4", 3]}}},
                     timeout=120).status == "success"
