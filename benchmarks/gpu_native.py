"""Part ``native`` of ``python -m benchmarks gpu``: ComfyUI's WanModel at the published sizes, patched vs unpatched.

The models are ComfyUI's own ``WanModel`` at Wan 2.1 I2V-14B's config (dim 5120, 40 blocks, 40
heads, FFN 13824, 36 input channels) and Wan 2.2 TI2V-5B's (dim 3072, 30 blocks, 24 heads, FFN
14336, 48 channels), loaded through ``comfy.sd.load_diffusion_model_state_dict`` (what UNETLoader
calls after reading a file) into ComfyUI's ModelPatcher, so ComfyUI detects, casts and places
them as it does the users' files. No file: the state dict is built in memory, tensor by tensor,
from the names and shapes of the same module built on the meta device (nothing allocated), with
random values drawn on the GPU in bf16 and copied to host memory tensor by tensor (28 GiB for the
14B model in seconds; drawing 14 B values on the CPU and writing / reading a 28 GiB safetensors
file would take minutes of the ten). The cost of a forward pass does not depend on the weights'
values. fp8: the same state dict loaded with ``dtype=float8_e4m3fn`` and ComfyUI's fp8 matmul optimisation, where
``torch.cuda.get_device_capability() >= (8, 9)``.

Conditioning: CLIP-L through CLIPLoader type "sd3" (the tests' random text encoder, 4096 wide as
Wan's), zero-padded to 512 tokens, the length of Wan's UMT5 context, so the cross-attention costs
what it costs with the real encoder. No CLIP-vision image tokens (257 extra keys in the 14B's image
cross-attention: a small, equal cost in both arms). Dual-clock guidance encodes its reference once
per patch with the tests' tiny Wan 2.1 VAE (same compression as the real one; the encode is not in
the timed step).

One sampler step: the first step of a 2-step euler schedule (``last_step=1``), CFG 5 (the
conditional and unconditional rows in one batch, as users sample), 2 objects covering 30 % and
15 % of the frame, the default K (a quarter of the blocks). Each variant runs once untimed (weights
moved, token grid built) then ``rounds`` timed rounds, interleaved.
"""

from __future__ import annotations

import gc
import logging
import statistics
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.gpu import Measure, ratio

LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class WanSize:
    """A WanModel config (ComfyUI's key names) and the videos to run it at."""

    name: str
    config: dict[str, Any]
    videos: tuple[tuple[int, int, int], ...]  # (width, height, frames)
    guidance: bool  # also the strength-1 + dual-clock variant (needs a Wan 2.1-latent VAE)
    blend: bool = True
    fp8: bool = False  # also with fp8 weights (where the GPU has fp8 matmuls)


WAN21_I2V_14B = {"model_type": "i2v", "in_dim": 36, "out_dim": 16, "dim": 5120, "ffn_dim": 13824, "num_heads": 40,
                 "num_layers": 40}
WAN22_TI2V_5B = {"model_type": "t2v", "in_dim": 48, "out_dim": 48, "dim": 3072, "ffn_dim": 14336, "num_heads": 24,
                 "num_layers": 30}

REAL = (WanSize("Wan 2.1 I2V-14B", WAN21_I2V_14B, ((832, 480, 81),), guidance=True, fp8=True),
        WanSize("Wan 2.2 TI2V-5B", WAN22_TI2V_5B, ((832, 480, 81), (1280, 720, 81)), guidance=False))
REAL_720 = (WanSize("Wan 2.1 I2V-14B", WAN21_I2V_14B, ((1280, 720, 81),), guidance=False, blend=False),)
_TINY_DIT = {"dim": 256, "ffn_dim": 512, "num_heads": 2, "num_layers": 4}
TINY = (WanSize("tiny Wan 2.1 I2V layout", {**_TINY_DIT, "model_type": "i2v", "in_dim": 36, "out_dim": 16},
                ((128, 128, 5),), guidance=True),
        WanSize("tiny Wan 2.2 TI2V layout", {**_TINY_DIT, "model_type": "t2v", "in_dim": 48, "out_dim": 48},
                ((128, 144, 5),), guidance=False, blend=False))  # 9 latent rows: odd, padded by Wan
TINY_720 = (WanSize("tiny Wan 2.1 I2V layout", TINY[0].config, ((160, 96, 5),), guidance=False, blend=False),)

CFG = 5.0
TEXT_TOKENS = 512  # Wan's UMT5 context length


