"""Stage 2 through diffusers, in process: detection, sizes, prompts, equality with the stock
pipelines, the dual clock on the tensors, and the model left unpatched after a run or a cancel.

Every model is a tiny random-weight pipeline saved to disk in the users' layout
(``stage2_cases.tiny_model_dir``) and loaded by ``load_video_model``, the loader users run.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from stage2_cases import one_thread, test_image, tiny_model_dir, two_balls  # noqa: F401 (fixtures)
from tiny_diffusers import TINY_FAMILIES
from ttm_core.errors import TTMInputError
from ttm_core.stage2.diffusers.loader import load_video_model
from ttm_core.stage2.diffusers.run import _pil, generate, size_rules
from ttm_core.stage2.diffusers.sizes import SizeRules, fit_frames, plan_frames
from ttm_core.stage2.families import VARIANTS
from ttm_core.stage2.families.detect import detect_family, resolve_model_folder
from ttm_core.stage2.guidance import DualClock, noise_to
from ttm_core.stage2.settings import MaskedAttention, Sampling, Stage2Settings
from ttm_core.types import ObjectPrompt, Prompts

OFF = Stage2Settings(MaskedAttention(self_strength=0.0, cross_strength=0.0), DualClock(0.0, 0.0))
_MODELS: dict[str, object] = {}


def model(tiny_model_dir: Path, family: str):
    """The tiny model of a family, loaded once per test session by the users' loader."""
    if family not in _MODELS:
        _MODELS[family] = load_video_model(tiny_model_dir / family)
    return _MODELS[family]


def frames_for(family: str) -> int:
    return 4 if family == "i2vgen-xl" else 9


def stock(m, image: torch.Tensor, prompt: str, negative: str, seed: int, steps: int, cfg: float, frames: int,
          fps: float) -> torch.Tensor:
    """The stock diffusers pipeline with prompt strings: float [F, H, W, 3]."""
    kwargs = dict(image=_pil(image), prompt=prompt, negative_prompt=negative, height=64, width=64, num_frames=frames,
                  num_inference_steps=steps, guidance_scale=cfg, generator=torch.Generator().manual_seed(seed),
                  output_type="pt")
    if m.variant.key == "i2vgen-xl":
        kwargs.update(target_fps=max(1, round(fps)), decode_chunk_size=8, clip_skip=None)
    else:
        kwargs["max_sequence_length"] = m.text_tokens
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # I2VGen-XL samples its image latents from the global RNG
        return m.pipeline(**kwargs).frames[0].permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_is_detected_from_its_saved_folder(tiny_model_dir: Path, family: str) -> None:
    detected = detect_family(tiny_model_dir / family)
    assert detected.variant.key == family
    assert set(detected.variant.denoisers) <= set(detected.index.components)


