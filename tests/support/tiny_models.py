"""Tiny random-weight models saved exactly in the layouts users put real weights in.

No pretrained weights exist on the test machines, so every loader is exercised with tiny
models built from configs (fixed seeds: the same files every run), written to disk in the
user's layout and read back by the same code users run:

* ``models/sam2/<name>.pt`` / ``.safetensors``: a Meta SAM 2.1 checkpoint with the Hiera-tiny
  stage layout at reduced widths (``{"model": state_dict}`` like Meta's files);
* ``models/sam2/<folder>/``: a Hugging Face ``sam2_video`` folder (model + processors);
* ``models/grounding-dino/<folder>/``: a Grounding DINO folder (model + processor);
* ``models/LLM/<folder>/``: a Llama-architecture chat model with a byte-level BPE tokenizer
  and a chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

SAM2_TINY_WIDTH = 8  # Hiera embed dim (Meta's tiny: 96)
SAM2_TINY_D_MODEL = 32  # neck / memory attention / decoder width (Meta: 256)
SAM2_TINY_MEM_DIM = 16  # memory encoder output (Meta: 64)


def tiny_meta_sam2_config():
    """Meta's packaged sam2.1_hiera_t.yaml with every width shrunk (same stage layout)."""
    from omegaconf import OmegaConf

    from ttm_core.segment.sam2 import _packaged_config

    cfg = OmegaConf.load(_packaged_config("2.1", "t"))
    m = cfg.model
    width, d_model, mem = SAM2_TINY_WIDTH, SAM2_TINY_D_MODEL, SAM2_TINY_MEM_DIM
    m.image_encoder.trunk.embed_dim = width
    m.image_encoder.neck.d_model = d_model
    m.image_encoder.neck.position_encoding.num_pos_feats = d_model
    m.image_encoder.neck.backbone_channel_list = [width * 8, width * 4, width * 2, width]
    m.memory_attention.d_model = d_model
    m.memory_attention.num_layers = 1
    layer = m.memory_attention.layer
    layer.d_model = d_model
    layer.dim_feedforward = 64
    layer.self_attention.embedding_dim = d_model
    layer.cross_attention.embedding_dim = d_model
    layer.cross_attention.kv_in_dim = mem
    m.memory_encoder.out_dim = mem
    m.memory_encoder.in_dim = d_model
    m.memory_encoder.position_encoding.num_pos_feats = mem
    m.memory_encoder.mask_downsampler.embed_dim = d_model
    m.memory_encoder.fuser.layer.dim = d_model
    m.memory_encoder.fuser.num_layers = 1
    m.num_maskmem = 2  # fewer memory frames: tracking tests stay fast on CPU
    return cfg


def make_meta_sam2(path: Path, seed: int = 0, image_size: int | None = None) -> Path:
    """Write a tiny Meta-format SAM 2.1 checkpoint (``.pt`` or ``.safetensors`` by suffix).

    With ``image_size`` (Meta's checkpoints are all 1024, which the weights do not reveal) the
    config goes beside the checkpoint as ``<stem>.yaml``, the override users have for custom
    models; tracking tests use 256 to stay fast on CPU.
    """
    from omegaconf import OmegaConf

    from ttm_core.segment.sam2 import build_meta_model

    torch.manual_seed(seed)
    cfg = tiny_meta_sam2_config()
    if image_size is not None:
        cfg.model.image_size = image_size
        layer = cfg.model.memory_attention.layer
        for attention in (layer.self_attention, layer.cross_attention):
            attention.feat_sizes = [image_size // 16, image_size // 16]
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, path.with_suffix(".yaml"))
    model = build_meta_model(cfg)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"model": state}, str(path))
    return path


