"""SAM2 loading (Meta checkpoints with inferred configs, Hugging Face folders) and segmentation modes.

The tiny models have random weights, so masks carry no meaning; what is checked is the plumbing:
the right model is built from the file, every prompt reaches SAM2 exactly as SAM2's own API
would pass it (compared against SAM2's predictors called directly), one mask per object in the
prompts' order with ids 1..L, overlaps resolved by logit, and clear errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import ROOT
from tiny_models import TinyModels
from ttm_core.errors import TTMInputError
from ttm_core.segment.first_frame import (
    ObjectClicks,
    gather_clicks,
    image_predictor,
    kjnodes_boxes,
    kjnodes_points,
    parse_boxes,
    parse_points,
    resolve_overlaps,
    segment_objects,
)
from ttm_core.segment.sam2 import _packaged_config, build_meta_model, infer_meta_config, load_sam2, read_state_dict
from ttm_core.types import ObjectPrompt, Prompts

COINS = ROOT / "examples" / "ttm_coins.png"


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """float32 [288, 384, 3] in 0..1."""
    return torch.from_numpy(np.asarray(Image.open(COINS).convert("RGB")) / 255.0).float()


@pytest.fixture(scope="module")
def prompts() -> Prompts:
    return Prompts("Two coins slide.", "Two coins slide.",
                   (ObjectPrompt("left coin", "a small coin"), ObjectPrompt("big coin", "a large coin")))


@pytest.fixture(scope="module")
def meta(tiny_models: TinyModels):
    """The tiny Meta SAM2 at 256 px (its yaml sidecar): 16x cheaper image encodes than 1024 px."""
    return load_sam2(tiny_models.meta_small_image)


@pytest.fixture(scope="module")
def hf(tiny_models: TinyModels):
    return load_sam2(tiny_models.hf_sam2, video=False)


# --------------------------------------------------------------------------- loading

def _normalised(cfg) -> dict:
    """The model config with the entries the packaged yaml leaves at the code defaults filled in."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    model["memory_encoder"].setdefault("in_dim", 256)
    model["memory_encoder"]["mask_downsampler"].setdefault("embed_dim", 256)
    model["image_encoder"]["trunk"].setdefault("window_pos_embed_bkg_spatial_size", [14, 14])
    return model


