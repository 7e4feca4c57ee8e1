"""Scoped installation of the masked processors into loaded diffusers models.

    plan = MaskedAttentionPlan(grid, local_prompts, MaskedAttention(num_blocks=10))
    with masked_attention(pipe, plan) as state:      # pipe, a denoiser, or a list of denoisers
        video = pipe(...)                            # masked in the first K blocks
    # every processor is the original object again, also after an error or Ctrl-C

The context manager saves ``dict(model.attn_processors)`` of every denoiser (both experts of Wan
2.2 A14B), installs masked processors on the first K sites, adds the forward pre-hooks
CogVideoX needs, and restores processors and removes hooks in ``finally``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from ...errors import TTMInputError
from ...types import PretrainedModel
from ..families import Family, family_of, models_of
from .layers import MaskedLayers
from .state import LocalContext, MaskedAttentionPlan, MaskedAttentionState

logger = logging.getLogger(__name__)


def resolve_num_blocks(model: PretrainedModel, plan: MaskedAttentionPlan, family: Family | None = None) -> int:
    """K for this model: the plan's, or the family default; checked against the model's depth."""
    family = family or family_of(model)
    available = len(family.sites(model))
    k = plan.masking.num_blocks if plan.masking.num_blocks is not None else family.default_num_blocks(model)
    if k > available:
        raise TTMInputError("masked_blocks", f"K = {k} but {type(model).__name__} has {available} attention blocks",
                            f"use K between 0 and {available}")
    return k


def _check_plan(model: PretrainedModel, family: Family, plan: MaskedAttentionPlan) -> None:
    expected = family.geometry(model)
    got = plan.grid.geometry
    if (got.patch, got.spatial_ratio, got.temporal_ratio, got.multi_level) != \
            (expected.patch, expected.spatial_ratio, expected.temporal_ratio, expected.multi_level):
        raise TTMInputError("trajectory", f"the token grid was built for {got.name} but the model is {expected.name}",
                            "build the grid with families.geometry_for(model)")
    if plan.has_local_prompts:
        width = family.local_prompt_width(model)
        if width is None:
            raise TTMInputError("local_prompts", f"{type(model).__name__} takes no prompt",
                                "pass no local prompts (masked self-attention only)")
        if plan.local_prompts[0].shape[1] != width:
            raise TTMInputError("local_prompts", f"local prompts are {plan.local_prompts[0].shape[1]} wide but "
                                f"this model reads {width}-wide text states",
                                "encode the local prompts with the model's own text encoder")


@contextmanager
def _installed(name: str, model: PretrainedModel, state: MaskedAttentionState,
               layers: MaskedLayers | None) -> Iterator[None]:
    plan = state.plan
    family = family_of(model)
    _check_plan(model, family, plan)
    k = resolve_num_blocks(model, plan, family)
    new_layers = plan.masking.mode == "new_layers"
    if new_layers:
        if layers is None:
            raise TTMInputError("layers", f"new-layers mode needs MaskedLayers for {name}",
                                "build them with families.masked_layers(model, K) or load a trained checkpoint")
        if layers.family != family.name or layers.num_blocks != k:
            raise TTMInputError("layers", f"the masked layers are for {layers.family} with K = {layers.num_blocks}, "
                                f"the model is {family.name} with K = {k}", "use layers built for this model and K")
    saved = dict(model.attn_processors)
    modules = dict(model.named_modules())
    local = None
    if plan.has_local_prompts:
        local = LocalContext(plan.local_tokens(), family.local_context_projector(model))
    replaced = dict(saved)
    hooks = []
    all_sites = family.sites(model)
    for site in all_sites[:k]:
        block_layers = layers.blocks[site.index] if layers is not None and new_layers else None
        processors, site_hooks = family.site_processors(name, site, modules, saved, state, block_layers, local)
        replaced.update(processors)
        hooks.extend(site_hooks)
    logger.info("masked attention (%s) on the first %d of %d blocks of %s", plan.masking.mode, k, len(all_sites),
                name)
    try:
        model.set_attn_processor(dict(replaced))
        yield
    finally:
        try:
            model.set_attn_processor(dict(saved))
        finally:
            for hook in hooks:
                hook.remove()


@contextmanager
def masked_attention(target: object, plan: MaskedAttentionPlan,
                     layers: MaskedLayers | Sequence[MaskedLayers] | None = None) -> Iterator[MaskedAttentionState]:
    """Install masked attention for the duration of a ``with`` block.

    Args:
        target: a diffusers pipeline (its ``transformer``, ``transformer_2`` and/or ``unet``), one
            denoiser, or a list of denoisers (e.g. both Wan 2.2 A14B experts).
        plan: grid, local prompts, K, strengths and mode.
        layers: new-layers mode only: one ``MaskedLayers`` per denoiser, in ``models_of(target)``
            order (a single one for a single denoiser).
    Yields:
        the shared ``MaskedAttentionState`` (``enabled``, ``cross_rows``, ``calls``).
    Restores the original processor objects of every denoiser on exit, on error and on
    KeyboardInterrupt.
    """
    models = models_of(target)
    if layers is None or isinstance(layers, MaskedLayers):
        per_model: list[MaskedLayers | None] = [layers] * len(models) if len(models) == 1 or layers is None else []
        if not per_model:
            raise TTMInputError("layers", f"{len(models)} denoisers but one set of masked layers",
                                "pass one MaskedLayers per denoiser (each expert has its own)")
    else:
        per_model = list(layers)
        if len(per_model) != len(models):
            raise TTMInputError("layers", f"{len(per_model)} sets of masked layers for {len(models)} denoisers",
                                "pass one MaskedLayers per denoiser, in pipeline order")
    state = MaskedAttentionState(plan)
    with ExitStack() as stack:
        for (name, model), model_layers in zip(models, per_model):
            stack.enter_context(_installed(name, model, state, model_layers))
        yield state
