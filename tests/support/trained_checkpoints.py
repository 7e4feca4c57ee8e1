"""Trained Stage 2 checkpoints for tests: tiny, random, in the format ttm-train writes.

``diffusers_checkpoint(transformer, variant, path)`` widens nothing in the model: it builds the
widened patch embedding (``trained.widen_patch_embedding``) and the new masked layers
(``families.masked_layers``) for a loaded diffusers denoiser, fills what training would change
with random values (``zero=False``: the extra input channels and the layers' output projections,
so the checkpoint really changes the output; ``zero=True``: the untrained initialisation) and
saves them with ``trained.save_trained``.

``native_checkpoint(file, variant, path)`` does the same for a native (ComfyUI key names) Wan
file, reading the shapes from the file's header (no ComfyUI import needed).

Both are deterministic: every value (the random ones and the layers' own initialisation) comes from
``seed``, so golden frames made with them are stable.

The shipped workflow ``workflows/ttm_trained_stage2_api.json`` on the tiny models, shared by the server,
golden and browser tests: ``install_trained_models(models)`` puts the tiny diffusers Wan 2.2 TI2V and one
checkpoint per tiny base into a ComfyUI ``models/`` folder that already holds the native Wan fixtures
(``native_wan.write_native_wan``); ``tiny_trained_workflow(graph, prefix)`` points the workflow at them.
The tiny bases of the two formats differ in shape (the diffusers one reads 32-wide text states,
ComfyUI builds Wan with 4096), so one checkpoint cannot fit both as it does for the real model: the
shipped loader feeds the diffusers node its checkpoint and a second loader (``NATIVE_LOADER``) the
native node.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from ttm_core.stage2.attention.layers import (
    MaskedBlockLayers,
    MaskedCrossAttentionLayer,
    MaskedLayers,
    MaskedSelfAttentionLayer,
)
from ttm_core.stage2.families import masked_layers
from ttm_core.stage2.trained import BaseShape, TrainedConfig, base_shape, save_trained, widen_patch_embedding
from ttm_core.train.palette import PALETTE_NAME

VARIANT = "wan2.2-ti2v-5b"
DIFFUSERS_MODEL = f"tiny_trained/{VARIANT}"
"""The tiny diffusers TI2V, as TTM_VideoModelLoader lists it (under models/diffusers)."""
DIFFUSERS_CKPT, NATIVE_CKPT = "tiny_diffusers_ti2v.safetensors", "tiny_native_ti2v.safetensors"
"""The checkpoints of the tiny diffusers and the tiny native base (under models/ttm)."""
NATIVE_LOADER = "13"
"""The node id of the second Trained Checkpoint Loader ``tiny_trained_workflow`` adds for the native node."""
TINY_SIZE = (64, 64)


def _randomise(wide: torch.nn.Module, layers: MaskedLayers, stock_channels: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        extra = wide.weight[:, stock_channels:]
        extra.copy_(torch.randn(extra.shape, generator=gen) * 0.5)
        for block in layers.blocks:
            for layer in (block.masked_self, block.masked_cross):
                if layer is None:
                    continue
                layer.to_out.weight.copy_(torch.randn(layer.to_out.weight.shape, generator=gen) * 0.2)
                for proj in (layer.to_q, layer.to_k, layer.to_v):
                    proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) * 0.3)


def _save(path: Path, config: TrainedConfig, wide: torch.nn.Module, layers: MaskedLayers) -> Path:
    tensors = {f"layers.{k}": v for k, v in layers.state_dict().items()}
    tensors["model.patch_embedding.weight"] = wide.weight.detach().float()
    if wide.bias is not None:
        tensors["model.patch_embedding.bias"] = wide.bias.detach().float()
    return save_trained(path, config, tensors)


def diffusers_checkpoint(transformer, variant: str, path: str | Path, num_blocks: int = 1, zero: bool = False,
                         seed: int = 0) -> Path:
    """A Stage 2 checkpoint for a loaded diffusers Wan transformer (condition channels = its latent channels)."""
    channels = int(transformer.config.out_channels)
    with torch.random.fork_rng(devices=[]):  # the layers' own initialisation (biases) from the seed too
        torch.manual_seed(seed)
        wide = widen_patch_embedding(transformer.patch_embedding, channels).float()
        layers = masked_layers(transformer, num_blocks)
    if not zero:
        _randomise(wide, layers, int(transformer.config.in_channels), seed)
    config = TrainedConfig(stage=2, variant=variant, base=base_shape(transformer), num_blocks=num_blocks,
                           condition_channels=channels, palette=PALETTE_NAME, step=0 if zero else 100)
    return _save(Path(path), config, wide, layers)


def stage1_checkpoint(transformer, variant: str, path: str | Path, zero: bool = False, seed: int = 0) -> Path:
    """A Stage 1 checkpoint for a loaded diffusers denoiser, as ``ttm-train stage1`` writes one.

    The patch embedding widened by the VAE's latent channels (x(0)'s latents, ``motion.trained``); with
    ``zero=False`` the appended channels get seeded random values (so x(0) really changes the output),
    K = 0 (Stage 1 has no masked layers), trained groups ``patch`` and ``full``.
    """
    channels = int(transformer.config.out_channels)
    wide = widen_patch_embedding(transformer.patch_embedding, channels).float()
    if not zero:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            extra = wide.weight[:, int(transformer.config.in_channels):]
            extra.copy_(torch.randn(extra.shape, generator=gen) * 0.5)
    config = TrainedConfig(stage=1, variant=variant, base=base_shape(transformer), num_blocks=0,
                           condition_channels=channels, palette=PALETTE_NAME, groups=("patch", "full"),
                           step=0 if zero else 100)
    tensors = {"model.patch_embedding.weight": wide.weight.detach().float()}
    if wide.bias is not None:
        tensors["model.patch_embedding.bias"] = wide.bias.detach().float()
    return save_trained(Path(path), config, tensors)


def _native_stock(file: str | Path) -> tuple[torch.nn.Conv3d, BaseShape, int]:
    """A native Wan file's stock patch embedding, its ``BaseShape`` and latent channels, read from its header."""
    with safe_open(str(file), framework="pt") as handle:
        keys = list(handle.keys())
        prefix = "model.diffusion_model." if any(k.startswith("model.diffusion_model.") for k in keys) else ""
        weight = handle.get_tensor(prefix + "patch_embedding.weight").float()
        bias = handle.get_tensor(prefix + "patch_embedding.bias").float()
        text = handle.get_slice(prefix + "text_embedding.0.weight").get_shape()
        head = handle.get_slice(prefix + "head.head.weight").get_shape()
    blocks = len({k[len(prefix):].split(".")[1] for k in keys if k[len(prefix):].startswith("blocks.")})
    dim, stock_channels = int(weight.shape[0]), int(weight.shape[1])
    stock = torch.nn.Conv3d(stock_channels, dim, (1, 2, 2), stride=(1, 2, 2))
    with torch.no_grad():
        stock.weight.copy_(weight)
        stock.bias.copy_(bias)
    return stock, BaseShape("wan", stock_channels, dim, blocks, (1, 2, 2), int(text[1])), int(head[0]) // 4


