"""Random-weight native Wan checkpoints in ComfyUI's own file formats, for tests (no downloads).

``write_native_wan(models_dir)`` puts every file a stock ComfyUI Wan graph needs into a ComfyUI
``models/`` folder, under the folder and in the format users have (safetensors, ComfyUI's key
names, 16-bit weights):

==============  =========================================================  ==========================
key             file (under models/)                                       loaded by -> detected as
==============  =========================================================  ==========================
wan21_i2v       diffusion_models/ttm_tiny_wan2.1_i2v.safetensors           UNETLoader -> WAN21_I2V
wan22_i2v_high  diffusion_models/ttm_tiny_wan2.2_i2v_high_noise.safetensors  UNETLoader -> WAN21_T2V
wan22_i2v_low   diffusion_models/ttm_tiny_wan2.2_i2v_low_noise.safetensors   UNETLoader -> WAN21_T2V
wan22_ti2v      diffusion_models/ttm_tiny_wan2.2_ti2v.safetensors          UNETLoader -> WAN22_T2V
wan21_vae       vae/ttm_tiny_wan2.1_vae.safetensors                        VAELoader -> Wan 2.1 VAE
wan22_vae       vae/ttm_random_wan2.2_vae.safetensors                      VAELoader -> Wan 2.2 VAE
taew22          vae/ttm_random_taew2.2.safetensors                         VAELoader -> TAEHV (decode)
clip_vision_h   clip_vision/ttm_random_clip_vision_h.safetensors           CLIPVisionLoader -> ViT-H
clip_l          text_encoders/ttm_random_clip_l.safetensors                CLIPLoader "sd3" -> CLIP-L
==============  =========================================================  ==========================

The diffusion models and the Wan 2.1 VAE are tiny: ComfyUI reads their sizes from the weights.
The others cannot be tiny, because ComfyUI 0.3.75 builds them from fixed configs and only uses
the file to pick which one (docs/NATIVE_WAN_FIXTURES.md has the details and timings): the Wan
2.2 VAE (dim 160 hard-coded), its TAEHV decoder, CLIP vision ViT-H (the only 1280-wide image
encoder, which Wan 2.1's ``img_emb`` requires) and the text encoder: Wan's UMT5-XXL is detected
only at d_model 4096 (5.7 B parameters), and since ``WanModel.text_dim`` is never read from the
file (always 4096), the cheapest 4096-wide text encoder ComfyUI loads is CLIP-L through
CLIPLoader type "sd3" (77 tokens, 768 channels zero-padded to 4096).

Values are deterministic: every tensor comes from its own generator seeded with
crc32("<seed>:<key>"), so a file depends only on its spec and ComfyUI's key layout. Tensor
names and shapes are taken from ComfyUI's own modules (built on the meta device) in a
subprocess run by ComfyUI's Python. Built files are cached outside the repository
(``TTM_NATIVE_WAN_CACHE``, default ``~/.cache/ttm-native-wan``) under a fingerprint of the spec
and ComfyUI's version, and hard-linked (or symlinked) into each server's models folder.

``detect_native_wan(paths)`` loads files with the functions ComfyUI's loader nodes call, in a
subprocess, and reports what ComfyUI made of them.

Run as a script (by ComfyUI's Python) it does the ComfyUI-side work: ``build`` and ``detect``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

# Bump when the value rules below change: it is part of every cached file's fingerprint.
FIXTURE_VERSION = 2
DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class Fixture:
    """One checkpoint file: where it goes, what it is, and what ComfyUI must detect it as."""

    key: str
    folder: str  # the folder under models/ (as ComfyUI's folder_paths names it)
    filename: str
    kind: str  # wan_dit | wan21_vae | wan22_vae | taehv48 | clip_vision_h | clip_l
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    dtype: str = "float16"
    expect: Mapping[str, Any] = field(default_factory=dict)

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.filename}"


# Tiny Wan DiT: ComfyUI derives num_heads = dim // 128 (model_detection.py:452), so dim 256 gives
# 2 heads of 128 channels, like the real models' head size. text_dim is not read from the file
# (always 4096), nor is freq_dim (256) or patch_size ((1, 2, 2)).
_TINY_DIT = {"dim": 256, "ffn_dim": 512, "num_heads": 2, "num_layers": 4}

FIXTURES: dict[str, Fixture] = {f.key: f for f in (
    Fixture("wan21_i2v", "diffusion_models", "ttm_tiny_wan2.1_i2v.safetensors", "wan_dit",
            {**_TINY_DIT, "model_type": "i2v", "in_dim": 36, "out_dim": 16}, seed=2101,
            expect={"config_class": "WAN21_I2V", "model_class": "WAN21", "image_to_video": True,
                    "model_type": "i2v", "in_dim": 36, "out_dim": 16, "img_emb": True, "latent_channels": 16}),
    Fixture("wan22_i2v_high", "diffusion_models", "ttm_tiny_wan2.2_i2v_high_noise.safetensors", "wan_dit",
            {**_TINY_DIT, "model_type": "t2v", "in_dim": 36, "out_dim": 16}, seed=2211,
            expect={"config_class": "WAN21_T2V", "model_class": "WAN21", "image_to_video": False,
                    "model_type": "t2v", "in_dim": 36, "out_dim": 16, "img_emb": False, "latent_channels": 16}),
    Fixture("wan22_i2v_low", "diffusion_models", "ttm_tiny_wan2.2_i2v_low_noise.safetensors", "wan_dit",
            {**_TINY_DIT, "model_type": "t2v", "in_dim": 36, "out_dim": 16}, seed=2212,
            expect={"config_class": "WAN21_T2V", "model_class": "WAN21", "image_to_video": False,
                    "model_type": "t2v", "in_dim": 36, "out_dim": 16, "img_emb": False, "latent_channels": 16}),
    Fixture("wan22_ti2v", "diffusion_models", "ttm_tiny_wan2.2_ti2v.safetensors", "wan_dit",
            {**_TINY_DIT, "model_type": "t2v", "in_dim": 48, "out_dim": 48}, seed=2250,
            expect={"config_class": "WAN22_T2V", "model_class": "WAN22", "image_to_video": True,
                    "model_type": "t2v", "in_dim": 48, "out_dim": 48, "img_emb": False, "latent_channels": 48}),
    Fixture("wan21_vae", "vae", "ttm_tiny_wan2.1_vae.safetensors", "wan21_vae", {"dim": 8}, seed=2100,
            expect={"vae_class": "comfy.ldm.wan.vae.WanVAE", "latent_channels": 16, "dim": 8, "spatial_ratio": 8}),
    Fixture("wan22_vae", "vae", "ttm_random_wan2.2_vae.safetensors", "wan22_vae", seed=2200,
            expect={"vae_class": "comfy.ldm.wan.vae2_2.WanVAE", "latent_channels": 48, "dim": 160,
                    "spatial_ratio": 16}),
    Fixture("taew22", "vae", "ttm_random_taew2.2.safetensors", "taehv48", seed=4822,
            expect={"vae_class": "comfy.taesd.taehv.TAEHV", "latent_channels": 48, "spatial_ratio": 16,
                    "can_encode": False}),
    Fixture("clip_vision_h", "clip_vision", "ttm_random_clip_vision_h.safetensors", "clip_vision_h", seed=1280,
            expect={"config": "clip_vision_config_h.json", "hidden_size": 1280, "num_hidden_layers": 32}),
    Fixture("clip_l", "text_encoders", "ttm_random_clip_l.safetensors", "clip_l", seed=768,
            expect={"clip_class": "SD3ClipModel", "cond_shape": [1, 77, 4096], "nonzero_channels": 768}),
)}

# What each stock graph in tests/data needs.
GRAPH_FIXTURES: dict[str, tuple[str, ...]] = {
    "native_wan21_i2v_api.json": ("wan21_i2v", "wan21_vae", "clip_vision_h", "clip_l"),
    "native_wan22_a14b_i2v_api.json": ("wan22_i2v_high", "wan22_i2v_low", "wan21_vae", "clip_l"),
    "native_wan22_ti2v_api.json": ("wan22_ti2v", "wan22_vae", "clip_l"),
    # The same TI2V graph decoding with a TAEHV-format 48-channel decoder (about 12x faster on CPU).
    "native_wan22_ti2v_taedecode_api.json": ("wan22_ti2v", "wan22_vae", "taew22", "clip_l"),
}


def load_graph(name: str) -> dict:
    """An API-format stock graph from tests/data."""
    return json.loads((DATA / name).read_text())


def set_seed(graph: dict, seed: int) -> dict:
    """Set the noise seed of every sampler that adds noise (KSampler, KSamplerAdvanced with add_noise)."""
    count = 0
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "KSampler":
            inputs["seed"] = seed
            count += 1
        elif node["class_type"] == "KSamplerAdvanced" and inputs.get("add_noise") == "enable":
            inputs["noise_seed"] = seed
            count += 1
    if count == 0:
        raise ValueError("the graph has no sampler that adds noise")
    return graph



# The real files a user has -> the tiny fixtures with the same role (the shipped workflows name the former).
TINY_FILES = {
    "wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors": FIXTURES["wan21_i2v"].filename,
    "wan2.2_ti2v_5B_fp16.safetensors": FIXTURES["wan22_ti2v"].filename,
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": FIXTURES["clip_l"].filename,
    "wan_2.1_vae.safetensors": FIXTURES["wan21_vae"].filename,
    "wan2.2_vae.safetensors": FIXTURES["wan22_vae"].filename,
    "clip_vision_h.safetensors": FIXTURES["clip_vision_h"].filename,
}
TINY_SIZE, TINY_FRAMES = (128, 96), 9


def tiny_workflow(graph: dict, prefix: str, seed: int = 42, steps: int = 2, size: tuple[int, int] = TINY_SIZE,
                  fmt: str = "png") -> dict:
    """A shipped native Wan workflow (API format, changed in place) on the tiny files.

    Small size (width, height), ``TINY_FRAMES`` frames, few steps, the given output format and prefix.
    """
    for node in graph.values():
        inputs = node["inputs"]
        for key in ("unet_name", "clip_name", "vae_name"):
            if inputs.get(key) in TINY_FILES:
                inputs[key] = TINY_FILES[inputs[key]]
        if node["class_type"] == "CLIPLoader":
            inputs["type"] = "sd3"  # ComfyUI only loads a full-size umT5 as "wan" (docs/NATIVE_WAN_FIXTURES.md)
        if node["class_type"] in ("WanImageToVideo", "TTM_MaskedMotionToVideo", "TTM_WanMotionToVideo"):
            inputs["width"], inputs["height"], inputs["length"] = size[0], size[1], TINY_FRAMES
        if node["class_type"] == "TTM_ImageToMotion":
            inputs["num_frames"] = TINY_FRAMES
        if "seed" in inputs and "steps" in inputs and not isinstance(inputs["seed"], list):
            inputs["seed"], inputs["steps"] = seed, steps
        if node["class_type"] == "TTM_VideoCombine":
            inputs["format"], inputs["filename_prefix"] = fmt, prefix
    return graph

@dataclass(frozen=True)
class TimedRun:
    """A finished prompt, with the seconds each executed node took (from the websocket) and in all."""

    result: Any  # ttm_batch.client.PromptResult
    node_seconds: Mapping[str, float]
    seconds: float

    @property
    def cached_nodes(self) -> set[str]:
        cached: set[str] = set()
        for kind, data in self.result.history.get("status", {}).get("messages", []):
            if kind == "execution_cached":
                cached.update(data.get("nodes", []))
        return cached


def run_timed(client: Any, graph: Mapping[str, Any], timeout: float = 600.0) -> TimedRun:
    """Queue ``graph`` with the client's websocket open; time each node from the 'executing' messages."""
    from ttm_batch.client import ComfyError

    started = time.monotonic()
    node_seconds: dict[str, float] = {}
    with client.socket(timeout=1.0) as socket:
        prompt_id = client.queue(graph)
        current, since = None, time.monotonic()
        while time.monotonic() - started < timeout:
            message = socket.receive()
            if message is None or message.get("type") != "executing":
                if message is not None and message.get("type") in ("execution_error", "execution_interrupted") \
                        and message.get("data", {}).get("prompt_id") == prompt_id:
                    break
                continue
            data = message.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            now = time.monotonic()
            if current is not None:
                node_seconds[current] = node_seconds.get(current, 0.0) + now - since
            current, since = data.get("node"), now
            if current is None:  # the prompt is done
                break
    result = client.wait(prompt_id, timeout=max(1.0, timeout - (time.monotonic() - started)))
    if result.status != "success":
        error = result.error or {}
        raise ComfyError(f"node {error.get('node_id')} ({error.get('node_type')}) failed: "
                         f"{error.get('exception_message', 'unknown error')}", result)
    return TimedRun(result, node_seconds, time.monotonic() - started)


