"""Global, negative and local prompts through the model's own text encoder.

The global and negative prompts are encoded by the pipeline's own encoding function (so the
result is bit-identical to what the stock pipeline computes from the same strings) and handed to
the pipeline as ``prompt_embeds`` / ``negative_prompt_embeds``. Each object's local prompt goes
through the same function and keeps its real tokens only (no padding), as
``attention.MaskedAttentionPlan`` wants them: ``[tokens_l, D]``.

Where the stock pipelines silently truncate a long prompt, this module refuses it before any
encoding, naming the prompt and the limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ...errors import TTMInputError
from .loader import VideoModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptText:
    """One prompt to encode and the node input it came from (for error messages).

    Attributes:
        text: the prompt.
        input_name: the node input holding it (``"prompts"``, ``"negative_prompt"``).
        what: how to call it in a message, e.g. ``"the local prompt of 'cat'"``.
    """

    text: str
    input_name: str
    what: str


@dataclass(frozen=True, eq=False)
class EncodedPrompts:
    """Text-encoder states for one generation.

    Attributes:
        prompt_embeds: ``[1, L, D]`` the global prompt, as the pipeline encodes it.
        negative_embeds: ``[1, L, D]`` the negative prompt, or None without classifier-free guidance.
        local: one ``[tokens_l, D]`` tensor per object (real tokens only), in object order.
    """

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None
    local: tuple[torch.Tensor, ...]


def token_count(model: VideoModel, text: str) -> int:
    """Tokens the model's tokenizer makes of ``text``, special tokens included."""
    tokenizer = model.pipeline.tokenizer
    return len(tokenizer(model.family.clean_prompt(text), add_special_tokens=True).input_ids)


def check_lengths(model: VideoModel, prompts: list[PromptText]) -> None:
    """Raise TTMInputError for the first prompt longer than the text encoder reads."""
    limit = model.text_tokens
    for prompt in prompts:
        count = token_count(model, prompt.text)
        if count > limit:
            raise TTMInputError(prompt.input_name, f"{prompt.what} is {count} tokens long; {model.variant.label}'s "
                                f"{model.variant.text_encoder} text encoder reads at most {limit}",
                                f"shorten {prompt.what} (the pipeline would silently cut off the rest)")


def encode_prompts(model: VideoModel, global_prompt: str, negative_prompt: str | None,
                   local_prompts: list[str], device: torch.device) -> EncodedPrompts:
    """Encode the prompts of one generation (see the module docstring).

    Args:
        global_prompt: the global prompt c.
        negative_prompt: the negative prompt, or None without classifier-free guidance.
        local_prompts: one local prompt per object, in object order.
        device: where the text encoder runs (its outputs stay there).
    """
    with torch.no_grad():
        encode = model.family.encode_prompt
        prompt_embeds = encode(model.pipeline, global_prompt, device, model.text_tokens)
        negative = encode(model.pipeline, negative_prompt, device, model.text_tokens) if negative_prompt is not None \
            else None
        local = []
        for text in local_prompts:
            count = token_count(model, text)
            local.append(encode(model.pipeline, text, device, model.text_tokens)[0, :count].contiguous())
    logger.debug("encoded prompts: global %s, %d local (%s tokens)", tuple(prompt_embeds.shape), len(local),
                 ", ".join(str(t.shape[0]) for t in local))
    return EncodedPrompts(prompt_embeds, negative, tuple(local))