def native_checkpoint(file: str | Path, variant: str, path: str | Path, heads: int, num_blocks: int = 1,
                      zero: bool = False, seed: int = 0) -> Path:
    """A Stage 2 checkpoint for a native Wan file (ComfyUI key names), shapes read from its header."""
    with torch.random.fork_rng(devices=[]):  # the layers' own initialisation (biases) from the seed too
        torch.manual_seed(seed)
        stock, base, out_channels = _native_stock(file)
        wide = widen_patch_embedding(stock, out_channels)
        dim = base.inner_dim
        layers = MaskedLayers("wan", [MaskedBlockLayers(MaskedSelfAttentionLayer(dim, heads),
                                                        MaskedCrossAttentionLayer(dim, dim, heads))
                                      for _ in range(num_blocks)])
    if not zero:
        _randomise(wide, layers, base.in_channels, seed)
    config = TrainedConfig(stage=2, variant=variant, base=base, num_blocks=num_blocks,
                           condition_channels=out_channels, palette=PALETTE_NAME, step=0 if zero else 100)
    return _save(Path(path), config, wide, layers)


def native_stage1_checkpoint(file: str | Path, variant: str, path: str | Path, zero: bool = False,
                             seed: int = 0) -> Path:
    """A Stage 1 checkpoint for a native Wan file, as ``ttm-train stage1`` writes one for that base (K = 0, the
    patch embedding widened by the latent channels; ``zero=False``: seeded random appended channels)."""
    stock, base, out_channels = _native_stock(file)
    wide = widen_patch_embedding(stock, out_channels)
    if not zero:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            extra = wide.weight[:, base.in_channels:]
            extra.copy_(torch.randn(extra.shape, generator=gen) * 0.5)
    config = TrainedConfig(stage=1, variant=variant, base=base, num_blocks=0, condition_channels=out_channels,
                           palette=PALETTE_NAME, groups=("patch", "full"), step=0 if zero else 100)
    tensors = {"model.patch_embedding.weight": wide.weight.detach().float()}
    if wide.bias is not None:
        tensors["model.patch_embedding.bias"] = wide.bias.detach().float()
    return save_trained(Path(path), config, tensors)