@pytest.mark.parametrize("version, size", [("2", "t"), ("2.1", "t"), ("2.1", "s"), ("2.1", "b+"), ("2.1", "l")])
def test_config_inferred_from_checkpoint_equals_metas_config(version: str, size: str) -> None:
    """Every layout Meta ships: the config read back from the weights' shapes is the packaged one."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(_packaged_config(version, size))
    state = build_meta_model(cfg).state_dict()
    inferred, description = infer_meta_config(state, "x.pt")
    assert _normalised(inferred) == _normalised(cfg)
    assert description.startswith(f"SAM {version} Hiera-")


def test_unknown_layout_asks_for_a_yaml(tiny_models: TinyModels) -> None:
    state = read_state_dict(tiny_models.meta_pt)
    state = {k: v for k, v in state.items() if not k.startswith("image_encoder.trunk.blocks.11.")}
    with pytest.raises(TTMInputError, match=r"stage layout \[1, 2, 7, 1\].*put the model's yaml config beside it"):
        infer_meta_config(state, "custom.pt")


def test_meta_checkpoint_pt_and_safetensors_load_the_same_weights(tiny_models: TinyModels, image: torch.Tensor,
                                                                  prompts: Prompts) -> None:
    meta = load_sam2(tiny_models.meta_pt)
    other = load_sam2(tiny_models.meta_safetensors)
    assert meta.backend == other.backend == "meta"
    assert "SAM 2.1 Hiera-tiny layout (config inferred" in meta.description
    assert meta.image_size == 1024 and meta.can_track and meta.video_model is meta.model
    assert meta.model.image_encoder.trunk.patch_embed.proj.weight.shape[0] == 8  # the tiny width, read from shapes
    a, b = meta.model.state_dict(), other.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not meta.model.training
    clicks = gather_clicks(prompts, (288, 384), boxes="[[50, 100, 150, 200], [280, 120, 380, 240]]")
    result = segment_objects(meta, image, prompts, "points_boxes", clicks=clicks)  # runs at 1024 px
    assert result.objects.masks.shape == (2, 288, 384) and result.objects.ids == (1, 2)


def test_sidecar_yaml_overrides_the_inference(meta) -> None:
    assert meta.image_size == 256 and "ttm-tiny-256.yaml" in meta.description


def test_hf_folder_loads_image_and_video_models(tiny_models: TinyModels, hf) -> None:
    assert hf.backend == "hf" and hf.image_size == 256 and not hf.can_track
    with_video = load_sam2(tiny_models.hf_sam2, video=True)
    assert with_video.can_track and type(with_video.video_model).__name__ == "Sam2VideoModel"
    assert type(with_video.model).__name__ == "Sam2Model"


def test_loading_refuses_what_is_not_sam2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TTMInputError, match=r"not a .pt, .pth or .safetensors"):
        load_sam2(tmp_path / "notes.txt")
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(TTMInputError, match=r"other.pt is not a SAM 2 checkpoint"):
        load_sam2(tmp_path / "other.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # needs unpickling code: refused
    with pytest.raises(TTMInputError, match="could not be read as a checkpoint"):
        load_sam2(tmp_path / "pickled.pt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(TTMInputError, match="not a Hugging Face SAM2 folder"):
        load_sam2(tmp_path / "folder")


def test_missing_sam2_package_says_how_to_install(tiny_models: TinyModels) -> None:
    """Without the sam2 package the library still imports; loading a Meta checkpoint says what to do."""
    code = ("import sys; sys.modules['sam2'] = None\n"
            "from ttm_core.segment.sam2 import load_sam2, sam2_available\n"
            "assert not sam2_available()\n"
            "from ttm_core.errors import TTMInputError\n"
            f"try:\n    load_sam2({str(tiny_models.meta_pt)!r})\n"
            "except TTMInputError as err:\n    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "model: this is a Meta SAM2 checkpoint but the sam2 package is not installed" in result.stdout
    assert "--no-build-isolation sam2==1.1.0" in result.stdout


def test_importing_sam2_leaves_hydra_uninitialised() -> None:
    code = ("from hydra.core.global_hydra import GlobalHydra\n"
            "from ttm_core.segment.sam2 import import_sam2\n"
            "import_sam2()\n"
            "assert not GlobalHydra.instance().is_initialized()\n"
            "from hydra import initialize_config_module\n"
            "initialize_config_module('sam2', version_base='1.2')  # another pack can still initialise Hydra\n"
            "import_sam2()\n"
            "assert GlobalHydra.instance().is_initialized()  # ... and keeps its state\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --------------------------------------------------------------------------- prompt parsing

def test_points_json_by_name_id_and_list(prompts: Prompts) -> None:
    clicks = parse_points('{"left coin": {"positive": [[10, 20], {"x": 30, "y": 40}], "negative": [[5, 5]]},'
                          ' "2": [300, 200]}', prompts, (288, 384))
    assert clicks[0] == ObjectClicks(((10.0, 20.0), (30.0, 40.0), (5.0, 5.0)), (1, 1, 0))
    assert clicks[1] == ObjectClicks(((300.0, 200.0),), (1,))
    listed = parse_points('{"units": "normalized", "objects": [[[0.5, 0.5]]]}', prompts, (288, 384))
    assert listed == {0: ObjectClicks(((192.0, 144.0),), (1,))}


def test_boxes_json_and_kjnodes_formats(prompts: Prompts) -> None:
    boxes = parse_boxes('{"big coin": [300, 200, 250, 100], "1": {"startX": 1, "startY": 2, "endX": 50, "endY": 60}}',
                        prompts, (288, 384))
    assert boxes[1].box == (250.0, 100.0, 300.0, 200.0)  # corners in any order
    assert boxes[0].box == (1.0, 2.0, 50.0, 60.0)
    assert kjnodes_boxes([(10, 20, 110, 120)], prompts, (288, 384))[0].box == (10.0, 20.0, 110.0, 120.0)
    assert kjnodes_boxes([[(10, 20, 110, 120), (150, 20, 250, 120)]], prompts, (288, 384))[1].box[0] == 150.0


def test_kjnodes_coordinate_strings(prompts: Prompts) -> None:
    clicks = kjnodes_points('[{"x": 100, "y": 150}, {"x": 340, "y": 180}]', "[{'x': 10, 'y': 10}]", prompts,
                            (288, 384))
    assert clicks[0] == ObjectClicks(((100.0, 150.0), (10.0, 10.0)), (1, 0))
    assert clicks[1].points[0] == (340.0, 180.0)
    normalized = kjnodes_points('[{"x": 0.25, "y": 0.5}]', None, prompts, (288, 384))
    assert normalized[0].points == ((96.0, 144.0),)


@pytest.mark.parametrize("kwargs, message", [
    ({"points": '{"dog": [[1, 2]]}'}, "points: there is no object 'dog' (objects: 1 = 'left coin', 2 = 'big coin')"),
    ({"points": '{"left coin": [[1, 2]'}, "points: not valid JSON"),
    ({"points": '{"left coin": [[900, 2]]}'}, "lies outside the 384x288 image"),
    ({"points": '{"left coin": {"negative": [[1, 2]]}}'}, "'left coin' has only negative points"),
    ({"boxes": '{"left coin": [1, 2, 3]}'}, "boxes: box of 'left coin' is [1, 2, 3]"),
    ({"boxes": '{"left coin": [5, 5, 5.5, 40]}'}, "less than a pixel wide"),
    ({"positive_coords": '[{"x": 1, "y": 1}, {"x": 2, "y": 2}, {"x": 3, "y": 3}]'},
     "positive_coords: 3 positive points for 2 objects"),
    ({"bboxes": [(1, 1, 20, 20)] * 3}, "bboxes: 3 boxes for 2 objects"),
    ({"boxes": '{"left coin": [1, 2, 30, 40]}', "bboxes": [(5, 5, 50, 50)]}, "object 'left coin' got two different"),
])
def test_bad_prompts_name_the_input_and_the_fix(prompts: Prompts, kwargs: dict, message: str) -> None:
    with pytest.raises(TTMInputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        gather_clicks(prompts, (288, 384), **kwargs)


# --------------------------------------------------------------------------- segmentation

def test_overlaps_go_to_the_highest_logit() -> None:
    logits = torch.tensor([[[2.0, 2.0, -1.0, -3.0]], [[1.0, 3.0, 0.5, -1.0]]])
    masks = resolve_overlaps(logits)
    assert masks.tolist() == [[[1.0, 0.0, 0.0, 0.0]], [[0.0, 1.0, 1.0, 0.0]]]


def _expected_masks(reference_logits: list[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack(reference_logits)
    winner = stacked.argmax(0)
    return torch.stack([(stacked[i] > 0) & (winner == i) for i in range(len(reference_logits))]).float()


def test_meta_points_and_boxes_match_sam2s_own_predictor(meta, image: torch.Tensor, prompts: Prompts) -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    reference = SAM2ImagePredictor(meta.model)
    reference._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]  # SAM2 hard-codes 1024 px; this model is 256
    reference.set_image(image.numpy())
    for clicks_text, kwargs in [
        ('{"left coin": [[100, 150]], "big coin": {"positive": [[340, 180]], "negative": [[10, 10]]}}', {}),
        ("", {"boxes": "[[50, 100, 150, 200], [280, 120, 380, 240]]"}),
        ("", {"positive_coords": '[{"x": 100, "y": 150}, {"x": 340, "y": 180}]', "bboxes": [(40, 90, 160, 210)]}),
    ]:
        clicks = gather_clicks(prompts, (288, 384), points=clicks_text, **kwargs)
        result = segment_objects(meta, image, prompts, "points_boxes", clicks=clicks)
        expected = []
        for i in range(2):
            c = clicks[i]
            multimask = c.box is None and len(c.points) == 1
            logits, scores, _ = reference.predict(
                point_coords=np.array(c.points, dtype=np.float32) if c.points else None,
                point_labels=np.array(c.labels) if c.points else None,
                box=np.array(c.box, dtype=np.float32) if c.box else None,
                multimask_output=multimask, return_logits=True)
            expected.append(torch.from_numpy(logits[int(np.argmax(scores))]))
        objects = result.objects
        assert objects.ids == (1, 2) and objects.prompts.names == ("left coin", "big coin")
        assert objects.masks.shape == (2, 288, 384)
        assert torch.equal(objects.masks, _expected_masks(expected))
        assert bool((objects.masks.sum(0) <= 1).all())  # no pixel belongs to two objects
        assert json.loads(result.boxes_json())["objects"]["left coin"] == list(result.boxes[0])


def test_hf_points_and_boxes_match_transformers_own_call(hf, image: torch.Tensor, prompts: Prompts) -> None:
    from einops import rearrange

    clicks = gather_clicks(prompts, (288, 384), points='{"left coin": [[100, 150], [120, 160]]}',
                           boxes='{"big coin": [280, 120, 380, 240]}')
    result = segment_objects(hf, image, prompts, "points_boxes", clicks=clicks)
    expected = []
    for kwargs in ({"input_points": [[[[100.0, 150.0], [120.0, 160.0]]]], "input_labels": [[[1, 1]]]},
                   {"input_boxes": [[[280.0, 120.0, 380.0, 240.0]]]}):
        inputs = hf.processor(images=rearrange(image, "h w c -> c h w"), do_rescale=False, return_tensors="pt",
                              **kwargs)
        with torch.inference_mode():
            out = hf.model(**inputs, multimask_output=False)
        logits = hf.processor.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)[0]
        expected.append(logits[0, 0])
    assert result.objects.ids == (1, 2)
    assert torch.equal(result.objects.masks, _expected_masks(expected))


def test_one_point_takes_the_mask_sam2_scores_best(meta, image: torch.Tensor) -> None:
    single = Prompts("g", "m", (ObjectPrompt("coin", "a coin"),))
    predictor = image_predictor(meta, image, torch.device("cpu"))
    logits, scores = predictor.predict(ObjectClicks(((100.0, 150.0),), (1,)), True)
    assert logits.shape == (3, 288, 384)
    result = segment_objects(meta, image, single, "points_boxes", clicks={0: ObjectClicks(((100.0, 150.0),), (1,))})
    assert torch.equal(result.objects.masks[0], (logits[int(scores.argmax())] > 0).float())
    assert result.scores[0] == pytest.approx(float(scores.max()))


def test_every_object_needs_a_prompt(meta, image: torch.Tensor, prompts: Prompts) -> None:
    with pytest.raises(TTMInputError, match="points: no point or box for 'big coin'"):
        segment_objects(meta, image, prompts, "points_boxes", clicks={0: ObjectClicks(box=(1, 1, 50, 50))})
    with pytest.raises(TTMInputError, match="zero objects"):
        segment_objects(meta, image, Prompts("g", "m"), "points_boxes")
    with pytest.raises(TTMInputError, match="mode: unknown mode 'clicks'"):
        segment_objects(meta, image, prompts, "clicks")


@pytest.mark.parametrize("backend", ["meta", "hf"])
def test_text_mode_detects_each_object_from_its_name(request: pytest.FixtureRequest, backend: str,
                                                     tiny_models: TinyModels, image: torch.Tensor) -> None:
    from ttm_core.segment.detect import detect_objects, load_detector

    sam2 = request.getfixturevalue(backend)  # a Meta checkpoint or a Hugging Face folder
    detector = load_detector(tiny_models.detector)
    three = Prompts("g", "m", (ObjectPrompt("left coin", "a"), ObjectPrompt("right coin", "b"),
                               ObjectPrompt("table", "c")))
    boxes = detect_objects(detector, image, list(three.names), [0, 1, 2], 0.0, 0.0)
    assert sorted(boxes) == [0, 1, 2]
    assert (boxes[0][0][0] + boxes[0][0][2]) <= (boxes[1][0][0] + boxes[1][0][2])  # left of right
    # One object pinned by a box: the detector finds the others, SAM2 segments all from boxes.
    clicks = {2: ObjectClicks(box=(300.0, 200.0, 380.0, 280.0))}
    result = segment_objects(sam2, image, three, "text", clicks=clicks, detector=detector, box_threshold=0.0,
                             text_threshold=0.0)
    assert result.objects.ids == (1, 2, 3) and result.objects.masks.shape == (3, 288, 384)
    assert bool((result.objects.masks.sum((1, 2)) > 0).all())
    reference = image_predictor(sam2, image, torch.device("cpu"))
    expected = [reference.predict(ObjectClicks(box=boxes[i][0]), False)[0][0] for i in (0, 1)]
    expected.append(reference.predict(clicks[2], False)[0][0])
    assert torch.equal(result.objects.masks, _expected_masks(expected))
    with pytest.raises(TTMInputError, match="detector: text mode needs an open-vocabulary detector"):
        segment_objects(sam2, image, three, "text")
    with pytest.raises(TTMInputError, match=r"box_threshold: the detector found no box for 'left coin', "
                                            r"'right coin', 'table' \(box_threshold 1.0"):
        segment_objects(sam2, image, three, "text", detector=detector, box_threshold=1.0)


def test_automatic_mode_one_mask_per_object_left_to_right(meta, hf, image: torch.Tensor) -> None:
    single = Prompts("g", "m", (ObjectPrompt("coin", "a coin"),))
    for model in (meta, hf):
        result = segment_objects(model, image, single, "automatic", auto_points_per_side=4, auto_score_threshold=0.0)
        assert result.objects.ids == (1,) and result.objects.masks.shape == (1, 288, 384)
        assert 0 < int(result.objects.masks.sum()) <= 0.5 * 288 * 384  # bigger masks are taken for background
    two = Prompts("g", "m", (ObjectPrompt("a", "a"), ObjectPrompt("b", "b")))
    with pytest.raises(TTMInputError, match=r"auto_score_threshold: found 0 distinct masks for 2 objects"):
        segment_objects(meta, image, two, "automatic", auto_points_per_side=2, auto_score_threshold=1.0)