def test_wan22_ti2v_is_detected_in_the_huggingface_layout(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Wan-AI/Wan2.2-TI2V-5B-Diffusers ships a WanPipeline index with expand_timesteps: it runs as I2V."""
    folder = tmp_path / "Wan2.2-TI2V-5B-Diffusers"
    shutil.copytree(tiny_model_dir / "wan2.2-ti2v-5b", folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "WanPipeline"
    index["transformer_2"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = load_video_model(folder)
    assert loaded.variant.key == "wan2.2-ti2v-5b"
    assert type(loaded.pipeline).__name__ == "WanImageToVideoPipeline" and loaded.pipeline.config.expand_timesteps


def _index(folder: Path, class_name: str, **components: list) -> Path:
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, **components}))
    return folder


@pytest.mark.parametrize("class_name, components, needles", [
    ("CogVideoXPipeline", {"transformer": ["diffusers", "CogVideoXTransformer3DModel"]},
     ["CogVideoXPipeline (transformer: CogVideoXTransformer3DModel)", "text-to-video", "CogVideoX-5b-I2V"]),
    ("StableVideoDiffusionPipeline", {"unet": ["diffusers", "UNetSpatioTemporalConditionModel"]},
     ["StableVideoDiffusionPipeline", "no text prompt", "I2VGen-XL"]),
    ("WanPipeline", {"transformer": ["diffusers", "WanTransformer3DModel"]}, ["WanPipeline", "text-to-video Wan"]),
    ("StableDiffusionPipeline", {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]},
     ["StableDiffusionPipeline (unet: UNet2DConditionModel, vae: AutoencoderKL)", "not a supported"]),
])
def test_unsupported_folders_are_refused_naming_what_was_found(tmp_path: Path, class_name: str, components: dict,
                                                               needles: list[str]) -> None:
    folder = _index(tmp_path / "some-model", class_name, **components)
    with pytest.raises(TTMInputError) as err:
        detect_family(folder)
    assert err.value.input_name == "model"
    for needle in needles:
        assert needle in str(err.value)


def test_folders_without_model_index_and_unknown_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "wan2.1_i2v_480p_14B_bf16.safetensors").write_bytes(b"")
    with pytest.raises(TTMInputError, match=r"'loose' has no model_index.json .*wan2.1_i2v_480p_14B_bf16.safetensors"):
        detect_family(tmp_path / "loose")
    _index(tmp_path / "real", "I2VGenXLPipeline", unet=["diffusers", "I2VGenXLUNet"])
    with pytest.raises(TTMInputError, match=r"no folder 'CogVideoX-5b-I2V' .*\(found: real\)"):
        resolve_model_folder("CogVideoX-5b-I2V", [tmp_path])
    with pytest.raises(TTMInputError, match="not a folder name"):
        resolve_model_folder("../real", [tmp_path])


# ------------------------------------------------------------------------------- sizes and frames
def test_frame_plans_follow_each_family_and_say_what_changed() -> None:
    wan = SizeRules("Wan 2.1 I2V", (16, 16), None, None, 4, True, 5)
    plan = plan_frames(wan, (300, 390), 12, 16.0)
    assert (plan.height, plan.width, plan.num_frames) == (288, 384, 9)  # the image's size on the 16 px grid
    assert plan.crop == (4, 0, 296, 390)  # 390 x 300 centre-cropped to 384:288 = 4:3
    assert "the 390x300 image is generated at 384x288" in plan.notes[0]
    assert plan.fps == pytest.approx(16.0 * 8 / 11)  # keeps the 12-frame trajectory's duration
    assert any("12 frames is not a legal length" in n for n in plan.notes)
    assert plan.frame_sources() == [0, 1, 3, 4, 6, 7, 8, 10, 11]
    explicit = plan_frames(wan, (288, 384), 49, 16.0, width=100, height=70)
    assert (explicit.width, explicit.height, explicit.num_frames) == (96, 64, 49)
    assert explicit.crop == (16, 0, 272, 384) and "rounded down to 96x64" in explicit.notes[0]
    cog10 = SizeRules("CogVideoX 1.0 I2V", (16, 16), (480, 720), 49, 4, True, 5)
    fixed = plan_frames(cog10, (288, 384), 81, 16.0)
    assert (fixed.height, fixed.width, fixed.num_frames, fixed.crop) == (480, 720, 49, (16, 0, 272, 384))
    assert any("centre-cropped to 384x256" in n for n in fixed.notes)
    unet = SizeRules("I2VGen-XL", (8, 8), None, None, 1, False, 2)
    same = plan_frames(unet, (64, 64), 7, 8.0)
    assert (same.height, same.width, same.num_frames, same.fps, same.notes) == (64, 64, 7, 8.0, ())
    with pytest.raises(TTMInputError, match="only one of width and height"):
        plan_frames(unet, (64, 64), 7, 8.0, width=64)


def test_fitting_crops_then_resizes() -> None:
    cog10 = SizeRules("CogVideoX 1.0 I2V", (16, 16), (32, 48), 9, 4, True, 5)
    plan = plan_frames(cog10, (48, 48), 9, 8.0)  # 1:1 -> 3:2: rows 8..40 are kept
    frames = torch.zeros(1, 48, 48, 3)
    frames[:, 8:40] = 1.0
    fitted = fit_frames(frames, plan)
    assert fitted.shape == (1, 32, 48, 3) and float(fitted.min()) == 1.0


# ------------------------------------------------------------------------------ equality and plain
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_guidance_off_and_strength_zero_equal_the_stock_pipeline(tiny_model_dir: Path, family: str) -> None:
    m = model(tiny_model_dir, family)
    trajectory, image = two_balls(), test_image()
    frames = frames_for(family)
    sampling = Sampling(seed=7, steps=3, cfg=5.0, negative_prompt="blurry static", width=64, height=64,
                        num_frames=frames)
    ours = generate(m, image, trajectory, trajectory.objects.prompts, OFF, sampling)
    expected = stock(m, image, trajectory.objects.prompts.global_prompt, "blurry static", 7, 3, 5.0, frames, ours.fps)
    assert ours.frames.shape == (frames, 64, 64, 3) and ours.frames.dtype == torch.float32
    assert 0.0 <= float(ours.frames.min()) < float(ours.frames.max()) <= 1.0  # ComfyUI's IMAGE range
    assert float((ours.frames - expected).abs().max()) == 0.0
    assert ours.masked_calls == {} and ours.guidance is None
    full = generate(m, image, trajectory, trajectory.objects.prompts, Stage2Settings(), sampling)
    assert sum(full.masked_calls.values()) > 0 and full.guidance is not None
    assert float((full.frames - expected).abs().max()) > 1e-5  # and the method really changes the video


def test_zero_objects_is_plain_sampling_and_says_so(tiny_model_dir: Path) -> None:
    m = model(tiny_model_dir, "wan2.1-i2v")
    trajectory, image = two_balls(), test_image()
    plain = Prompts("a red ball and a blue ball on a table", "two balls move", ())
    result = generate(m, image, trajectory, plain, Stage2Settings(), Sampling(seed=3, steps=2, cfg=4.0, width=64,
                                                                                height=64))
    assert result.notes[0].startswith("no objects: plain image-to-video sampling")
    assert result.masked_calls == {} and result.guidance is None
    expected = stock(m, image, plain.global_prompt, "", 3, 2, 4.0, 9, 8.0)
    assert float((result.frames - expected).abs().max()) == 0.0


def test_wan_local_prompts_reach_only_the_conditional_call(tiny_model_dir: Path) -> None:
    m = model(tiny_model_dir, "wan2.1-i2v")
    trajectory = two_balls()
    result = generate(m, test_image(), trajectory, trajectory.objects.prompts,
                      Stage2Settings(MaskedAttention(num_blocks=2)), Sampling(seed=1, steps=3, cfg=5.0, width=64,
                                                                              height=64))
    for block in (0, 1):
        assert result.masked_calls[f"transformer.blocks.{block}.attn1"] == 6  # cond + uncond, 3 steps
        assert result.masked_calls[f"transformer.blocks.{block}.attn2"] == 3  # the conditional call only


def test_masked_attention_runs_only_in_its_step_window(tiny_model_dir: Path) -> None:
    m = model(tiny_model_dir, "wan2.1-i2v")
    trajectory = two_balls()
    result = generate(m, test_image(), trajectory, trajectory.objects.prompts,
                      Stage2Settings(MaskedAttention(window=(0.5, 1.0))),
                      Sampling(seed=1, steps=4, cfg=5.0, width=64, height=64))
    assert result.masked_calls["transformer.blocks.0.attn1"] == 4  # steps 3 and 4, prompt and negative calls
    assert any("masked attention runs in steps 3..4 of 4" in n for n in result.notes)
    for window, name in (((1.2, 1.0), "start_percent"), ((0.6, 0.5), "end_percent")):
        with pytest.raises(TTMInputError) as err:
            MaskedAttention(window=window)
        assert err.value.input_name == name


# ---------------------------------------------------------------------------------- the dual clock
@pytest.mark.parametrize("family", ["wan2.1-i2v", "cogvideox-1.5-i2v", "i2vgen-xl"])
def test_dual_clock_pins_objects_and_background_until_their_clocks(tiny_model_dir: Path, family: str) -> None:
    """Inside the objects the model's input latent IS the noised reference until the object clock
    ends, then it evolves; outside, the same with the background clock (checked on the tensors)."""
    m = model(tiny_model_dir, family)
    trajectory = two_balls()
    steps = 5
    clock = DualClock(object_end=0.6, background_end=0.2)  # objects pinned for steps 0-2, background for step 0
    seen: list[torch.Tensor] = []
    denoiser = m.denoisers[0]
    channels = m.pipeline.vae.config.latent_channels if family != "wan2.1-i2v" else m.pipeline.vae.config.z_dim

    def capture(module, args, kwargs) -> None:
        x = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        x = x[-1:].to(torch.float32)  # the conditional row
        x = x.permute(0, 2, 1, 3, 4) if family.startswith("cogvideox") else x  # -> [B, C, F, H, W]
        seen.append(x[:, :channels].clone())

    handle = denoiser.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        result = generate(m, test_image(), trajectory, trajectory.objects.prompts,
                          Stage2Settings(guidance=clock),
                          Sampling(seed=5, steps=steps, cfg=3.0, width=64, height=64, num_frames=frames_for(family)))
    finally:
        handle.remove()
    record = result.guidance
    if len(seen) == 2 * steps:  # Wan calls its model twice per step (prompt, negative prompt)
        seen = seen[::2]
    assert record is not None and len(seen) == steps
    assert [(o, b) for _, o, b in record.steps] == [(True, True), (True, False), (True, False), (False, False),
                                                    (False, False)]
    inside = record.foreground == 1.0  # cells fully covered by objects
    outside = record.foreground == 0.0
    assert int(inside.sum()) > 0 and int(outside.sum()) > 0
    if family == "cogvideox-1.5-i2v":
        assert record.reference.shape[2] == 4  # 3 latent frames padded at the front to an even count
    for step, (sigma, objects, background) in enumerate(record.steps):
        noised = noise_to(record.reference, record.noise, sigma, record.kind)
        diff = (seen[step] - noised).abs()[0].amax(0)  # [F, H, W]
        assert (float(diff[inside].max()) == 0.0) == objects, (step, float(diff[inside].max()))
        assert (float(diff[outside].max()) == 0.0) == background, (step, float(diff[outside].max()))
    assert record.kind == ("flow" if family.startswith("wan") else "vp")


# ------------------------------------------------------------------------- unpatched after a run
def _state(m) -> tuple:
    processors = tuple(tuple(d.attn_processors.values()) for d in m.denoisers)
    hooks = tuple(len(module._forward_pre_hooks) for d in m.denoisers for module in d.modules())
    own = ("prepare_latents" in vars(m.pipeline), "step" in vars(m.pipeline.scheduler))
    return processors, hooks, own


class Cancelled(Exception):
    """Stands in for ComfyUI's interrupt."""


@pytest.mark.parametrize("family", ["cogvideox-1.0-i2v", "wan2.2-i2v-a14b", "i2vgen-xl"])
def test_the_model_is_unpatched_after_a_run_and_after_a_cancel(tiny_model_dir: Path, family: str) -> None:
    m = model(tiny_model_dir, family)
    before = _state(m)
    trajectory, image = two_balls(), test_image()
    sampling = Sampling(seed=11, steps=4, cfg=4.0, width=64, height=64, num_frames=frames_for(family))
    fresh = generate(m, image, trajectory, trajectory.objects.prompts, Stage2Settings(), sampling)
    assert _state(m) == before

    def cancel(done: int, total: int) -> None:
        if done == 2:
            raise Cancelled

    other = Sampling(seed=12, steps=4, cfg=4.0, width=64, height=64, num_frames=frames_for(family))
    with pytest.raises(Cancelled):
        generate(m, image, trajectory, trajectory.objects.prompts, Stage2Settings(MaskedAttention(cross_strength=0.5)),
                 other, progress=cancel)
    assert _state(m) == before
    again = generate(m, image, trajectory, trajectory.objects.prompts, Stage2Settings(), sampling)
    assert torch.equal(again.frames, fresh.frames)


def test_progress_is_reported_once_per_step(tiny_model_dir: Path) -> None:
    m = model(tiny_model_dir, "cogvideox-1.0-i2v")
    calls: list[tuple[int, int]] = []
    trajectory = two_balls()
    generate(m, test_image(), trajectory, trajectory.objects.prompts, Stage2Settings(), Sampling(steps=4, cfg=1.0),
             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


# ------------------------------------------------------------------------------------- bad input
def test_prompts_longer_than_the_text_encoder_are_refused_before_any_model_runs(tiny_model_dir: Path) -> None:
    m = model(tiny_model_dir, "cogvideox-1.0-i2v")
    trajectory, image = two_balls(), test_image()
    limit = m.text_tokens
    long_text = " ".join(["ball"] * (limit + 5))
    objects = trajectory.objects.prompts.objects
    cases = [
        (Prompts(long_text, "m", objects), Sampling(), "prompts", "the global prompt is"),
        (Prompts("g", "m", (ObjectPrompt("red ball", long_text), objects[1])), Sampling(), "prompts",
         "the local prompt of 'red ball' is"),
        (trajectory.objects.prompts, Sampling(negative_prompt=long_text, cfg=5.0), "negative_prompt",
         "the negative prompt is"),
    ]
    for prompts, sampling, name, needle in cases:
        with pytest.raises(TTMInputError) as err:
            generate(m, image, trajectory, prompts, Stage2Settings(), sampling,
                     progress=lambda *_: pytest.fail("the model ran before the length check"))
        assert err.value.input_name == name and needle in str(err.value) and f"at most {limit}" in str(err.value)


def test_trajectory_mismatches(tiny_model_dir: Path) -> None:
    m = model(tiny_model_dir, "wan2.1-i2v")
    trajectory = two_balls(frames=12)
    with pytest.raises(TTMInputError, match=r"image: the image is 32x32 .* the trajectory is 64x64"):
        generate(m, test_image(32), trajectory, trajectory.objects.prompts, Stage2Settings(), Sampling())
    one = Prompts("g", "m", (ObjectPrompt("ball", "a ball"),))
    with pytest.raises(TTMInputError, match="prompts: 1 object prompts for the trajectory's 2 objects"):
        generate(m, test_image(), trajectory, one, Stage2Settings(), Sampling())
    result = generate(m, test_image(), trajectory, trajectory.objects.prompts,
                      Stage2Settings(), Sampling(steps=2, width=64, height=64))
    assert result.frames.shape[0] == 9  # 12 is not 1 + 4k: rounded down, the trajectory resampled
    assert result.fps == pytest.approx(8.0 * 8 / 11)
    assert any("12 frames is not a legal length for Wan 2.1 I2V" in n for n in result.notes)


def test_settings_validate_with_the_node_input_names() -> None:
    for build, name in ((lambda: MaskedAttention(self_strength=1.5), "self_strength"),
                        (lambda: MaskedAttention(cross_strength=-1.0), "cross_strength"),
                        (lambda: MaskedAttention(num_blocks=-2), "masked_blocks"),
                        (lambda: Sampling(cfg=0.5), "cfg"), (lambda: Sampling(steps=-1), "steps"),
                        (lambda: Sampling(seed=-1), "seed"), (lambda: Stage2Settings(feather=math.inf), "feather")):
        with pytest.raises(TTMInputError) as err:
            build()
        assert err.value.input_name == name


def test_size_rules_read_from_the_models(tiny_model_dir: Path) -> None:
    rules = {family: size_rules(model(tiny_model_dir, family)) for family in TINY_FAMILIES}
    assert rules["cogvideox-1.0-i2v"].fixed_size == (64, 64) and rules["cogvideox-1.0-i2v"].fixed_frames == 9
    assert rules["cogvideox-1.5-i2v"].fixed_size is None and rules["cogvideox-1.5-i2v"].multiple == (16, 16)
    assert rules["wan2.2-ti2v-5b"].multiple == (32, 32) and rules["wan2.1-i2v"].multiple == (16, 16)
    assert rules["i2vgen-xl"].multiple == (8, 8) and not rules["i2vgen-xl"].causal
    assert set(VARIANTS) == set(TINY_FAMILIES)


def test_fp16_variant_only_folders_load(tmp_path: Path) -> None:
    """ali-vilab/i2vgen-xl is often downloaded with its fp16 weight files only (``*.fp16.safetensors``)."""
    from tiny_diffusers import build_tiny

    folder = tmp_path / "i2vgen-xl"
    build_tiny("i2vgen-xl").save_pretrained(str(folder), variant="fp16")
    assert list((folder / "unet").glob("*.fp16.safetensors"))
    loaded = load_video_model(folder)
    assert loaded.variant.key == "i2vgen-xl" and loaded.pipeline.unet.dtype == torch.float32