def install_trained_models(models: str | Path) -> Path:
    """The tiny diffusers TI2V and one trained checkpoint per tiny base, in a ComfyUI ``models/`` folder.

    ``models`` must already hold the native Wan fixtures (``native_wan.write_native_wan``). Writes
    ``diffusers/tiny_trained/wan2.2-ti2v-5b`` and ``ttm/{DIFFUSERS_CKPT, NATIVE_CKPT}`` (seeds 3 and 4);
    files already there are kept (their content depends only on these seeds). Returns ``models``.
    """
    from diffusers import WanTransformer3DModel

    from native_wan import FIXTURES
    from tiny_diffusers import save_tiny

    models = Path(models)
    native_file = models / FIXTURES["wan22_ti2v"].relpath
    if not native_file.is_file():
        raise FileNotFoundError(f"{native_file} is missing: write the native Wan fixtures first (write_native_wan)")
    folder = models / "diffusers" / DIFFUSERS_MODEL
    if not (folder / "model_index.json").is_file():
        save_tiny(VARIANT, folder)
    if not (models / "ttm" / DIFFUSERS_CKPT).is_file():
        transformer = WanTransformer3DModel.from_pretrained(str(folder), subfolder="transformer")
        diffusers_checkpoint(transformer, VARIANT, models / "ttm" / DIFFUSERS_CKPT, seed=3)
    if not (models / "ttm" / NATIVE_CKPT).is_file():
        native_checkpoint(native_file, VARIANT, models / "ttm" / NATIVE_CKPT, heads=2, seed=4)
    return models


def tiny_trained_workflow(graph: dict, prefix: str, fmt: str = "png", trained: bool = True) -> dict:
    """The shipped trained workflow (API format, changed in place) on ``install_trained_models``' files.

    64 x 64, ``native_wan.TINY_FRAMES`` frames, 2 steps, both Video Combines writing ``fmt`` under
    ``prefix``; the shipped loader gets the diffusers checkpoint and a second loader (``NATIVE_LOADER``)
    feeds the native node its own. ``trained=False``: the same graph without any checkpoint (stock).
    """
    from native_wan import TINY_FRAMES, tiny_workflow

    tiny_workflow(graph, prefix, fmt=fmt, size=TINY_SIZE)
    loaders = [node_id for node_id, node in graph.items() if node["class_type"] == "TTM_TrainedCheckpointLoader"]
    if len(loaders) != 1 or NATIVE_LOADER in graph:
        raise ValueError(f"not the shipped trained workflow: loaders {loaders}, node {NATIVE_LOADER} taken: "
                         f"{NATIVE_LOADER in graph}")
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "TTM_VideoModelLoader":
            inputs.update(model=DIFFUSERS_MODEL, offload="none", dtype="fp32")
        elif node["class_type"] == "TTM_DiffusersMotionToVideo":
            inputs.update(width=TINY_SIZE[0], height=TINY_SIZE[1], length=TINY_FRAMES)
        elif node["class_type"] == "TTM_TrainedCheckpointLoader":
            inputs["checkpoint"] = DIFFUSERS_CKPT
        elif node["class_type"] == "TTM_WanMotionToVideo" and trained:
            inputs["trained"] = [NATIVE_LOADER, 0]
    if trained:
        graph[NATIVE_LOADER] = {"inputs": {"checkpoint": NATIVE_CKPT}, "class_type": "TTM_TrainedCheckpointLoader",
                                "_meta": {"title": "Trained Stage 2 checkpoint (tiny native base)"}}
        return graph
    for node in graph.values():
        node["inputs"].pop("trained", None)
    del graph[loaders[0]]
    return graph


