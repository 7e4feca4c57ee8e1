"""The trained backend of Image To Motion on a tiny diffusers Wan 2.2 TI2V and random Stage 1 checkpoints.

``motion.trained.generate_trajectory``: shapes, ids and the decoder's notes; the same seed gives the same
trajectory, also from the checkpoint read again from disk; the labels resized back to the objects' size
when the model runs at another; bad input (a Stage 2 checkpoint, another base model, too many objects,
size and length mismatches) refused before sampling, naming the input.
"""

from __future__ import annotations

import pytest
import torch

from stage2_cases import one_thread, test_image, two_balls  # noqa: F401 (fixtures)
from tiny_diffusers import save_tiny
from trained_checkpoints import diffusers_checkpoint, stage1_checkpoint
from ttm_core.errors import TTMInputError
from ttm_core.motion.trained import Stage1Sampling, generate_trajectory, palette_labels
from ttm_core.stage2.diffusers.loader import load_video_model
from ttm_core.stage2.trained import load_trained
from ttm_core.types import ObjectPrompt, Objects, Prompts

VARIANT = "wan2.2-ti2v-5b"
SETTINGS = Stage1Sampling(frames=9, steps=2, seed=3, cfg=1.0, fps=8.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stage1")
    model = load_video_model(save_tiny(VARIANT, root / VARIANT))
    transformer = model.denoisers[0]
    other = load_video_model(save_tiny("wan2.1-i2v", root / "wan2.1-i2v"))
    return {"model": model, "path": stage1_checkpoint(transformer, VARIANT, root / "ttm" / "s1.safetensors", seed=5),
            "stage2": load_trained(diffusers_checkpoint(transformer, VARIANT, root / "ttm" / "s2.safetensors")),
            "other": load_trained(stage1_checkpoint(other.denoisers[0], "wan2.1-i2v",
                                                    root / "ttm" / "w21.safetensors"))}


def test_generates_a_trajectory_of_the_objects(setup: dict, one_thread) -> None:
    objects = two_balls().objects
    steps: list[tuple[int, int]] = []
    trajectory, reading = generate_trajectory(setup["model"], load_trained(setup["path"]), test_image(), objects,
                                              "two balls move", SETTINGS, progress=lambda d, n: steps.append((d, n)))
    assert steps == [(1, 2), (2, 2)]
    assert trajectory.labels.shape == (9, 64, 64) and trajectory.labels.dtype == torch.uint8
    assert trajectory.objects is objects and trajectory.fps == 8.0 and trajectory.depth_order == (1, 2)
    assert set(torch.unique(trajectory.labels).tolist()) <= {0, 1, 2}
    for i, object_id in enumerate(objects.ids):  # frame 0 is s(0) itself
        assert torch.equal(trajectory.labels[0] == object_id, objects.binary()[i])
    assert reading.ids == objects.ids and reading.labels.shape == (9, 64, 64)
    assert torch.equal(reading.labels[1:], trajectory.labels[1:])
    assert reading.confidence.shape == (9, 2) and reading.absent.shape == (9, 2)
    # Every absent run is said, naming the object (the random tiny model draws no readable masks).
    for col, name in enumerate(objects.prompts.names):
        gone = reading.absent[:, col]
        assert bool(gone.any()) == any(f"({name!r}) absent" in note for note in reading.notes), reading.notes


def test_same_seed_same_trajectory_also_after_reloading_the_checkpoint(setup: dict, one_thread) -> None:
    objects = two_balls().objects
    image = test_image(seed=2)

    def run(seed: int):
        weights = load_trained(setup["path"])  # read from disk every time
        return generate_trajectory(setup["model"], weights, image, objects, "two balls move",
                                   Stage1Sampling(frames=9, steps=2, seed=seed, cfg=1.0, fps=8.0))

    (a, ra), (b, rb) = run(7), run(7)
    assert torch.equal(a.labels, b.labels) and torch.equal(ra.confidence, rb.confidence)
    assert ra.notes == rb.notes
    transformer = setup["model"].denoisers[0]
    assert type(transformer.patch_embedding).__name__ == "Conv3d"  # the stock model is back after each run
    assert transformer.patch_embedding.in_channels == transformer.config.in_channels


def test_labels_come_back_at_the_objects_size(setup: dict, one_thread) -> None:
    masks = torch.zeros(1, 72, 76)
    masks[0, 20:50, 10:40] = 1.0
    objects = Objects(Prompts("a ball", "the ball rolls", (ObjectPrompt("ball", "a red ball"),)), masks)
    image = torch.nn.functional.interpolate(test_image().permute(2, 0, 1)[None], size=(72, 76))[0].permute(1, 2, 0)
    trajectory, reading = generate_trajectory(setup["model"], load_trained(setup["path"]), image, objects,
                                              "the ball rolls", SETTINGS)
    assert trajectory.labels.shape == (9, 72, 76) and reading.labels.shape == (9, 72, 76)
    assert "generated at 64x64" in reading.notes[0] and "resized back (nearest neighbour)" in reading.notes[0]
    assert torch.equal(trajectory.labels[0] == 1, objects.binary()[0])


def test_bad_input_is_refused_before_sampling_naming_the_input(setup: dict) -> None:
    model, weights, objects = setup["model"], load_trained(setup["path"]), two_balls().objects
    image = test_image()
    calls: list[int] = []

    def refused(name: str, *needles: str, **changes) -> None:
        args = {"model": model, "weights": weights, "image": image, "objects": objects,
                "motion_prompt": "two balls move", "settings": SETTINGS, **changes}
        with pytest.raises(TTMInputError) as err:
            generate_trajectory(**args, progress=lambda d, n: calls.append(d))
        assert err.value.input_name == name, str(err.value)
        for needle in needles:
            assert needle in str(err.value), str(err.value)

    refused("trained", "s2.safetensors is a Stage 2 checkpoint, this is Stage 1", "load a Stage 1 checkpoint",
            weights=setup["stage2"])
    refused("trained", "w21.safetensors was trained on wan, 36 input channels", weights=setup["other"])
    refused("trained", "not a trained checkpoint", weights="ttm.safetensors")
    refused("image", "the image is 48x64 but the objects' masks are 64x64", image=image[:, :48])
    refused("num_frames", "8 frames is not a length Wan 2.2 TI2V-5B generates (1 + 4k)", "5 or 9",
            settings=Stage1Sampling(frames=8, steps=2))
    small = torch.zeros(1, 40, 60)  # on the 32 px grid: 32 x 32, a square from a 3:2 image
    small[0, 10:30, 10:40] = 1.0
    refused("image", "generates 32x32, the image is 60x40: the aspect ratio would change by 33%", "crop the image",
            objects=Objects(Prompts("a", "m", (ObjectPrompt("ball", "a ball"),)), small),
            image=torch.full((40, 60, 3), 0.5))
    assert calls == []  # nothing was sampled
    # More objects than the palette's 8 colours: refused by the objects themselves and by the palette mapping.
    with pytest.raises(TTMInputError) as err:
        Prompts("g", "m", tuple(ObjectPrompt(f"o{i}", "x") for i in range(9)))
    assert err.value.input_name == "objects"
    with pytest.raises(TTMInputError, match="9 objects but the training palette has 8 colours"):
        palette_labels(torch.zeros(4, 4, dtype=torch.uint8), tuple(range(1, 10)))
    with pytest.raises(TTMInputError) as err:
        Stage1Sampling(frames=9, cfg=0.5)
    assert err.value.input_name == "cfg"