def make_hf_sam2(folder: Path, seed: int = 0) -> Path:
    """Write a tiny Hugging Face ``sam2_video`` folder (loads as Sam2Model and Sam2VideoModel)."""
    from transformers import (
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2Processor,
        Sam2VideoConfig,
        Sam2VideoModel,
        Sam2VideoProcessor,
        Sam2VideoVideoProcessor,
        Sam2VisionConfig,
    )

    torch.manual_seed(seed)
    size = 256
    backbone = Sam2HieraDetConfig(hidden_size=8, num_attention_heads=1, blocks_per_stage=[1, 1, 2, 1],
                                  embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                                  window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],
                                  image_size=[size, size])
    hidden = 128  # transformers hard-codes a 64-channel memory and splits object pointers (hidden > 64) into 64s
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2],
                              fpn_hidden_size=hidden)
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": size, "patch_size": 16},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 64, "num_attention_heads": 4,
                             "iou_head_hidden_dim": 32},
        image_size=size, memory_attention_hidden_size=hidden, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64, mask_downsampler_embed_dim=hidden, memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64, memory_fuser_num_layers=1,
        memory_attention_rope_feat_sizes=[size // 16, size // 16], num_maskmem=2,
    )
    model = Sam2VideoModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    image_processor = Sam2ImageProcessor(size={"height": size, "width": size}, mask_size={"height": size // 4,
                                                                                              "width": size // 4})
    Sam2Processor(image_processor=image_processor, target_size=size, point_pad_value=-10).save_pretrained(str(folder))
    video_processor = Sam2VideoVideoProcessor(size={"height": size, "width": size})
    Sam2VideoProcessor(image_processor=image_processor, video_processor=video_processor,
                       target_size=size).save_pretrained(str(folder))
    return folder


def make_hf_sam3(folder: Path, seed: int = 0) -> Path:
    """Write a tiny SAM 3 folder in facebook/sam3's layout (``sam3_video``: detector + tracker in one
    ``model.safetensors``, saved by transformers) with the tracker's processor files."""
    from transformers import (
        Sam2VideoVideoProcessor,
        Sam3ImageProcessor,
        Sam3TrackerVideoProcessor,
        Sam3VideoConfig,
        Sam3VideoModel,
    )

    torch.manual_seed(seed)
    size, patch = 112, 14  # SAM 3's ViT patch is 14 px (1008 = 72 x 14 in facebook/sam3)
    grid = size // patch
    hidden = 128  # as for SAM 2: the tracker's memory is 64 channels and object pointers split into 64s
    vision = {"model_type": "sam3_vision_model", "fpn_hidden_size": hidden,
              "backbone_feature_sizes": [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
              "backbone_config": {"model_type": "sam3_vit_model", "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": size,
                                  "patch_size": patch, "window_size": 4, "global_attn_indexes": [1],
                                  "pretrain_image_size": 56}}
    small = {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    detector = {"model_type": "sam3", "vision_config": vision,
                "text_config": {"model_type": "clip_text_model", "vocab_size": 100, "hidden_size": 32,
                                "intermediate_size": 64, "projection_dim": 32, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 0,
                                "eos_token_id": 1, "pad_token_id": 1},
                "geometry_encoder_config": small, "detr_encoder_config": small,
                "detr_decoder_config": {**small, "num_queries": 8},
                "mask_decoder_config": {"hidden_size": 32, "num_attention_heads": 2}}
    tracker = {"model_type": "sam3_tracker_video", "vision_config": vision, "image_size": size,
               "prompt_encoder_config": {"hidden_size": hidden, "image_size": size, "patch_size": patch},
               "mask_decoder_config": {"hidden_size": hidden, "mlp_dim": 64, "num_attention_heads": 4,
                                       "iou_head_hidden_dim": 32},
               "memory_attention_hidden_size": hidden, "memory_attention_num_layers": 1,
               "memory_attention_feed_forward_hidden_size": 64, "memory_encoder_hidden_size": hidden,
               "memory_encoder_output_channels": 64, "mask_downsampler_embed_dim": hidden,
               "memory_fuser_embed_dim": hidden, "memory_fuser_intermediate_dim": 64, "memory_fuser_num_layers": 1,
               "memory_attention_rope_feat_sizes": [grid, grid], "num_maskmem": 2}
    model = Sam3VideoModel(Sam3VideoConfig(detector_config=detector, tracker_config=tracker)).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    image_processor = Sam3ImageProcessor(size={"height": size, "width": size},
                                         mask_size={"height": size // 4, "width": size // 4})
    video_processor = Sam2VideoVideoProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                              image_std=[0.5] * 3)
    Sam3TrackerVideoProcessor(image_processor=image_processor, video_processor=video_processor,
                              target_size=size).save_pretrained(str(folder))
    return folder


def make_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """Write a tiny Grounding DINO folder (Swin backbone + BERT text encoder + processor)."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["coin", "coins", "dog", "cat", "ball", "left", "right", "middle", "bird", "car", "person", "a", "the"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *words, *[f"##{c}" for c in letters], *letters]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=64)
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=128,
                          out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                                 decoder_attention_heads=2, num_queries=20, num_feature_levels=4,
                                 encoder_n_points=2, decoder_n_points=2, max_text_len=32, use_timm_backbone=False,
                                 use_pretrained_backbone=False)
    model = GroundingDinoForObjectDetection(config).eval()
    model.save_pretrained(str(folder))
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 192})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tiny_llm(folder: Path, seed: int = 0) -> Path:
    """Write a tiny Llama chat model with a byte-level BPE tokenizer trained offline on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [
        '{"motion_prompt": "Two coins slide apart.", "objects": [{"name": "left coin", "prompt": "a coin"}]}',
        "A dog runs to the left while a cat jumps onto the sofa. The birds fly away over the lake.",
        "Split the caption into a motion prompt and one prompt per movable object.",
    ]
    special = ["<|begin|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|begin|>", eos_token="<|end|>",
                                   pad_token="<|pad|>", model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).eval().save_pretrained(str(folder))
    (folder / "README.txt").write_text(json.dumps({"note": "tiny random test model"}))
    return folder


@dataclass(frozen=True)
class TinyModels:
    """Where the session's tiny models are (each in its user layout)."""

    root: Path
    meta_pt: Path  # models/sam2/<name>.pt, config inferred (1024 px like Meta's)
    meta_safetensors: Path  # the same weights as .safetensors
    meta_small_image: Path  # models/sam2/<name>.pt + <name>.yaml (256 px, for fast tracking)
    hf_sam2: Path  # models/sam2/<folder>/ (sam2_video)
    hf_sam3: Path  # models/sam3/<folder>/ (sam3_video, as facebook/sam3)
    detector: Path  # models/grounding-dino/<folder>/
    llm: Path  # models/LLM/<folder>/

    # The names the shipped workflows use (tests install the tiny models under them).
    SHIPPED: ClassVar[dict[str, str]] = {"sam2": "sam2.1_hiera_tiny.pt", "grounding-dino": "grounding-dino-tiny",
               "LLM": "Llama-3.1-8B-Instruct"}

    def install(self, models_dir: Path) -> None:
        """Link the tiny models into a ComfyUI models folder, under the shipped names and their own."""
        links = {
            ("sam2", self.SHIPPED["sam2"]): self.meta_pt,
            ("sam2", self.meta_safetensors.name): self.meta_safetensors,
            ("sam2", self.hf_sam2.name): self.hf_sam2,
            ("sam2", self.meta_small_image.name): self.meta_small_image,
            ("sam2", self.meta_small_image.with_suffix(".yaml").name): self.meta_small_image.with_suffix(".yaml"),
            ("sam3", self.hf_sam3.name): self.hf_sam3,
            ("grounding-dino", self.SHIPPED["grounding-dino"]): self.detector,
            ("LLM", self.SHIPPED["LLM"]): self.llm,
        }
        for (folder, name), target in links.items():
            link = models_dir / folder / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(target, target_is_directory=target.is_dir())


def build_tiny_models(root: Path) -> TinyModels:
    """Build every tiny model once (about 15 s on two busy cores)."""
    sam2 = root / "models" / "sam2"
    models = TinyModels(
        root=root,
        meta_pt=make_meta_sam2(sam2 / "ttm-tiny-sam2.1.pt"),
        meta_safetensors=make_meta_sam2(sam2 / "ttm-tiny-sam2.1.safetensors"),
        meta_small_image=make_meta_sam2(sam2 / "ttm-tiny-256.pt", image_size=256),
        hf_sam2=make_hf_sam2(sam2 / "ttm-tiny-hf-sam2"),
        hf_sam3=make_hf_sam3(root / "models" / "sam3" / "ttm-tiny-sam3"),
        detector=make_grounding_dino(root / "models" / "grounding-dino" / "ttm-tiny-grounding-dino"),
        llm=make_tiny_llm(root / "models" / "LLM" / "ttm-tiny-llm"),
    )
    return models