# ------------------------------------------------------------------------------ the Stage 1 workflow
STAGE1_MODEL = f"tiny/{VARIANT}"
"""The tiny diffusers TI2V as Video Model Loader lists it on the plain server (stage2_cases.link_tiny_models)."""
STAGE1_CKPT = "tiny_stage1_ti2v.safetensors"
"""A random Stage 1 checkpoint of ``STAGE1_MODEL`` (under models/ttm)."""
STAGE2_ON_TINY = "tiny_stage2_ti2v.safetensors"
"""A Stage 2 checkpoint of the same base (under models/ttm): what Image To Motion must refuse, naming trained."""
STAGE1_FRAMES = 9


def install_stage1_models(models: str | Path) -> Path:
    """The tiny diffusers TI2V (kept when already there, e.g. linked by ``stage2_cases.link_tiny_models``), a
    Stage 1 checkpoint of it (seed 5) and a Stage 2 one (seed 6) in a ComfyUI ``models/`` folder. The
    checkpoints depend only on the tiny model's config and the seeds. Returns ``models``."""
    from tiny_diffusers import build_tiny, save_tiny

    models = Path(models)
    folder = models / "diffusers" / STAGE1_MODEL
    if not (folder / "model_index.json").is_file():
        save_tiny(VARIANT, folder)
    targets = {STAGE1_CKPT: 5, STAGE2_ON_TINY: 6}
    if all((models / "ttm" / name).is_file() for name in targets):
        return models
    transformer = build_tiny(VARIANT).transformer
    if not (models / "ttm" / STAGE1_CKPT).is_file():
        stage1_checkpoint(transformer, VARIANT, models / "ttm" / STAGE1_CKPT, seed=targets[STAGE1_CKPT])
    if not (models / "ttm" / STAGE2_ON_TINY).is_file():
        diffusers_checkpoint(transformer, VARIANT, models / "ttm" / STAGE2_ON_TINY, seed=targets[STAGE2_ON_TINY])
    return models


def tiny_stage1_workflow(graph: dict, prefix: str, fmt: str = "png") -> dict:
    """The shipped Stage 1 workflow (API format, changed in place) on ``install_stage1_models``' files.

    SAM 2, the detector and the LLM are the tiny models every test server has under the shipped names;
    the video model is the tiny TI2V (fp32, no offload), the checkpoint the tiny Stage 1 one;
    ``STAGE1_FRAMES`` frames, 2 steps without guidance (cfg 1) in both stages, Video Combine writing ``fmt``
    under ``prefix``.
    """
    kinds = {node["class_type"] for node in graph.values()}
    if not {"TTM_ImageToMotion", "TTM_TrainedCheckpointLoader", "TTM_VideoModelLoader"} <= kinds:
        raise ValueError(f"not the shipped Stage 1 workflow: {sorted(kinds)}")
    for node in graph.values():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "TTM_VideoModelLoader":
            inputs.update(model=STAGE1_MODEL, offload="none", dtype="fp32")
        elif kind == "TTM_TrainedCheckpointLoader":
            inputs["checkpoint"] = STAGE1_CKPT
        elif kind == "TTM_ImageToMotion":
            inputs.update(num_frames=STAGE1_FRAMES, steps=2, cfg=1.0)
        elif kind == "TTM_DiffusersMotionToVideo":
            inputs.update(steps=2, cfg=1.0)
        elif kind == "TTM_VideoCombine":
            inputs.update(format=fmt, filename_prefix=prefix)
    return graph
