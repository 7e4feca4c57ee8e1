"""Token grids: arithmetic per family, votes and boxes, and the mapping against the REAL models.

The token order is read from the models themselves: their patch embeddings are set to copy
latent coordinates into the first channels, the real forward runs, and a pre-hook on the first
block reads which latent cell each token came from. The frame -> latent-frame mapping is read
from the real causal VAEs (which latent frames change when one video frame changes).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attention_cases import (
    I2VGEN_CROSS_DIM,
    make_case,
    one_thread,  # noqa: F401 - autouse fixture
    tiny_cogvideox,
    tiny_i2vgen,
    tiny_wan,
    trajectory_from_labels,
)
from ttm_core.errors import TTMInputError
from ttm_core.stage2.attention.grids import token_grid, token_grid_from_labels
from ttm_core.stage2.families import COGVIDEOX_10, COGVIDEOX_15, I2VGEN_XL, WAN21_I2V, WAN22_TI2V, geometry_for, sites


def test_paper_and_model_sizes() -> None:
    # Wan 2.1 480p, 81 frames: 21 latent frames of 30 x 52 tokens (16 px each).
    assert WAN21_I2V.token_shape(81, 480, 832) == (21, 30, 52)
    # Wan 2.2 TI2V-5B 704 x 1280: 32 px per token.
    assert WAN22_TI2V.token_shape(121, 704, 1280) == (31, 22, 40)
    # CogVideoX 480 x 720, 49 frames: the benchmark's 13 x 30 x 45 grid.
    assert COGVIDEOX_10.token_shape(49, 480, 720) == (13, 30, 45)
    # CogVideoX 1.5: 13 latent frames padded to 14 at the front, 2 latent frames per token.
    assert COGVIDEOX_15.token_shape(49, 768, 1360) == (7, 48, 85)
    assert COGVIDEOX_15.token_frame_sources(9) == [[0, 0], [1, 2, 3, 4, 5, 6, 7, 8]]
    assert WAN21_I2V.token_frame_sources(9) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert I2VGEN_XL.token_shape(16, 512, 512) == (16, 64, 64)


def test_bad_sizes_are_user_errors() -> None:
    with pytest.raises(TTMInputError, match="4k\\+1"):
        WAN21_I2V.token_shape(80, 480, 832)
    with pytest.raises(TTMInputError, match="divisible by 16"):
        WAN21_I2V.token_shape(81, 480, 830)
    with pytest.raises(TTMInputError, match="divisible by 32"):
        WAN22_TI2V.token_shape(81, 480, 720)


def test_votes_ties_boxes_and_thin_objects() -> None:
    # One frame, 2 x 3 tokens of 16 px (Wan). Object 1 fills token (0, 0); object 2 a 2-px line in
    # token (1, 2); token (0, 1) is half object 1, half object 2 (tie: front-most wins).
    labels = torch.zeros(1, 32, 48, dtype=torch.uint8)
    labels[0, 0:16, 0:16] = 1
    labels[0, 0:16, 16:24] = 1
    labels[0, 0:16, 24:32] = 2
    labels[0, 20:22, 32:48] = 2
    front_1 = token_grid_from_labels(labels, (1, 2), WAN21_I2V, 1, 32, 48, depth_order=(1, 2))
    front_2 = token_grid_from_labels(labels, (1, 2), WAN21_I2V, 1, 32, 48, depth_order=(2, 1))
    assert front_1.ids.view(2, 3).tolist() == [[1, 1, 0], [0, 0, 0]]
    assert front_2.ids.view(2, 3).tolist() == [[1, 2, 0], [0, 0, 0]]
    # Boxes span every token an object touches: the thin line keeps its token.
    assert front_1.boxes[0].tolist() == [[0, 0, 1, 2], [0, 1, 2, 3]]
    in_box = front_1.in_box().view(2, 3, 2)
    assert in_box[..., 0].tolist() == [[True, True, False], [False, False, False]]
    assert in_box[..., 1].tolist() == [[False, True, True], [False, True, True]]
    # An object absent from a frame has an all-zero box there and no token.
    absent = token_grid_from_labels(labels, (1, 2, 3), WAN21_I2V, 1, 32, 48)
    assert absent.boxes[0, 2].tolist() == [0, 0, 0, 0] and not absent.in_box()[:, 2].any()


def test_trajectory_length_and_size_are_resampled() -> None:
    # 5 label frames for a 9-frame video at twice the label size: frame f reads label frame f / 2,
    # halves rounded up.
    labels = torch.zeros(5, 24, 32, dtype=torch.uint8)
    for t in range(5):
        labels[t, :, 8 * (t % 4):8 * (t % 4) + 8] = 1
    grid = token_grid(trajectory_from_labels(labels), WAN21_I2V, 9, 48, 64)
    # Latent frame 2 covers video frames 5..8 = label frames 3, 3, 4, 4: the object sits in token
    # column 3 (label frame 3) half of the time and in column 0 (label frame 4) the other half.
    assert grid.fractions[1, 2, 0].tolist() == pytest.approx([0.5, 0.0, 0.0, 0.5])
    # Latent frame 0 is video frame 0 alone = label frame 0: column 0 fully.
    assert grid.fractions[1, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])


def _marker_tokens(case_name: str) -> tuple[torch.Tensor, object]:
    """(t, y, x) latent origin of every token in model order, read from the real forward."""
    case = make_case(case_name)
    model = case.model
    captured = {}
    if case_name.startswith("wan"):
        conv = model.patch_embedding
        first_block = model.blocks[0]
        with torch.no_grad():
            conv.weight.zero_()
            conv.bias.zero_()
            for c in range(3):
                conv.weight[c, c, 0, 0, 0] = 1.0
        latents = torch.zeros_like(case.latents)
        _, _, t, h, w = latents.shape
        latents[:, 0] = torch.arange(t, dtype=torch.float32)[:, None, None]
        latents[:, 1] = torch.arange(h, dtype=torch.float32)[None, :, None]
        latents[:, 2] = torch.arange(w, dtype=torch.float32)[None, None, :]
    else:
        embed = model.patch_embed
        embed.use_positional_embeddings = False
        first_block = model.transformer_blocks[0]
        with torch.no_grad():
            embed.proj.weight.zero_()
            embed.proj.bias.zero_()
            per_channel = embed.proj.weight[0].numel() // case.latents.shape[2]
            for c in range(3):
                if isinstance(embed.proj, nn.Conv2d):
                    embed.proj.weight[c, c, 0, 0] = 1.0
                else:  # 1.5: a linear over (C, pt, p, p) patches
                    embed.proj.weight[c, c * per_channel] = 1.0
        latents = torch.zeros_like(case.latents)
        _, t, _, h, w = latents.shape
        latents[:, :, 0] = torch.arange(t, dtype=torch.float32)[:, None, None]
        latents[:, :, 1] = torch.arange(h, dtype=torch.float32)[None, :, None]
        latents[:, :, 2] = torch.arange(w, dtype=torch.float32)[None, None, :]

    def grab(module, args, kwargs):  # forward pre-hook signature
        captured["tokens"] = (kwargs.get("hidden_states", args[0] if args else None))[0, :, :3].clone()

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            case.run(model, latents)
    finally:
        handle.remove()
    return captured["tokens"].round().to(torch.int64), case


@pytest.mark.parametrize("case_name", ["wan_i2v", "wan_ti2v", "cog10", "cog15"])
def test_grid_matches_the_models_real_token_order(case_name: str) -> None:
    tokens, case = _marker_tokens(case_name)
    geometry = geometry_for(case.model)
    pt, ph, pw = geometry.patch
    tt, ht, wt = geometry.token_shape(case.num_frames, case.height, case.width)
    assert tokens.shape[0] == tt * ht * wt  # the model has as many video tokens as our grid
    # A random label per token cell, painted over the pixels and frames that cell covers.
    cells = torch.randint(0, 4, (tt, ht, wt), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    cell_h, cell_w = geometry.pixels_per_token
    labels = torch.zeros(case.num_frames, case.height, case.width, dtype=torch.uint8)
    for t, frames in enumerate(geometry.token_frame_sources(case.num_frames)):
        labels[sorted(set(frames))] = cells[t].repeat_interleave(cell_h, 0).repeat_interleave(cell_w, 1)
    grid = token_grid_from_labels(labels, (1, 2, 3), geometry, case.num_frames, case.height, case.width)
    # Token n of the MODEL comes from latent cell (t, y, x): our id for n must be that cell's label.
    expected = cells[tokens[:, 0] // pt, tokens[:, 1] // ph, tokens[:, 2] // pw].to(torch.int64)
    assert torch.equal(grid.ids, expected)
    # and the model's tokens are the patch origins in (t, y, x) row-major order
    assert torch.equal(tokens[:, 0] // pt * ht * wt + tokens[:, 1] // ph * wt + tokens[:, 2] // pw,
                       torch.arange(tt * ht * wt))


def _first_changed_latent_frame(encode, video: torch.Tensor, base: torch.Tensor, frame: int) -> tuple[int, float]:
    moved = video.clone()
    moved[:, :, frame] += 1.0
    change = (encode(moved) - base).abs().amax(dim=(0, 1, 3, 4))
    first = int((change > 1e-6).nonzero()[0])
    return first, float(change[:first].abs().max()) if first else 0.0


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_frame_to_latent_mapping_matches_the_real_causal_vae(family: str) -> None:
    from diffusers import AutoencoderKLCogVideoX, AutoencoderKLWan

    torch.manual_seed(0)
    if family == "wan":
        vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True]).eval()
        geometry = geometry_for(tiny_wan(), vae)
    else:
        vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                     norm_num_groups=4, temporal_compression_ratio=4).eval()
        # GroupNorm statistics span all frames: a global coupling unrelated to WHICH latent frame
        # encodes a video frame. Identities expose the causal convolutions and time compression.
        for module in list(vae.encoder.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.GroupNorm):
                    setattr(module, name, nn.Identity())
        geometry = geometry_for(tiny_cogvideox())
    video = torch.randn(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(1))

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.encode(x).latent_dist.mean

    base = encode(video)
    assert base.shape[2] == geometry.latent_frames(9) == 3
    latent_of = {}
    for t, frames in enumerate(geometry.token_frame_sources(9) if geometry.patch[0] == 1 else []):
        for f in frames:
            latent_of[f] = t
    for frame in range(9):
        first, before = _first_changed_latent_frame(encode, video, base, frame)
        assert first == latent_of[frame], f"frame {frame} lands in latent frame {first}"
        assert before == 0.0  # causal: earlier latent frames do not move


def _unet_attn1_inputs(model: nn.Module, run, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    seen = {}
    modules = dict(model.named_modules())
    handles = []
    for site in sites(model):
        def grab(module, args, kwargs, name=site.self_attn):
            seen[name] = kwargs.get("hidden_states", args[0] if args else None).clone()
        handles.append(modules[site.self_attn].register_forward_pre_hook(grab, with_kwargs=True))
    try:
        with torch.no_grad():
            run(model, latents)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("case_name", ["i2vgen", "svd"])
def test_unet_levels_and_batch_layout_match_the_real_unet(case_name: str) -> None:
    # An odd latent (13 x 17) exercises diffusers' ceil-sized downsampling: 13x17, 7x9, 4x5, 2x3.
    case = make_case(case_name)
    frames = case.num_frames
    if case_name == "i2vgen":
        latents = torch.randn(2, 4, frames, 13, 17)

        def run(m, x):
            return m(x, torch.tensor([700]), fps=torch.tensor([8, 8]), image_latents=torch.zeros_like(x),
                     image_embeddings=torch.zeros(2, I2VGEN_CROSS_DIM),
                     encoder_hidden_states=torch.zeros(2, 5, I2VGEN_CROSS_DIM)).sample
    else:
        latents = torch.randn(2, frames, 8, 13, 17)

        def run(m, x):
            return m(x, torch.tensor([700.0]), torch.zeros(2, 1, 12), torch.tensor([[6.0, 127.0, 0.02]] * 2)).sample
    labels = torch.zeros(frames, 13 * 8, 17 * 8, dtype=torch.uint8)
    labels[:, 8:40, 8:48] = 1
    grid = token_grid(trajectory_from_labels(labels), geometry_for(case.model), frames, 13 * 8, 17 * 8)
    seen = _unet_attn1_inputs(case.model, run, latents)
    assert seen, "no spatial attention ran"
    levels = set()
    for hidden in seen.values():
        assert hidden.shape[0] == 2 * frames  # one attention batch row per (batch, frame)
        level = grid.level_for_tokens(hidden.shape[1])
        _, h, w = level.shape
        assert (h, w) == (math.ceil(13 / 2 ** level.level), math.ceil(17 / 2 ** level.level))
        levels.add(level.level)
    assert levels == {0, 1, 2, 3}  # 13x17, 7x9, 4x5 and the mid block at 2x3
    # Rows are batch-major (b * F + f): changing batch item 1 leaves rows 0..F-1 untouched.
    moved = latents.clone()
    moved[1] += 1.0
    first = next(iter(seen))
    after = _unet_attn1_inputs(case.model, run, moved)[first]
    assert torch.equal(after[:frames], seen[first][:frames])
    assert (after[frames:] - seen[first][frames:]).abs().max().item() > 1e-4


def test_unet_sequence_is_row_major_within_a_frame() -> None:
    """The spatial transformer flattens [(b f), C, h, w] to [(b f), h * w, C] row-major (y * w + x)."""
    model = tiny_i2vgen()
    transformer = model.down_blocks[0].attentions[0]
    transformer.norm = nn.Identity()
    with torch.no_grad():
        weight = transformer.proj_in.weight
        weight.zero_()
        eye = torch.eye(weight.shape[0], weight.shape[1])
        weight.copy_(eye.view(weight.shape))
        transformer.proj_in.bias.zero_()
    seen = {}
    h1 = transformer.register_forward_pre_hook(lambda m, a, k: seen.__setitem__("in", (k.get("hidden_states") if
                                               "hidden_states" in k else a[0]).clone()), with_kwargs=True)
    h2 = transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, k: seen.__setitem__("tokens", (k.get("hidden_states") if "hidden_states" in k else a[0]).clone()),
        with_kwargs=True)
    case = make_case("i2vgen")
    try:
        with torch.no_grad():
            case.run(model, case.latents)
    finally:
        h1.remove()
        h2.remove()
    image, tokens = seen["in"], seen["tokens"]
    bf, c, h, w = image.shape
    assert torch.allclose(tokens, image.permute(0, 2, 3, 1).reshape(bf, h * w, c), atol=1e-6)


def test_counting_equals_area_pooling_and_odd_label_sizes_still_map() -> None:
    gen = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 4, (9, 48, 64), generator=gen).to(torch.uint8)  # 3 labels + background
    labels[labels == 3] = 7  # an id the object list does not know: counted as background
    grid = token_grid_from_labels(labels, (1, 2), WAN21_I2V, 9, 48, 64)
    for t, frames in enumerate(WAN21_I2V.token_frame_sources(9)):
        picked = labels[frames]
        for c, value in enumerate((0, 1, 2)):
            share = ((picked == value) | ((picked == 7) & (value == 0))).to(torch.float32).mean(dim=0)
            pooled = torch.nn.functional.adaptive_avg_pool2d(share[None], grid.shape[1:])[0]
            assert torch.allclose(grid.fractions[c, t], pooled, atol=1e-6)
    # labels at a size that is no multiple of the token grid go through area pooling
    odd = labels[:, :47, :61]
    odd_grid = token_grid_from_labels(odd, (1, 2), WAN21_I2V, 9, 48, 64)
    assert odd_grid.shape == grid.shape
    assert torch.allclose(odd_grid.fractions.sum(dim=0), torch.ones(grid.shape), atol=1e-5)
