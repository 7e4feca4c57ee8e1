"""TTM_PromptDecompose: caption -> global, motion and per-object prompts."""

from __future__ import annotations

from comfy_api.latest import io

from ..ttm_core.errors import TTMInputError
from ..ttm_core.prompts import manual_prompts, parse_llm_answer
from ._common import CATEGORY, Prompts, check_combo

BACKENDS = ("manual", "llm_answer")


def _decompose(backend: str, global_prompt: str, motion_prompt: str, objects: str, llm_answer: str):
    if backend == "manual":
        return manual_prompts(global_prompt, motion_prompt, objects)
    return parse_llm_answer(llm_answer, global_prompt)


class PromptDecompose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_PromptDecompose",
            display_name="Prompt Decompose (Through-The-Mask)",
            category=CATEGORY,
            description="Split a caption into the global prompt, the motion prompt and one local prompt per "
                        "movable object (Through-The-Mask, step 0).",
            inputs=[
                io.Combo.Input("backend", options=list(BACKENDS), default="manual",
                               tooltip="manual: you write the motion prompt and the object lines. llm_answer: "
                                       "paste an LLM's answer (JSON, or the paper's 'Motion-specific prompt:' / "
                                       "'Answer: [[name: prompt] ...]' format) and it is parsed strictly."),
                io.String.Input("global_prompt", multiline=True,
                                default="Two ancient coins slide across a dark table.",
                                tooltip="The caption of the whole video (the global prompt c)."),
                io.String.Input("motion_prompt", multiline=True,
                                default="Two coins slide across the table.",
                                tooltip="manual backend: one sentence about the overall motion, no colours, sizes "
                                        "or background (c_motion). Empty = the global prompt."),
                io.String.Input("objects", multiline=True,
                                default="left coin: a small silver coin sliding to the right\n"
                                        "big coin: a large silver coin gliding down and left",
                                tooltip="manual backend: one movable object per line, 'name: local prompt'. "
                                        "Order matters: line 1 is object 1 (the first mask). Names must be unique; "
                                        "lines starting with # are ignored."),
                io.String.Input("llm_answer", multiline=True, default="",
                                tooltip="llm_answer backend: the LLM's answer to parse. Ignored by manual."),
            ],
            outputs=[
                Prompts.Output("prompts", tooltip="The decomposed prompts (TTM_PROMPTS)."),
                io.String.Output("global_text", tooltip="The global prompt, for any text encoder."),
                io.String.Output("motion_text", tooltip="The motion prompt, for any text encoder."),
            ],
        )

    @classmethod
    def validate_inputs(cls, backend=None, global_prompt=None, motion_prompt=None, objects=None,
                        llm_answer=None) -> bool | str:
        combo = check_combo("backend", backend, BACKENDS)
        if combo is not True:
            return combo
        # With every text a widget value, parse now: errors come back before anything runs.
        values = (global_prompt, motion_prompt, objects, llm_answer)
        if backend is not None and all(isinstance(v, str) for v in values):
            try:
                _decompose(backend, *values)
            except TTMInputError as err:
                return str(err)
        return True

    @classmethod
    def execute(cls, backend: str, global_prompt: str, motion_prompt: str, objects: str,
                llm_answer: str) -> io.NodeOutput:
        prompts = _decompose(backend, global_prompt, motion_prompt, objects, llm_answer)
        return io.NodeOutput(prompts, prompts.global_prompt, prompts.motion_prompt)
