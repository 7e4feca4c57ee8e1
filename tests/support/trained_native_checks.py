"""The trained checkpoint in both backends at the denoiser forward, inside a real ComfyUI.

Run by ComfyUI's Python (tests/comfy/test_trained_native.py): loads the tiny native Wan 2.2 TI2V
fixture with ComfyUI's own loader, builds diffusers' WanTransformer3DModel with the SAME weights
(ComfyUI's names converted by diffusers' own single-file converter), writes a trained checkpoint
for that base (random "trained" values, and an untrained zero-init one), and runs one forward of
each backend on the same input, condition, trajectory and local prompts:

* diffusers: ``trained.trained_denoiser`` + ``masked_attention`` in new-layers mode;
* native: ``native.patch.WanPatch`` with ``native.trained.TrainedWan`` on a clone of the MODEL,
  called the way ComfyUI's sampling calls the diffusion model (the patcher's wrappers in the options).

Writes a JSON of the measured differences.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--pack", required=True)
    parser.add_argument("--model", required=True, help="the tiny native Wan 2.2 TI2V file")
    parser.add_argument("--work", required=True)
    parser.add_argument("--json-out", required=True)
    a = parser.parse_args()
    sys.path.insert(0, a.comfyui)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.patcher_extension
    import comfy.sd
    import comfy.utils
    import torch
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    spec = importlib.util.spec_from_file_location("ttm_pack", Path(a.pack) / "__init__.py",
                                                  submodule_search_locations=[a.pack])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["ttm_pack"] = pack
    spec.loader.exec_module(pack)
    sys.path.insert(0, str(Path(a.pack) / "tests" / "support"))
    sys.path.insert(0, a.pack)
    from ttm_pack.native.patch import WanPatch
    from ttm_pack.native.trained import TrainedInputs, TrainedWan
    from ttm_pack.native.wan import check_wan
    from ttm_pack.ttm_core.stage2.attention.grids import token_grid
    from ttm_pack.ttm_core.stage2.attention.install import masked_attention
    from ttm_pack.ttm_core.stage2.attention.state import MaskedAttentionPlan
    from ttm_pack.ttm_core.stage2.families.wan import WAN22_TI2V
    from ttm_pack.ttm_core.stage2.settings import MaskedAttention, Stage2Settings
    from ttm_pack.ttm_core.stage2.trained import load_trained, trained_denoiser, trained_masking
    from ttm_pack.ttm_core.types import ObjectPrompt, Objects, Prompts, Trajectory

    from trained_checkpoints import diffusers_checkpoint, native_stage1_checkpoint, stage1_checkpoint

    torch.manual_seed(0)
    model = comfy.sd.load_diffusion_model(a.model)
    info = check_wan(model)
    diffusion = model.model.diffusion_model
    state = {k: v.float() for k, v in comfy.utils.load_torch_file(a.model).items()}
    converted = convert_wan_transformer_to_diffusers(dict(state))
    reference = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=diffusion.num_heads,
        attention_head_dim=diffusion.dim // diffusion.num_heads,
        in_channels=diffusion.in_dim, out_channels=diffusion.out_dim, text_dim=diffusion.text_embedding[0].in_features,
        freq_dim=diffusion.freq_dim, ffn_dim=diffusion.ffn_dim, num_layers=len(diffusion.blocks),
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024).eval()
    missing, unexpected = reference.load_state_dict(converted, strict=False)
    assert not missing and not unexpected, (missing[:4], unexpected[:4])

    work = Path(a.work)
    variant = "wan2.2-ti2v-5b"
    paths = {"trained": diffusers_checkpoint(reference, variant, work / "trained.safetensors", num_blocks=2, seed=5),
             "zero": diffusers_checkpoint(reference, variant, work / "zero.safetensors", num_blocks=2, zero=True)}

    frames, lat_h, lat_w = 3, 4, 8
    height, width, num_frames = lat_h * 16, lat_w * 16, 4 * (frames - 1) + 1
    labels = torch.zeros(num_frames, height, width, dtype=torch.uint8)
    for t in range(num_frames):
        labels[t, 8:40, 4 + 4 * t:44 + 4 * t] = 1
        labels[t, 36:60, 80:120] = 2
    prompts = Prompts("two boxes", "two boxes move", (ObjectPrompt("box", "a red box"),
                                                       ObjectPrompt("crate", "a wooden crate")))
    masks = torch.stack([(labels[0] == i).float() for i in (1, 2)])
    trajectory = Trajectory(labels, Objects(prompts, masks), 8.0)
    gen = torch.Generator().manual_seed(1)
    text_dim = diffusion.text_embedding[0].in_features
    local = (torch.randn(3, text_dim, generator=gen), torch.randn(2, text_dim, generator=gen))
    states, owners = torch.cat(local), torch.tensor([1, 1, 1, 2, 2])
    x = torch.randn(1, diffusion.in_dim, frames, lat_h, lat_w, generator=gen)
    condition = torch.randn(1, diffusion.out_dim, frames, lat_h, lat_w, generator=gen)
    context = torch.randn(1, 16, text_dim, generator=gen)
    timestep = torch.tensor([600.0])

    seen_channels: list[int] = []

    def diffusers_forward(weights=None) -> torch.Tensor:
        with torch.no_grad():
            if weights is None:
                return reference(hidden_states=x, timestep=timestep, encoder_hidden_states=context,
                                 return_dict=False)[0]
            masking = trained_masking(weights, MaskedAttention())
            grid = token_grid(trajectory, WAN22_TI2V, num_frames, height, width)
            with trained_denoiser(reference, weights, condition) as layers, \
                    masked_attention(reference, MaskedAttentionPlan(grid, local, masking), layers) as st:
                out = reference(hidden_states=x, timestep=timestep, encoder_hidden_states=context,
                                return_dict=False)[0]
            assert sum(st.calls.values()) == 4, st.calls
            return out

    def native_forward(weights=None) -> torch.Tensor:
        patched = model
        if weights is not None:
            masking = trained_masking(weights, MaskedAttention())
            prepared = TrainedWan(weights, model, info, condition, trajectory, states, owners, masking)
            patch = WanPatch(trajectory, states, owners, Stage2Settings(masking, None), info, (1.0, 0.0), None,
                             prepared)
            patched = patch.install(model)
        patched.patch_model()
        try:
            options = dict(patched.model_options.get("transformer_options", {}), wrappers=patched.wrappers,
                           sigmas=torch.tensor([0.6]), cond_or_uncond=[0])
            # ComfyUI reads the input channels from this weight (model_base.WAN21.concat_cond): it must stay stock.
            seen_channels.append(int(patched.model.diffusion_model.patch_embedding.weight.shape[1]))
            with torch.no_grad():
                return patched.model.diffusion_model(x, timestep, context, transformer_options=options).clone()
        finally:
            patched.unpatch_model()

    def diff(p, q) -> float:
        return float((p.float() - q.float()).abs().max())

    stock_d, stock_n = diffusers_forward(), native_forward()
    result = {"stock_diffusers_vs_native": diff(stock_d, stock_n)}
    for name, path in paths.items():
        d_weights = load_trained(path)
        out_d, out_n = diffusers_forward(d_weights), native_forward(d_weights)
        result[f"{name}_diffusers_vs_native"] = diff(out_d, out_n)
        result[f"{name}_diffusers_vs_stock"] = diff(out_d, stock_d)
        result[f"{name}_native_vs_stock"] = diff(out_n, stock_n)
    result["embedding_channels_seen_by_comfyui"] = sorted(set(seen_channels))
    result["stock_channels"] = int(diffusion.in_dim)
    result["output_scale"] = float(stock_n.abs().max())
    # Stage 1: the same checkpoint file format with only the input side (widened embedding, x(0)'s latents appended).
    def stage1_native(weights) -> torch.Tensor:
        prepared = TrainedInputs(weights, model, info, condition, 1)
        patched = model.clone()
        prepared.install(patched)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "s1",
                                     prepared.diffusion_model_wrapper)
        patched.patch_model()
        try:
            options = dict(patched.model_options.get("transformer_options", {}), wrappers=patched.wrappers)
            with torch.no_grad():
                return patched.model.diffusion_model(x, timestep, context, transformer_options=options).clone()
        finally:
            patched.unpatch_model()

    stage1 = {"stage1": stage1_checkpoint(reference, variant, work / "s1.safetensors", seed=8),
              "stage1_zero": stage1_checkpoint(reference, variant, work / "s1_zero.safetensors", zero=True),
              "stage1_from_native_file": native_stage1_checkpoint(a.model, variant, work / "s1n.safetensors", seed=8)}
    for name, path in stage1.items():
        weights = load_trained(path)
        with torch.no_grad(), trained_denoiser(reference, weights, condition):
            out_d = reference(hidden_states=x, timestep=timestep, encoder_hidden_states=context, return_dict=False)[0]
        out_n = stage1_native(weights)
        result[f"{name}_diffusers_vs_native"] = diff(out_d, out_n)
        result[f"{name}_native_vs_stock"] = diff(out_n, stock_n)
    after = native_forward()
    result["native_after_vs_stock"] = diff(after, stock_n)
    result["patch_embedding_restored"] = type(model.model.diffusion_model.patch_embedding).__name__
    Path(a.json_out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
