"""TTM_LLMLoader and TTM_LLMEndpoint: the LLMs that Prompt Decompose's llm backend asks."""

from __future__ import annotations

from comfy_api.latest import io

from ..ttm_core.errors import TTMInputError
from ..ttm_core.prompts.llm import HttpLLM, load_local_llm
from ._common import CATEGORY, check_combo
from ._models import DEVICES, LLM_FOLDER, PRECISIONS, check_entry, compute_dtype, devices, llm_entries, manage, resolve

Llm = io.Custom("TTM_LLM")
"""nodes._models.Managed around a ttm_core.llm.LocalLLM, or a ttm_core.llm.HttpLLM."""


class LLMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_LLMLoader",
            display_name="LLM Loader (Through-The-Mask)",
            category=CATEGORY,
            description="Load a local chat LLM (transformers folder in models/LLM) for Prompt Decompose. Nothing is "
                        "downloaded.",
            inputs=[
                io.Combo.Input("model", options=llm_entries(),
                               tooltip="A transformers chat model folder in models/LLM (config.json, safetensors "
                                       "weights, tokenizer with a chat template), e.g. Llama-3.1-8B-Instruct."),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="auto: ComfyUI's device (GPU when there is one), managed with its other "
                                       "models (unloaded when a video model needs the memory); cpu: the CPU."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="Weight precision. auto: bf16 (or fp16) on GPUs, fp32 on CPUs. An 8B model "
                                       "needs about 16 GB in bf16."),
                io.Boolean.Input("constrained", default=True,
                                 tooltip="Constrain the answer to the expected JSON (keys and punctuation forced, "
                                         "one to eight objects, names without colons), so even small models always "
                                         "answer in a usable form. Off: free generation, parsed strictly, retried."),
            ],
            outputs=[Llm.Output("llm", tooltip="The LLM (TTM_LLM), for Prompt Decompose's llm backend.")],
        )

    @classmethod
    def validate_inputs(cls, model=None, device=None, precision=None) -> bool | str:
        for check in (check_combo("device", device, DEVICES), check_combo("precision", precision, PRECISIONS),
                      check_entry("model", model, llm_entries(), LLM_FOLDER)):
            if check is not True:
                return check
        return True

    @classmethod
    def execute(cls, model: str, device: str, precision: str, constrained: bool) -> io.NodeOutput:
        load_device, offload_device = devices(device)
        dtype = compute_dtype(precision, load_device)
        handle = load_local_llm(resolve(LLM_FOLDER, model), device=offload_device, dtype=dtype,
                                constrained=constrained)
        return io.NodeOutput(manage(handle, [handle.model], load_device, offload_device, dtype))


class LLMEndpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TTM_LLMEndpoint",
            display_name="LLM Endpoint (Through-The-Mask)",
            category=CATEGORY,
            description="An OpenAI-compatible chat-completions server (Ollama, LM Studio, vLLM, llama.cpp server) "
                        "for Prompt Decompose. The API key is read from an environment variable at run time and "
                        "never stored in the workflow.",
            inputs=[
                io.String.Input("base_url", default="http://127.0.0.1:11434/v1",
                                tooltip="The API root, usually ending in /v1: Ollama http://127.0.0.1:11434/v1, "
                                        "LM Studio http://127.0.0.1:1234/v1, vLLM http://127.0.0.1:8000/v1, "
                                        "llama.cpp http://127.0.0.1:8080/v1."),
                io.String.Input("model", default="llama3.1:8b",
                                tooltip="The model name the server knows (Ollama: as in `ollama list`)."),
                io.String.Input("api_key_env", default="",
                                tooltip="NAME of the environment variable that holds the API key (e.g. "
                                        "OPENAI_API_KEY), set before ComfyUI starts. Empty: no key (local servers). "
                                        "Never paste the key itself here."),
                io.Float.Input("timeout", default=120.0, min=1.0, max=3600.0, step=1.0,
                               tooltip="Seconds to wait for one answer."),
                io.Int.Input("retries", default=2, min=0, max=10,
                             tooltip="Extra tries after a transient failure (cannot connect, timeout, HTTP 5xx/429), "
                                     "with growing pauses."),
                io.Boolean.Input("json_schema", default=False,
                                 tooltip="Ask the server for structured output (response_format json_schema). vLLM, "
                                         "LM Studio, llama.cpp and Ollama support it; turn it off if the server "
                                         "rejects it."),
            ],
            outputs=[Llm.Output("llm", tooltip="The endpoint (TTM_LLM), for Prompt Decompose's llm backend.")],
        )

    @classmethod
    def validate_inputs(cls, base_url=None, model=None, api_key_env=None, timeout=None, retries=None) -> bool | str:
        if all(isinstance(v, str) for v in (base_url, model, api_key_env)):
            try:
                HttpLLM(base_url, model, api_key_env, float(timeout or 120.0), int(retries or 0))
            except TTMInputError as err:
                return str(err)
        return True

    @classmethod
    def execute(cls, base_url: str, model: str, api_key_env: str, timeout: float, retries: int,
                json_schema: bool) -> io.NodeOutput:
        return io.NodeOutput(HttpLLM(base_url, model, api_key_env, timeout, retries, json_schema))