class Comfy:
    """ComfyUI and the pack imported into this process (ComfyUI's Python)."""

    def __init__(self) -> None:
        for extra in (ROOT, ROOT / "tests" / "support"):
            if str(extra) not in sys.path:
                sys.path.insert(0, str(extra))
        from native_wan import build_cached
        from tools.comfy_harness import ComfyInstall

        install = ComfyInstall.locate()
        self.files = build_cached(["clip_l", "wan21_vae"], install)
        sys.path.insert(0, str(install.comfy_dir))
        self.comfy_dir = str(install.comfy_dir)
        import torch
        from comfy.cli_args import args

        args.cpu = not torch.cuda.is_available()  # ComfyUI probes CUDA at import otherwise
        import comfy.ldm.modules.attention as attention
        import comfy.model_management
        import comfy.sample
        import comfy.samplers
        import comfy.sd
        import comfy.utils

        self.torch, self.attention, self.mm = torch, attention, comfy.model_management
        self.sample, self.samplers, self.sd, self.utils = comfy.sample, comfy.samplers, comfy.sd, comfy.utils
        # The pack as a package WITHOUT running its __init__ (the node layer: comfy_api, PyAV): the engine
        # (native/, ttm_core/) is all this needs, and the GPU machine's Python lacks PyAV.
        pack = types.ModuleType("ttm_pack")
        pack.__path__ = [str(ROOT)]
        sys.modules.setdefault("ttm_pack", pack)
        self.device = comfy.model_management.get_torch_device()

    def attentions(self, extended: bool) -> dict[str, Any]:
        """ComfyUI's attention functions to compare: PyTorch SDPA always, flash / sage when registered."""
        registered = self.attention.REGISTERED_ATTENTION_FUNCTIONS
        wanted = ("pytorch", "flash", "sage")
        found = {name: registered[name] for name in wanted if name in registered}
        if extended and len(found) > 2:  # 720p: SDPA and the fastest only (sage, else flash)
            fastest = "sage" if "sage" in found else "flash"
            found = {"pytorch": found["pytorch"], fastest: found[fastest]}
        return found

    def state_dict(self, config: dict[str, Any], dtype: Any) -> dict[str, Any]:
        """Random weights for ComfyUI's WanModel of ``config``, drawn on the compute device, kept in host memory."""
        from native_wan import Fixture, _meta_module

        torch = self.torch
        fixture = Fixture("bench", "diffusion_models", "bench.safetensors", "wan_dit", config, seed=7)
        module = _meta_module(fixture, self.comfy_dir)
        owners = {name: type(sub).__name__ for name, sub in module.named_modules()}
        generator = torch.Generator(self.device).manual_seed(7)
        state = {}
        for key, meta in module.state_dict().items():
            owner = owners.get(key.rsplit(".", 1)[0], "")
            name = key.rsplit(".", 1)[-1]
            shape = tuple(meta.shape)
            if name == "gamma" or ("norm" in owner.lower() and name == "weight"):
                value = torch.ones(shape, device=self.device, dtype=dtype)
            elif name == "bias":
                value = torch.zeros(shape, device=self.device, dtype=dtype)
            else:  # N(0, 1/fan_in) for matrices keeps activations O(1) through 40 random blocks
                value = torch.empty(shape, device=self.device, dtype=dtype).normal_(generator=generator)
                if len(shape) >= 2 and name == "weight":
                    value.mul_(max(1, int(torch.Size(shape).numel() // shape[0])) ** -0.5)
                elif name == "modulation":
                    value.mul_(0.1)
                elif "Embedding" not in owner:
                    value.mul_(0.02)
            # to host memory at once: ComfyUI builds the model on its offload device (the CPU) and moves
            # it to the GPU for sampling, and a GPU copy left here would sit in every peak-VRAM reading
            state[key] = value.cpu()
        del module
        return state


def _scene(torch: Any, width: int, height: int, frames: int) -> tuple[Any, Any]:
    """Two objects (ellipses covering 30 % and 15 % of the frame); a smooth random image ``[H, W, 3]``."""
    from ttm_pack.ttm_core.motion.render import trajectory_from_paths
    from ttm_pack.ttm_core.types import ObjectPrompt, Objects, Prompts

    yy, xx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")

    def ellipse(cx: float, cy: float, share: float) -> Any:
        a = (share * height * width / torch.pi * width / height) ** 0.5
        b = a * height / width
        return ((((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2) <= 1).float()

    masks = torch.stack([ellipse(width * 0.3, height * 0.5, 0.30), ellipse(width * 0.78, height * 0.5, 0.15)])
    objects = Objects(Prompts("two objects", "they move", (ObjectPrompt("a", "a red ball"),
                                                          ObjectPrompt("b", "a blue cube"))), masks)
    # still objects: the cost of masked attention depends on the group sizes, not on where they move
    trajectory = trajectory_from_paths(objects, (None, None), frames, 16.0)
    coarse = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0].permute(1, 2, 0)
    return trajectory, image.contiguous()


def _with_attention(model: Any, fn: Any) -> Any:
    """A clone of ``model`` whose attention calls all go to ComfyUI's ``fn`` (the per-model override that
    core's attention-backend nodes set; our patch wraps whatever override is there)."""
    clone = model.clone()
    options = clone.model_options.setdefault("transformer_options", {})

    def override(func: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    options["optimized_attention_override"] = override
    return clone


def _measure_size(comfy: Comfy, spec: WanSize, model: Any, weights: str, video: tuple[int, int, int],
                  attentions: dict[str, Any], clip: Any, vae: Any, conds: tuple[list, list], rounds: int) -> list[dict]:
    from ttm_pack.native.patch import patch_wan
    from ttm_pack.ttm_core.stage2.guidance import DualClock
    from ttm_pack.ttm_core.stage2.settings import MaskedAttention, Stage2Settings

    torch = comfy.torch
    width, height, frames = video
    trajectory, image = _scene(torch, width, height, frames)
    base = model.model
    channels = base.latent_format.latent_channels
    ratio_xy = 16 if channels == 48 else 8
    latent = torch.zeros(1, channels, (frames - 1) // 4 + 1, height // ratio_xy, width // ratio_xy)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    schedule = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 2)

    positive, negative = conds
    variants: dict[tuple[str, str], Any] = {}
    patches: dict[tuple[str, str], Any] = {}
    for index, (attention, fn) in enumerate(attentions.items()):
        plain = _with_attention(model, fn)
        variants[(attention, "unpatched")] = plain
        strength1 = Stage2Settings(MaskedAttention(self_strength=1.0, cross_strength=1.0), guidance=None)
        variants[(attention, "strength 1")], _, patches[(attention, "strength 1")] = patch_wan(
            plain, clip, trajectory, strength1)
        if index == 0 and spec.blend and weights != "fp8":
            half = Stage2Settings(MaskedAttention(self_strength=0.5, cross_strength=0.5), guidance=None)
            variants[(attention, "blend 0.5")], _, patches[(attention, "blend 0.5")] = patch_wan(
                plain, clip, trajectory, half)
        if index == 0 and spec.guidance and weights != "fp8":
            guided = Stage2Settings(MaskedAttention(self_strength=1.0, cross_strength=1.0), guidance=DualClock())
            variants[(attention, "strength 1 + dual clock")], _, patches[(attention, "strength 1 + dual clock")] = \
                patch_wan(plain, clip, trajectory, guided, vae=vae, image=image, latent=latent, schedule=schedule)

    def step(m: Any) -> None:
        comfy.sample.sample(m, noise, 2, CFG, "euler", "simple", positive, negative, latent, disable_pbar=True,
                            seed=0, last_step=1)

    names = list(variants)
    for name in names:  # untimed: weights onto the device, token grids, first-call allocations
        step(variants[name])
    times: dict[tuple[str, str], list[float]] = {n: [] for n in names}
    peaks: dict[tuple[str, str], list[float]] = {n: [] for n in names}
    rises: dict[tuple[str, str], list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with Measure() as measure:
                step(variants[name])
            times[name].append(measure.seconds)
            peaks[name].append(measure.peak_mib)
            rises[name].append(measure.rise_mib)
            LOG.info("%s %s %dx%dx%d %s %s: %.2f s, peak %.0f MiB", spec.name, weights, width, height, frames,
                     *name, measure.seconds, measure.peak_mib)
    grid = next(iter(patches.values())).grid_for(*latent.shape[2:])
    tokens = grid.num_tokens if grid is not None else None
    counts = torch.bincount(grid.ids).double() if grid is not None else None
    rho = round(float((counts ** 2).sum() / tokens ** 2), 4) if counts is not None and tokens else None
    cases = []
    sdpa_time = statistics.median(times[(next(iter(attentions)), "unpatched")])
    for name in names:
        attention, variant = name
        t, peak, rise = (statistics.median(values[name]) for values in (times, peaks, rises))
        base_name = (attention, "unpatched")
        ratios: dict[str, float | None] = {}
        if variant == "unpatched":
            if attention != next(iter(attentions)):
                ratios["time_vs_pytorch_attention"] = ratio(t, sdpa_time)
        else:
            ratios["time"] = ratio(t, statistics.median(times[base_name]))
            ratios["peak_memory"] = ratio(peak, statistics.median(peaks[base_name]))
            ratios["activation_memory"] = ratio(rise, statistics.median(rises[base_name]))
        cases.append({
            "case": f"{spec.name} {weights} {width}x{height}x{frames} {attention} {variant}", "model": spec.name,
            "config": spec.config, "weights": weights, "video": [width, height, frames], "attention": attention,
            "variant": variant, "tokens": tokens, "rho": rho,
            "masked_blocks": patches[(attention, "strength 1")].num_blocks,
            # why the patch passed calls through to stock attention (none expected: else the ratio is not ours)
            "pass_through_notes": sorted(patches[name]._noted) if name in patches else [],
            "time_s": round(t, 4), "peak_mib": round(peak, 1), "activation_mib": round(rise, 1),
            "rounds_s": [round(x, 4) for x in times[name]], "ratios": ratios,
            # the goal: strength 1 at 832x480x81, bf16, with SDPA and with the fastest attention
            "goal_case": variant == "strength 1" and weights == "bf16" and (width, height) == (832, 480)
            and (attention == "pytorch" or attention == list(attentions)[-1])})
    return cases


def run(size: str, extended: bool = False) -> dict[str, Any]:
    """The part's report: ``{"what", "cases": [...], "skipped": [...]}``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    comfy = Comfy()
    torch = comfy.torch
    real = size == "real"
    specs = (REAL_720 if extended else REAL) if real else (TINY_720 if extended else TINY)
    rounds = 1
    # float32 on the CPU: ComfyUI's default fp16 text encoder is many times slower there (CPU fp16 matmuls)
    clip = comfy.sd.load_clip([str(comfy.files["clip_l"])], clip_type=comfy.sd.CLIPType.SD3,
                              model_options={} if real else {"dtype": torch.float32})
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(comfy.files["wan21_vae"])))

    def pad(cond: list) -> list:
        return [[torch.nn.functional.pad(c, (0, 0, 0, max(0, TEXT_TOKENS - c.shape[1]))), dict(extra)]
                for c, extra in cond]

    conds = (pad(clip.encode_from_tokens_scheduled(clip.tokenize("a red ball and a blue cube"))),
             pad(clip.encode_from_tokens_scheduled(clip.tokenize(""))))
    attentions = comfy.attentions(extended)
    skipped = [f"{name} attention: not importable here" for name in ("flash", "sage") if name not in attentions]
    fp8 = (comfy.device.type == "cuda" and torch.cuda.get_device_capability() >= (8, 9)
           and hasattr(torch, "float8_e4m3fn") and not extended)
    if not fp8:
        skipped.append("fp8 weights: need CUDA compute capability >= 8.9" if not extended else
                       "fp8 weights: not at 1280x720 (time)")
    cases: list[dict] = []
    dtype = torch.bfloat16 if real else torch.float32
    for spec in specs:
        state = comfy.state_dict(spec.config, dtype)
        weight_kinds = [("bf16" if real else "fp32", {})]
        if fp8 and spec.fp8:
            weight_kinds.append(("fp8", {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True}))
        for weights, options in weight_kinds:
            # a shallow copy: ComfyUI pops the tensors out of the dict it loads (fp8 loads the same weights)
            model = comfy.sd.load_diffusion_model_state_dict(dict(state), model_options=options)
            if weights == "fp8":  # fp8: SDPA only (the weights, not the attention, are what changes)
                chosen = {"pytorch": attentions["pytorch"]}
            else:
                chosen = attentions
            for video in spec.videos:
                cases += _measure_size(comfy, spec, model, weights, video, chosen, clip, vae, conds, rounds)
            comfy.mm.unload_all_models()
            del model
            gc.collect()
            comfy.mm.soft_empty_cache()
        del state
        comfy.mm.soft_empty_cache()
    return {"what": __doc__.split("\n\n")[0], "device": str(comfy.device), "cfg": CFG, "text_tokens": TEXT_TOKENS,
            "step": "first step of a 2-step euler / simple schedule", "rounds": rounds, "cases": cases,
            "skipped": skipped}
