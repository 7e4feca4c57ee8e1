"""TTM_PromptDecompose: caption -> global, motion and per-object prompts."""

from __future__ import annotations

import json

from comfy_api.latest import io

from ..ttm_core.errors import TTMInputError
from ..ttm_core.prompts.llm import HttpLLM, decompose
from ..ttm_core.prompts.parse import manual_prompts, parse_llm_answer
from ._common import CATEGORY, Prompts, check_combo, progress_callback
from ._models import Managed
from .llm_nodes import Llm

BACKENDS = ("manual", "llm_answer", "llm")
_UNLINKED = object()  # validate_inputs: an optional input that is absent (a linked one arrives as None)


def _answer_socket_error(backend: str) -> TTMInputError:
    return TTMInputError("llm_answer_text", f"an LLM answer is connected but the backend is {backend!r}",
                         "set backend to llm_answer to parse it, or disconnect llm_answer_text")


def _decompose(backend: str, global_prompt: str, motion_prompt: str, objects: str, llm_answer: str):
    if backend == "manual":
        return manual_prompts(global_prompt, motion_prompt, objects)
    return parse_llm_answer(llm_answer, global_prompt)


def _ask_llm(llm: Managed | HttpLLM | None, caption: str, seed: int, temperature: float, max_new_tokens: int,
             attempts: int, node_id: str | None):
    if llm is None:
        raise TTMInputError("llm", "the llm backend needs an LLM", "connect an LLM Loader or an LLM Endpoint node")
    if isinstance(llm, Managed):
        device = llm.load()
        return decompose(llm.handle, caption, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens,
                         attempts=attempts, device=device, progress=progress_callback(node_id))
    return decompose(llm, caption, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens,
                     attempts=attempts, progress=progress_callback(node_id))


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
                                       "'Answer: [[name: prompt] ...]' format) and it is parsed strictly. llm: the "
                                       "connected LLM (LLM Loader or LLM Endpoint) decomposes the global prompt."),
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
                Llm.Input("llm", optional=True, tooltip="llm backend: from LLM Loader or LLM Endpoint."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, optional=True, control_after_generate=False,
                             tooltip="llm backend: the same seed, caption and settings give the same answer."),
                io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="llm backend: 0 = always the most likely answer; higher = more varied "
                                       "(sampled with the seed)."),
                io.Int.Input("max_new_tokens", default=512, min=128, max=4096, optional=True,
                             tooltip="llm backend: the longest answer, in tokens."),
                io.Int.Input("attempts", default=3, min=1, max=10, optional=True,
                             tooltip="llm backend: a malformed answer is shown to the LLM with what was wrong and "
                                     "asked again, up to this many answers in all."),
                io.String.Input("llm_answer_text", force_input=True, optional=True,
                                tooltip="llm_answer backend: an LLM's answer from another node (e.g. core "
                                        "TextGenerate's generated_text), parsed strictly like the llm_answer "
                                        "widget, which it replaces while connected."),
            ],
            outputs=[
                Prompts.Output("prompts", tooltip="The decomposed prompts (TTM_PROMPTS)."),
                io.String.Output("global_text", tooltip="The global prompt, for any text encoder."),
                io.String.Output("motion_text", tooltip="The motion prompt, for any text encoder."),
                io.String.Output("answer", tooltip="llm backend: the LLM's answer (paste it into llm_answer to pin "
                                                   "or edit it); other backends: the prompts as JSON."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, backend=None, global_prompt=None, motion_prompt=None, objects=None,
                        llm_answer=None, llm_answer_text=_UNLINKED) -> bool | str:
        combo = check_combo("backend", backend, BACKENDS)
        if combo is not True:
            return combo
        if llm_answer_text is not _UNLINKED:  # connected (or given as text in an API prompt)
            if backend is not None and backend != "llm_answer":
                return str(_answer_socket_error(backend))
            llm_answer = llm_answer_text  # None while linked: parsed when it runs
        # With every text a widget value, parse now: errors come back before anything runs.
        values = (global_prompt, motion_prompt, objects, llm_answer)
        if backend == "llm":
            if isinstance(global_prompt, str) and not global_prompt.strip():
                return ("global_prompt: the caption is empty. Fix: describe the whole video, e.g. "
                        "'a cat and a dog play on a lawn'")
            return True
        if backend is not None and all(isinstance(v, str) for v in values):
            try:
                _decompose(backend, *values)
            except TTMInputError as err:
                if llm_answer_text is not _UNLINKED and err.input_name == "llm_answer":  # the text came by the socket
                    err = TTMInputError("llm_answer_text", err.problem, err.fix)
                return str(err)
        return True

    @classmethod
    def execute(cls, backend: str, global_prompt: str, motion_prompt: str, objects: str, llm_answer: str,
                llm=None, seed: int = 0, temperature: float = 0.0, max_new_tokens: int = 512,
                attempts: int = 3, llm_answer_text: str | None = None) -> io.NodeOutput:
        if llm_answer_text is not None:
            if backend != "llm_answer":
                raise _answer_socket_error(backend)
            llm_answer = llm_answer_text
        if backend == "llm":
            result = _ask_llm(llm, global_prompt, seed, temperature, max_new_tokens, attempts, cls.hidden.unique_id)
            prompts, answer = result.prompts, result.answer
        else:
            try:
                prompts = _decompose(backend, global_prompt, motion_prompt, objects, llm_answer)
            except TTMInputError as err:
                if llm_answer_text is None or err.input_name != "llm_answer":
                    raise
                # Name the socket the answer came through, not the widget it replaced.
                raise TTMInputError("llm_answer_text", err.problem, err.fix) from None
            answer = json.dumps({"motion_prompt": prompts.motion_prompt,
                                 "objects": [{"name": o.name, "prompt": o.local_prompt} for o in prompts.objects]},
                                ensure_ascii=False)
        return io.NodeOutput(prompts, prompts.global_prompt, prompts.motion_prompt, answer)