# --------------------------------------------------------------------------- test-process side

def cache_root() -> Path:
    explicit = os.environ.get("TTM_NATIVE_WAN_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ttm-native-wan"


def comfyui_version(comfy_dir: Path) -> str:
    match = re.search(r'__version__\s*=\s*"([^"]+)"', (comfy_dir / "comfyui_version.py").read_text())
    if match is None:
        raise RuntimeError(f"no __version__ in {comfy_dir / 'comfyui_version.py'}")
    return match.group(1)


def fingerprint(fixture: Fixture, version: str) -> str:
    spec = {"fixture_version": FIXTURE_VERSION, "comfyui": version, "kind": fixture.kind,
            "config": dict(fixture.config), "seed": fixture.seed, "dtype": fixture.dtype}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _install(install: Any = None) -> Any:
    if install is not None:
        return install
    from tools.comfy_harness import ComfyInstall

    return ComfyInstall.locate()


def _run_comfy_python(install: Any, args: list[str], what: str, timeout: float) -> None:
    command = [install.python, str(Path(__file__).resolve()), *args, "--comfyui", str(install.comfy_dir)]
    done = subprocess.run(command, cwd=install.comfy_dir, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    for line in done.stderr.splitlines():
        if line.startswith("native_wan:"):
            LOG.info("%s", line)


def build_cached(keys: Iterable[str], install: Any = None) -> dict[str, Path]:
    """The cached file of each fixture, building the missing ones in one ComfyUI-Python subprocess."""
    install = _install(install)
    version = comfyui_version(install.comfy_dir)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    paths = {key: root / f"{key}-{fingerprint(FIXTURES[key], version)}.safetensors" for key in keys}
    missing = [key for key, path in paths.items() if not path.is_file()]
    if missing:
        LOG.info("building %s into %s", ", ".join(missing), root)
        started = time.monotonic()
        _run_comfy_python(install, ["build", *(f"{key}={paths[key]}" for key in missing)],
                          f"building {', '.join(missing)}", timeout=1800)
        LOG.info("built %d file(s) in %.1f s", len(missing), time.monotonic() - started)
    return paths


def _place(source: Path, target: Path) -> None:
    if target.exists() and target.samefile(source):
        return
    if target.is_symlink() or target.exists():  # an older build, or a link left dangling
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        target.symlink_to(source)


def write_native_wan(models_dir: Path, keys: Iterable[str] | None = None, install: Any = None) -> dict[str, Path]:
    """Put the fixtures (all, or ``keys``) into ``models_dir`` (a ComfyUI base dir's models/).

    Returns each fixture's path inside ``models_dir``. Files are built once per fingerprint
    and then linked, so calling this for every server is cheap.
    """
    keys = list(FIXTURES) if keys is None else list(keys)
    unknown = [key for key in keys if key not in FIXTURES]
    if unknown:
        raise KeyError(f"unknown fixture(s) {unknown}; known: {sorted(FIXTURES)}")
    cached = build_cached(keys, install)
    placed = {}
    for key in keys:
        target = Path(models_dir) / FIXTURES[key].relpath
        _place(cached[key], target)
        placed[key] = target
    return placed


def detect_native_wan(paths: Mapping[str, Path], install: Any = None) -> dict[str, dict[str, Any]]:
    """Load each file with ComfyUI's own loaders (in ComfyUI's Python) and report what it became."""
    install = _install(install)
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "detect.json"
        _run_comfy_python(install, ["detect", "--json-out", str(report), *(f"{k}={p}" for k, p in paths.items())],
                          "detection", timeout=900)
        return json.loads(report.read_text())


# --------------------------------------------------------------- ComfyUI-process side (script)

def _comfy_imports(comfy_dir: str) -> None:
    sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args  # ComfyUI is only importable here

    args.cpu = True  # comfy.model_management probes CUDA at import time otherwise


def _value(torch: Any, key: str, shape: tuple[int, ...], owner: str, seed: int) -> Any:
    """Deterministic value of one tensor, from its name, shape and owning module's class.

    Norm scales 1 and norm/linear biases 0; weight matrices and conv kernels N(0, 1/fan_in)
    (keeps activations O(1) through deep random stacks); embeddings N(0, 1); Wan's
    modulation tables N(0, 0.1^2); anything else N(0, 0.02^2).
    """
    name = key.rsplit(".", 1)[-1]
    is_norm = "norm" in owner.lower()
    if name == "gamma" or (is_norm and name == "weight"):
        return torch.ones(shape)
    if name == "bias":
        return torch.zeros(shape)
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    values = torch.randn(shape, generator=generator)
    if "Embedding" in owner:
        return values
    if name == "modulation":
        return values.mul_(0.1)
    if len(shape) >= 2 and name == "weight":
        fan_in = max(1, int(torch.Size(shape).numel() // shape[0]))
        return values.mul_(fan_in ** -0.5)
    return values.mul_(0.02)


def _meta_module(fixture: Fixture, comfy_dir: str) -> Any:
    import comfy.ops
    import torch

    with torch.device("meta"):
        if fixture.kind == "wan_dit":
            import comfy.ldm.wan.model

            config = dict(fixture.config)
            if config["dim"] % 128 or config["num_heads"] != config["dim"] // 128:
                raise ValueError(f"{fixture.key}: ComfyUI uses num_heads = dim // 128; {config} disagrees")
            return comfy.ldm.wan.model.WanModel(
                patch_size=(1, 2, 2), freq_dim=256, text_dim=4096, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6, operations=comfy.ops.disable_weight_init, device="meta", **config)
        # The VAE configs below are copied from comfy/sd.py (VAE.__init__), where ComfyUI rebuilds them.
        if fixture.kind == "wan21_vae":
            import comfy.ldm.wan.vae

            return comfy.ldm.wan.vae.WanVAE(dim=fixture.config["dim"], z_dim=16, dim_mult=[1, 2, 4, 4],
                                            num_res_blocks=2, attn_scales=[], temperal_downsample=[False, True, True],
                                            dropout=0.0)
        if fixture.kind == "wan22_vae":
            import comfy.ldm.wan.vae2_2

            return comfy.ldm.wan.vae2_2.WanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                               attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
        if fixture.kind == "taehv48":
            import comfy.taesd.taehv

            return comfy.taesd.taehv.TAEHV(latent_channels=48)
        if fixture.kind == "clip_vision_h":
            import comfy.clip_model

            config = json.loads((Path(comfy_dir) / "comfy" / "clip_vision_config_h.json").read_text())
            return comfy.clip_model.CLIPVisionModelProjection(config, torch.float16, "meta", comfy.ops.manual_cast)
        if fixture.kind == "clip_l":
            import comfy.clip_model

            config = json.loads((Path(comfy_dir) / "comfy" / "sd1_clip_config.json").read_text())
            return comfy.clip_model.CLIPTextModel(config, torch.float16, "meta", comfy.ops.manual_cast)
    raise ValueError(f"unknown fixture kind {fixture.kind!r}")


def _adjust(fixture: Fixture, state: dict[str, Any]) -> None:
    """Per-kind fixes to the generic values, so random outputs are not clipped away."""
    if fixture.kind == "taehv48":
        # TAEHV decodes straight to [0, 1] (ComfyUI clamps): centre its last conv's output on 0.5.
        last = max(int(key.split(".")[1]) for key in state if key.startswith("decoder.") and key.endswith(".bias"))
        state[f"decoder.{last}.weight"].mul_(0.25)
        state[f"decoder.{last}.bias"].fill_(0.5)


def _build(fixture: Fixture, target: Path, comfy_dir: str) -> None:
    import torch
    from safetensors.torch import save_file

    started = time.monotonic()
    module = _meta_module(fixture, comfy_dir)
    owners = {name: type(sub).__name__ for name, sub in module.named_modules()}
    dtype = getattr(torch, fixture.dtype)
    state = {}
    for key, meta in module.state_dict().items():
        owner = owners.get(key.rsplit(".", 1)[0] if "." in key else "", "")
        state[key] = _value(torch, key, tuple(meta.shape), owner, fixture.seed).to(dtype).contiguous()
    _adjust(fixture, state)
    # One metadata entry: safetensors writes several in a per-process random order (the bytes
    # would differ between builds).
    metadata = {"ttm_fixture": json.dumps({"key": fixture.key, "version": FIXTURE_VERSION, "seed": fixture.seed,
                                           "config": dict(fixture.config)}, sort_keys=True)}
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    save_file(state, str(partial), metadata=metadata)
    os.chmod(partial, 0o644)  # the cache may be shared by several users of the machine
    os.replace(partial, target)
    parameters = sum(t.numel() for t in state.values())
    LOG.info("native_wan: built %s: %d tensors, %.1f M parameters, %.1f MB, %.1f s", fixture.key, len(state),
             parameters / 1e6, target.stat().st_size / 1e6, time.monotonic() - started)


def _key_check(file_keys: Iterable[str], module_keys: Iterable[str]) -> dict[str, list[str]]:
    """Keys the module wants but the file lacks (ComfyUI leaves those as torch.empty memory), and extras."""
    file_keys, module_keys = set(file_keys), set(module_keys)
    return {"missing": sorted(module_keys - file_keys)[:20], "unexpected": sorted(file_keys - module_keys)[:20]}


def _detect(key: str, path: Path, comfy_dir: str) -> dict[str, Any]:
    import comfy.clip_vision
    import comfy.sd
    import comfy.utils
    import torch
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        file_keys = list(handle.keys())
    kind = FIXTURES[key].kind
    started = time.monotonic()
    out: dict[str, Any] = {}
    if kind == "wan_dit":
        patcher = comfy.sd.load_diffusion_model(str(path))  # what UNETLoader calls (nodes.py)
        base = patcher.model
        net = base.diffusion_model
        out.update(config_class=type(base.model_config).__name__, model_class=type(base).__name__,
                   image_to_video=bool(getattr(base, "image_to_video", False)), model_type=net.model_type,
                   in_dim=net.in_dim, out_dim=net.out_dim, dim=net.dim, num_heads=net.num_heads,
                   num_layers=net.num_layers, ffn_dim=net.ffn_dim, text_dim=net.text_dim,
                   patch_size=list(net.patch_size), img_emb=net.img_emb is not None,
                   latent_channels=base.latent_format.latent_channels,
                   latent_format=type(base.latent_format).__name__, model_sampling=type(base.model_sampling).__name__,
                   shift=float(base.model_sampling.shift), weight_dtype=str(base.get_dtype()),
                   **_key_check(file_keys, net.state_dict()))
    elif kind in ("wan21_vae", "wan22_vae", "taehv48"):
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))  # what VAELoader does
        vae.throw_exception_if_invalid()
        stage = vae.first_stage_model
        out.update(vae_class=f"{type(stage).__module__}.{type(stage).__name__}", latent_channels=vae.latent_channels,
                   spatial_ratio=int(vae.upscale_index_formula[1]),
                   frames_for_3_latents=int(vae.upscale_ratio[0](3)), vae_dtype=str(vae.vae_dtype),
                   **_key_check(file_keys, stage.state_dict()))
        if kind == "wan21_vae":
            out["dim"] = int(stage.decoder.head[0].gamma.shape[0])
        elif kind == "wan22_vae":
            out["dim"] = int(stage.dim)
        else:
            try:
                vae.encode(torch.zeros(1, 32, 32, 3))
                out["can_encode"] = True
            except NotImplementedError:
                out["can_encode"] = False
    elif kind == "clip_vision_h":
        vision = comfy.clip_vision.load(str(path))  # what CLIPVisionLoader calls
        if vision is None:
            raise RuntimeError(f"{path}: comfy.clip_vision.load did not recognise the file")
        tower = vision.model.vision_model
        out.update(config="clip_vision_config_h.json" if len(tower.encoder.layers) == 32 else "other",
                   hidden_size=int(tower.embeddings.class_embedding.shape[0]),
                   num_hidden_layers=len(tower.encoder.layers), image_size=vision.image_size, dtype=str(vision.dtype),
                   **_key_check(file_keys, vision.model.state_dict()))
    elif kind == "clip_l":
        clip = comfy.sd.load_clip([str(path)], clip_type=comfy.sd.CLIPType.SD3)  # CLIPLoader type "sd3"
        cond = clip.encode_from_tokens(clip.tokenize("a red coin slides to the right"))
        nonzero = int((cond.abs().amax(dim=(0, 1)) > 0).sum())
        prefix = "clip_l.transformer."
        wanted = [k[len(prefix):] for k in clip.cond_stage_model.state_dict() if k.startswith(prefix)]
        out.update(clip_class=type(clip.cond_stage_model).__mro__[1].__name__, cond_shape=list(cond.shape),
                   nonzero_channels=nonzero, finite=bool(torch.isfinite(cond).all()), **_key_check(file_keys, wanted))
    out["load_s"] = round(time.monotonic() - started, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description="ComfyUI-side half of tests/native_wan.py")
    parser.add_argument("command", choices=["build", "detect"])
    parser.add_argument("items", nargs="+", help="KEY=PATH pairs")
    parser.add_argument("--comfyui", required=True, help="the folder holding ComfyUI's main.py")
    parser.add_argument("--json-out", help="detect: where to write the report")
    options = parser.parse_args(argv)
    _comfy_imports(options.comfyui)
    pairs = [item.split("=", 1) for item in options.items]
    if options.command == "build":
        for key, path in pairs:
            _build(FIXTURES[key], Path(path), options.comfyui)
        return 0
    report = {key: _detect(key, Path(path), options.comfyui) for key, path in pairs}
    Path(options.json_out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
