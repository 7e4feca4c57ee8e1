"""``python -m benchmarks stage2 --json FILE``: Stage 2 on a CogVideoX-like model, ours vs stock.

A random-weight CogVideoX 1.0-style I2V pipeline (rotary positions, 2 heads x 64, 4 blocks, the
tiny VAE and text encoder of ``tests/support/tiny_diffusers.py``) generates 29 frames at 512 x 512 px:
8 x 32 x 32 = 8192 video tokens, with classifier-free guidance (a batch of 2) and a trajectory of two moving objects
covering 30 % and 15 % of every frame. Two measurements, each ours vs stock:

* ``step``: one denoising step of the pipeline's loop (CFG batch through the transformer, the
  guidance combination, the scheduler step) - stock processors vs ours: masked self- and
  cross-attention in the default K blocks (local prompts on the conditional row) and the dual-clock
  pin of the next step's latent. This is the cost that repeats every step.
* ``pipeline``: the whole call with ONE denoising step - the stock pipeline vs ``stage2.generate``
  (which also renders the cut-and-drag reference, VAE-encodes it, maps the trajectory to the
  tokens and encodes the local prompts: one-time costs that a real 50-step run spreads over 50
  steps; the report gives that per-generation overhead too).

Timing: interleaved rounds in one process (order alternating), medians and per-round ratios.
Memory: each variant in a fresh subprocess (build, warm up at 128 x 128 px, return the free heap to
the OS with malloc_trim so the call cannot hide in memory freed while its inputs were built, reset
VmHWM, run once): peak RSS minus RSS before the call.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from einops import rearrange

from benchmarks.peak_memory import PeakRSS, fixed_mmap_threshold
from ttm_core.stage2.diffusers.loader import VideoModel
from ttm_core.stage2.diffusers.run import _pil, attention_plan, generate, guidance_inputs, noise_level
from ttm_core.stage2.diffusers.sizes import fit_frames, plan_frames
from ttm_core.stage2.diffusers.text import encode_prompts
from ttm_core.stage2.families import VARIANTS
from ttm_core.stage2.guidance import DualClock, noise_to, pin
from ttm_core.stage2.settings import MaskedAttention, Sampling, Stage2Settings
from ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests" / "support") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "support"))  # the tiny random-weight models live with the tests
from tiny_diffusers import build_cogvideox  # noqa: E402

logger = logging.getLogger(__name__)

TARGETS = {"time_ratio_max": 1.10, "memory_ratio_max": 1.10}
GLOBAL_PROMPT = "two balls roll across a dark table"
NEGATIVE_PROMPT = "blurry static"


@dataclass(frozen=True)
class Stage2Case:
    """The benchmark's model and video (see the module docstring)."""

    height: int = 512
    width: int = 512
    frames: int = 29
    heads: int = 2
    head_dim: int = 64
    layers: int = 4
    coverage: tuple[float, ...] = (0.30, 0.15)
    cfg: float = 6.0
    schedule_steps: int = 50

    def __post_init__(self) -> None:
        if self.height % 16 or self.width % 16 or (self.frames - 1) % 4 or sum(self.coverage) >= 1:
            raise ValueError(f"bad case {self}")

    @property
    def tokens(self) -> int:
        return ((self.frames - 1) // 4 + 1) * (self.height // 16) * (self.width // 16)


def build_model(case: Stage2Case) -> VideoModel:
    pipe = build_cogvideox("1.0", seed=0, sample_size=(case.height, case.width), sample_frames=case.frames,
                           learned_positions=False, heads=case.heads, head_dim=case.head_dim, layers=case.layers)
    pipe.set_progress_bar_config(disable=True)
    return VideoModel("bench-cogvideox", Path("."), VARIANTS["cogvideox-1.0-i2v"], pipe, torch.float32)


def build_inputs(case: Stage2Case) -> tuple[torch.Tensor, Trajectory]:
    """A smooth random image and two vertical bands moving 4 px per frame (the attention benchmark's layout)."""
    gen = torch.Generator().manual_seed(1)
    coarse = torch.rand(1, 3, 16, 16, generator=gen)
    image = torch.nn.functional.interpolate(coarse, size=(case.height, case.width), mode="bilinear")[0]
    image = rearrange(image, "c h w -> h w c").contiguous()
    labels = torch.zeros(case.frames, case.height, case.width, dtype=torch.uint8)
    widths = [round(c * case.width) for c in case.coverage]
    for t in range(case.frames):
        x = 4 * t
        for object_id, width in enumerate(widths, start=1):
            labels[t, :, (torch.arange(width) + x) % case.width] = object_id
            x += width + 16
    objects = tuple(ObjectPrompt(f"ball {i}", "a red ball rolls right") for i in range(1, len(widths) + 1))
    prompts = Prompts(GLOBAL_PROMPT, "two balls roll", objects)
    masks = torch.stack([(labels[0] == i).to(torch.float32) for i in range(1, len(widths) + 1)])
    return image, Trajectory(labels, Objects(prompts, masks), 8.0)


class StepBench:
    """One denoising step of CogVideoX's loop with stock processors (``stock``) or ours (``ours``)."""

    def __init__(self, model: VideoModel, case: Stage2Case, height: int | None = None, width: int | None = None,
                 frames: int | None = None, device: torch.device | None = None) -> None:
        """``device``: where the pipeline is (default the CPU); latents are made in ``model.dtype``."""
        height, width, frames = height or case.height, width or case.width, frames or case.frames
        pipe = self.pipe = model.pipeline
        self.case = case
        image, trajectory = build_inputs(Stage2Case(height, width, frames, coverage=case.coverage))
        plan = plan_frames(size_rules_free(), trajectory.size, trajectory.num_frames, trajectory.fps, width, height)
        device = device or torch.device("cpu")
        dtype = model.dtype
        encoded = encode_prompts(model, GLOBAL_PROMPT, NEGATIVE_PROMPT,
                                 [o.local_prompt for o in trajectory.objects.prompts.objects], device)
        self.embeds = torch.cat([encoded.negative_embeds, encoded.prompt_embeds]).to(device, dtype)
        pipe.scheduler.set_timesteps(case.schedule_steps, device=device)
        self.t = pipe.scheduler.timesteps[0]
        pixels = pipe.video_processor.preprocess(_pil(fit_frames(image[None], plan)[0]), height=height, width=width)
        latents, image_latents = pipe.prepare_latents(pixels.to(device, dtype), 1, pipe.transformer.config.out_channels,
                                                      frames, height, width, dtype, device,
                                                      torch.Generator().manual_seed(0))
        self.latents, self.image_latents = latents, image_latents
        self.rotary = pipe._prepare_rotary_positional_embeddings(height, width, latents.size(1), device)
        self.plan = attention_plan(model, trajectory, plan, encoded.local, MaskedAttention())
        reference, foreground = guidance_inputs(model, image, trajectory, plan, 1.0)
        self.foreground = foreground.to(device)
        self.noised = noise_to(reference.to(device), rearrange(latents, "b f c h w -> b c f h w"),
                               noise_level(pipe.scheduler, 1), "vp")
        self.model = model

    def _step(self, pin_next: bool) -> torch.Tensor:
        pipe = self.pipe
        x = pipe.scheduler.scale_model_input(torch.cat([self.latents] * 2), self.t)
        x = torch.cat([x, torch.cat([self.image_latents] * 2)], dim=2)
        noise = pipe.transformer(hidden_states=x, encoder_hidden_states=self.embeds,
                                 timestep=self.t.expand(2), image_rotary_emb=self.rotary, return_dict=False)[0]
        uncond, cond = noise.float().chunk(2)
        noise = uncond + self.case.cfg * (cond - uncond)
        out = pipe.scheduler.step(noise, self.t, self.latents, return_dict=False)[0]
        if pin_next:  # the next step's objects follow the noised reference (the object clock still runs)
            out = rearrange(pin(rearrange(out, "b f c h w -> b c f h w"), self.noised, self.foreground, True, False),
                            "b c f h w -> b f c h w")
        return out

    def stock(self) -> torch.Tensor:
        with torch.no_grad():
            return self._step(pin_next=False)

    def ours(self) -> torch.Tensor:
        from ttm_core.stage2.attention.install import masked_attention

        with torch.no_grad(), masked_attention(self.pipe, self.plan) as state:
            state.cross_rows = (False, True)  # [uncond ; cond]: local prompts on the conditional row only
            return self._step(pin_next=True)


def size_rules_free():
    """Size rules without a fixed size (the benchmark's CogVideoX has rotary positions only)."""
    from ttm_core.stage2.diffusers.sizes import SizeRules

    return SizeRules("CogVideoX-like", (16, 16), None, None, 4, True, 5)


class PipelineBench:
    """The whole call with one denoising step: the stock pipeline vs ``stage2.generate``."""

    def __init__(self, model: VideoModel, case: Stage2Case, height: int | None = None, width: int | None = None,
                 frames: int | None = None) -> None:
        self.model, self.case = model, case
        self.height, self.width, self.frames = height or case.height, width or case.width, frames or case.frames
        self.image, self.trajectory = build_inputs(Stage2Case(self.height, self.width, self.frames,
                                                              coverage=case.coverage))

    def stock(self) -> torch.Tensor:
        return self.model.pipeline(  # type: ignore[operator]
            image=_pil(self.image), prompt=GLOBAL_PROMPT, negative_prompt=NEGATIVE_PROMPT, height=self.height,
            width=self.width, num_frames=self.frames, num_inference_steps=1, guidance_scale=self.case.cfg,
            generator=torch.Generator().manual_seed(0), output_type="pt",
            max_sequence_length=self.model.text_tokens).frames

    def ours(self) -> torch.Tensor:
        settings = Stage2Settings(guidance=DualClock(object_end=1.0, background_end=0.0))  # the one step is pinned
        sampling = Sampling(seed=0, steps=1, cfg=self.case.cfg, negative_prompt=NEGATIVE_PROMPT, width=self.width,
                            height=self.height, num_frames=self.frames)
        return generate(self.model, self.image, self.trajectory, self.trajectory.objects.prompts, settings,
                        sampling).frames

    def setup_seconds(self) -> dict[str, float]:
        """Ours' one-time costs, each timed once: reference (render + resample + VAE encode), grid + local prompts."""
        plan = plan_frames(size_rules_free(), self.trajectory.size, self.trajectory.num_frames, self.trajectory.fps,
                           self.width, self.height)
        start = time.perf_counter()
        guidance_inputs(self.model, self.image, self.trajectory, plan, 1.0)
        reference = time.perf_counter() - start
        start = time.perf_counter()
        encoded = encode_prompts(self.model, GLOBAL_PROMPT, None,
                                 [o.local_prompt for o in self.trajectory.objects.prompts.objects], torch.device("cpu"))
        attention_plan(self.model, self.trajectory, plan, encoded.local, MaskedAttention())
        return {"reference_render_and_encode_s": reference,
                "token_grid_and_local_prompts_s": time.perf_counter() - start}


BENCHES: dict[str, type] = {"step": StepBench, "pipeline": PipelineBench}


def _interleaved(variants: dict[str, Callable[[], torch.Tensor]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % 2:] + names[:r % 2]:
            start = time.perf_counter()
            out = variants[name]()
            times[name].append(time.perf_counter() - start)
            del out
    return times


def measure_memory_in_this_process(case: Stage2Case, kind: str, variant: str) -> dict[str, object]:
    """Peak extra KiB of one ``variant`` call of ``kind`` (run in a fresh process)."""
    fixed = fixed_mmap_threshold()  # before anything is allocated: RSS then follows live tensors
    model = build_model(case)
    getattr(BENCHES[kind](model, case, 128, 128, 9), variant)()  # warm-up: thread pools, kernels, allocator
    bench = BENCHES[kind](model, case)
    fn = getattr(bench, variant)
    trimmed = _release_free_memory()
    with PeakRSS() as peak:
        out = fn()
    del out
    return {"extra_kib": peak.extra_kib, "slack_kib": peak.slack_kib,
            "method": peak.method + (", glibc mmap threshold fixed at 64 KiB" if fixed else "")
            + (", free heap returned to the OS first (malloc_trim)" if trimmed else "")}


def _release_free_memory() -> bool:
    """Return glibc's free heap pages to the OS (malloc_trim), so the call's own allocations show in its RSS
    instead of silently reusing memory freed while the inputs were built. False where that is not possible."""
    import ctypes
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False


def measure_memory(case: Stage2Case, kind: str, variant: str, threads: int) -> dict[str, object]:
    spec = json.dumps({"case": asdict(case), "kind": kind, "variant": variant, "threads": threads})
    env = dict(os.environ, TTM_BENCH_STAGE2=spec)
    result = subprocess.run([sys.executable, "-m", "benchmarks", "_stage2_memory"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {kind}/{variant} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_command() -> int:
    spec = json.loads(os.environ["TTM_BENCH_STAGE2"])
    torch.set_num_threads(int(spec["threads"]))
    raw = dict(spec["case"], coverage=tuple(spec["case"]["coverage"]))
    reading = measure_memory_in_this_process(Stage2Case(**raw), spec["kind"], spec["variant"])
    sys.stdout.write(json.dumps(reading) + "\n")
    return 0


def run_stage2_benchmark(case: Stage2Case, step_rounds: int = 7, pipeline_rounds: int = 2, threads: int = 2,
                         memory: bool = True, pipeline: bool = True) -> dict[str, object]:
    """Both measurements (see the module docstring); returns the JSON-ready report."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    model = build_model(case)
    results: dict[str, dict[str, object]] = {}
    kinds = ["step"] + (["pipeline"] if pipeline else [])
    for kind in kinds:
        bench = BENCHES[kind](model, case)
        variants = {"stock": bench.stock, "ours": bench.ours}
        for fn in variants.values():  # untimed warm-up of both
            fn()
        rounds = step_rounds if kind == "step" else pipeline_rounds
        logger.info("stage2 benchmark: %s, %d rounds", kind, rounds)
        times = _interleaved(variants, rounds)
        median = {name: statistics.median(values) for name, values in times.items()}
        row: dict[str, object] = {
            "stock_s": median["stock"], "ours_s": median["ours"], "time_ratio": median["ours"] / median["stock"],
            "time_ratio_paired": statistics.median(o / s for o, s in zip(times["ours"], times["stock"])),
            "rounds_s": times}
        if kind == "pipeline":
            row["ours_setup_s"] = bench.setup_seconds()
        if memory:
            mem = {name: measure_memory(case, kind, name, threads) for name in ("stock", "ours")}
            row.update({f"peak_extra_mib_{n}": m["extra_kib"] / 1024 for n, m in mem.items()})
            row["memory_ratio"] = mem["ours"]["extra_kib"] / max(1, mem["stock"]["extra_kib"])
            row["memory_method"] = sorted({m["method"] for m in mem.values()})
        results[kind] = row
    verdict = {f"{kind}_time_ok": r["time_ratio"] <= TARGETS["time_ratio_max"] for kind, r in results.items()}
    if memory:
        verdict.update({f"{kind}_memory_ok": r["memory_ratio"] <= TARGETS["memory_ratio_max"]
                        for kind, r in results.items()})
    report: dict[str, object] = {
        "benchmark": "stage2",
        "what": "CogVideoX-like random-weight I2V pipeline, fp32 CPU, CFG batch 2, 2 objects (30 % / 15 %)",
        "case": asdict(case), "video_tokens": case.tokens,
        "transformer_parameters": sum(p.numel() for p in model.pipeline.transformer.parameters()),
        "masked_blocks": f"{model.pipeline.transformer.config.num_layers // 4 or 1} of "
                         f"{model.pipeline.transformer.config.num_layers} (the default K, a quarter)",
        "timing_method": "interleaved rounds in one process after one untimed call of each variant; medians",
        "memory_method": "fresh subprocess per variant, glibc mmap threshold fixed at 64 KiB (RSS follows live "
                         "tensors; benchmarks/peak_memory.py), warm-up at 128x128 px, free heap returned to the OS "
                         "(malloc_trim), peak RSS (VmHWM reset) minus RSS before the call",
        "torch": torch.__version__, "threads": threads, "cpu_count": os.cpu_count(),
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "targets": TARGETS, "verdict": verdict, "results": results,
    }
    if "pipeline" in results and "step" in results:
        step, full = results["step"], results["pipeline"]
        once = float(full["ours_s"]) - float(full["stock_s"]) - (float(step["ours_s"]) - float(step["stock_s"]))
        steps = case.schedule_steps
        stock_run = float(full["stock_s"]) + (steps - 1) * float(step["stock_s"])
        ours_run = float(full["ours_s"]) + (steps - 1) * float(step["ours_s"])
        report["estimate_at_schedule_steps"] = {
            "steps": steps, "ours_one_time_extra_s": once, "time_ratio": ours_run / stock_run,
            "how": "pipeline medians plus (steps - 1) step medians of each variant"}
    return report


def format_report(report: dict[str, object]) -> str:
    lines = [f"stage2 benchmark: {report['what']}; {report['video_tokens']} video tokens; "
             f"masked blocks {report['masked_blocks']}; {report['threads']} threads"]
    header = f"{'measurement':<12}{'stock s':>10}{'ours s':>10}{'ratio':>8}{'paired':>8}{'MiB stock':>11}" \
             f"{'MiB ours':>10}{'mem ratio':>11}"
    lines += [header, "-" * len(header)]
    for kind, r in report["results"].items():  # type: ignore[union-attr]
        mem = "".join(f"{r[k]:>{w}.{d}f}" if k in r else f"{'-':>{w}}"
                      for k, w, d in (("peak_extra_mib_stock", 11, 1), ("peak_extra_mib_ours", 10, 1),
                                      ("memory_ratio", 11, 3)))
        lines.append(f"{kind:<12}{r['stock_s']:>10.3f}{r['ours_s']:>10.3f}{r['time_ratio']:>8.3f}"
                     f"{r['time_ratio_paired']:>8.3f}{mem}")
    if "pipeline" in report["results"]:  # type: ignore[operator]
        setup = report["results"]["pipeline"]["ours_setup_s"]  # type: ignore[index]
        lines.append("ours' one-time setup: " + ", ".join(f"{k} {v:.2f}" for k, v in setup.items()))
    if "estimate_at_schedule_steps" in report:
        est = report["estimate_at_schedule_steps"]
        lines.append(f"estimated full run at {est['steps']} steps: ours / stock = {est['time_ratio']:.3f} "
                     f"(one-time extra {est['ours_one_time_extra_s']:.1f} s)")
    load = report["load_average_1_5_15"]
    lines.append(f"load average {load['before'][0]:.1f} -> {load['after'][0]:.1f}; targets {report['targets']} -> "
                 f"{report['verdict']}")
    return "\n".join(lines) + "\n"
