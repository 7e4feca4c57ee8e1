"""Prompt decomposition by an LLM: our templates, a local transformers backend, an HTTP backend.

The paper (Sec. 3.1 and supplementary) has a frozen Llama 3.1-8B split the caption c into a
motion prompt c_motion (the overall motion in one sentence, no colour, size or background
detail) and one local prompt c_local(l) per movable object (static scenery dropped; objects of
the same kind told apart as left / middle / right), with few-shot examples. Our templates keep
that structure but are our own text and ask for JSON, which ``prompts.parse_llm_answer`` parses
strictly. A malformed answer is shown to the model with the parser's complaint and retried, up
to ``attempts`` times; after that the error quotes the last answer (``ask``, shared with other
answers such as Stage 1's motion plans).

Backends:
    * ``LocalLLM``: a transformers causal LM from ``models/LLM/<folder>``, prompted through the
      tokenizer's chat template. By default its output is *constrained* to the answer's JSON
      shape (a small grammar over the vocabulary: the JSON punctuation and keys are forced, the
      model writes only the texts, names cannot contain a colon, at most eight objects), so even
      small models always give a parseable answer; sampling uses a seeded generator. The grammar
      is pluggable: ``complete(..., answer_format=...)`` takes any AnswerFormat (a grammar built
      on ``prompts.grammar``'s engine, and the JSON schema HTTP servers are asked for); the
      default is the decomposition's.
    * ``HttpLLM``: any OpenAI-compatible ``/chat/completions`` endpoint (Ollama, LM Studio,
      vLLM, llama.cpp server). The API key is read at call time from the environment variable
      whose *name* the node holds, so it never enters a workflow. Timeouts, bounded retries of
      transient failures (connection refused, timeouts, HTTP 5xx / 429) with backoff, and errors
      that quote what the server said.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import TTMInputError
from ..types import MAX_NAME_LENGTH, MAX_OBJECTS, PretrainedModel, Prompts
from .grammar import Arr, Obj, SchemaGrammar, Str, TokenGrammar, Vocabulary
from .parse import parse_llm_answer

LOG = logging.getLogger(__name__)

Message = dict[str, str]
Progress = Callable[[int, int], None]

# --------------------------------------------------------------------------- templates

SYSTEM_PROMPT = f"""You prepare captions for a video generator that animates a still image object by object.
Split the caption into:
1. "motion_prompt": ONE sentence that describes only the overall motion in the video: who moves and how.
   Leave out colours, sizes, textures, materials and the background.
2. "objects": one entry per MOVABLE object that moves or acts in the video (people, animals, vehicles,
   things that are thrown, rolled or carried). Drop static scenery (ground, sky, walls, furniture that
   stays put, buildings, the background). At most {MAX_OBJECTS} objects; an empty list when nothing moves.
   - "name": a short noun phrase (one to three words) naming what is visible in the image, unique in the
     list. When several objects are of the same kind, tell them apart by position: "left dog",
     "middle dog", "right dog" (or "top ..." / "bottom ..."). No colons.
   - "prompt": a description of that object alone and of its own motion; appearance details belong here.
Answer with the JSON object only, no other text:
{{"motion_prompt": "...", "objects": [{{"name": "...", "prompt": "..."}}]}}"""

FEW_SHOT: tuple[tuple[str, dict[str, Any]], ...] = (
    ("A brown dog runs across a green lawn chasing a red ball while a woman watches from a wooden bench.",
     {"motion_prompt": "A dog runs across the lawn chasing a rolling ball.",
      "objects": [{"name": "dog", "prompt": "a brown dog running fast across the lawn"},
                  {"name": "ball", "prompt": "a red ball rolling and bouncing over the grass"}]}),
    ("Three ducks swim on a pond; the duck on the left dives, the one in the middle flaps its wings and "
     "the one on the right paddles forward.",
     {"motion_prompt": "Three ducks swim: one dives, one flaps its wings and one paddles forward.",
      "objects": [{"name": "left duck", "prompt": "a duck diving head first under the water"},
                  {"name": "middle duck", "prompt": "a duck flapping its wings on the water"},
                  {"name": "right duck", "prompt": "a duck paddling forward across the pond"}]}),
    ("Two cars race along a coastal highway at sunset, the red sports car overtaking the silver sedan.",
     {"motion_prompt": "Two cars race along a road, one overtaking the other.",
      "objects": [{"name": "red car", "prompt": "a red sports car accelerating to overtake"},
                  {"name": "silver car", "prompt": "a silver sedan driving steadily along the highway"}]}),
    ("A calm mountain lake at dawn, pine trees on the shore and snowy peaks in the distance.",
     {"motion_prompt": "The water of the lake ripples gently.", "objects": []}),
    ("A chef in a white hat flips a golden pancake high above a frying pan in a busy restaurant kitchen.",
     {"motion_prompt": "A chef tosses a pancake into the air and catches it.",
      "objects": [{"name": "chef", "prompt": "a chef in a white hat tossing a pan upward"},
                  {"name": "pancake", "prompt": "a golden pancake flipping through the air"}]}),
    ("A grey cat leaps from the sofa onto the windowsill while two goldfish circle in a glass bowl on the "
     "table, the left fish faster than the right one.",
     {"motion_prompt": "A cat leaps onto the windowsill while two fish swim in circles.",
      "objects": [{"name": "cat", "prompt": "a grey cat leaping up onto the windowsill"},
                  {"name": "left fish", "prompt": "a goldfish swimming quickly in circles"},
                  {"name": "right fish", "prompt": "a goldfish slowly circling the bowl"}]}),
)

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "motion_prompt": {"type": "string"},
        "objects": {"type": "array", "maxItems": MAX_OBJECTS, "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "prompt": {"type": "string"}},
            "required": ["name", "prompt"], "additionalProperties": False}},
    },
    "required": ["motion_prompt", "objects"],
    "additionalProperties": False,
}


def build_messages(caption: str) -> list[Message]:
    """The chat for one caption: system rules, six worked examples, then the caption."""
    messages: list[Message] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example, answer in FEW_SHOT:
        messages.append({"role": "user", "content": f"Caption: {example}"})
        messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
    messages.append({"role": "user", "content": f"Caption: {caption.strip()}"})
    return messages


def correction(problem: str) -> Message:
    """What the model is told after an unusable answer."""
    return {"role": "user", "content": f"That answer could not be used: {problem}. Answer again for the same "
                                       "caption with the JSON object only, in exactly the format shown."}


# --------------------------------------------------------------------------- constrained JSON

WRAP_UP_TOKENS = 64  # enough to close any string, object and list, even at one character per token
_STRING_LIMITS = {"motion": 300, "name": min(MAX_NAME_LENGTH, 40), "prompt": 300}
DECOMPOSITION_SCHEMA = Obj((
    ("motion_prompt", Str(_STRING_LIMITS["motion"])),
    ("objects", Arr(Obj((("name", Str(_STRING_LIMITS["name"], no_colon=True)),
                         ("prompt", Str(_STRING_LIMITS["prompt"])))), min_items=1, max_items=MAX_OBJECTS)),
))
"""``{"motion_prompt": s, "objects": [{"name": s, "prompt": s}, ...]}`` for the grammar engine."""


class JsonAnswerGrammar(SchemaGrammar):
    """Token-level grammar for ``{"motion_prompt": s, "objects": [{"name": s, "prompt": s}*]}``.

    ``allowed()`` gives the tokens that keep the text a prefix of a valid answer; ``advance()``
    consumes the chosen token. Punctuation and keys are forced one token at a time (the longest
    token that spells the next part); at a choice (another object, or the end) both spellings
    are offered and the model picks; strings take tokens without quotes, backslashes or control
    characters (names also without colons), may close once they hold a non-blank character and
    must close at their length limit. The list holds one to eight objects: the pipeline needs at
    least one object to segment, so a constrained answer always names one. ``wrap_up()`` (called
    when the token budget runs low) closes the current string and the list as soon as possible.
    It is DECOMPOSITION_SCHEMA run by the schema engine (``prompts.grammar``).
    """

    def __init__(self, vocabulary: Vocabulary) -> None:
        super().__init__(vocabulary, DECOMPOSITION_SCHEMA, WRAP_UP_TOKENS)


@dataclass(frozen=True, eq=False)
class AnswerFormat:
    """What an answer must look like, for both backends.

    Attributes:
        name: a short identifier (the structured-output schema's name for HTTP servers).
        json_schema: the JSON schema an HTTP server is asked for when ``json_schema`` is on.
        grammar: makes the token grammar that constrains a local model (given its Vocabulary).
    """

    name: str
    json_schema: dict[str, Any]
    grammar: Callable[[Vocabulary], TokenGrammar]


DECOMPOSITION = AnswerFormat("prompt_decomposition", ANSWER_SCHEMA, JsonAnswerGrammar)
"""The prompt decomposition's answer: the default of ``complete``."""


# --------------------------------------------------------------------------- local LLM

@dataclass(frozen=True, eq=False)
class LocalLLM:
    """A transformers chat model loaded from ``models/LLM/<folder>``.

    Attributes:
        name: the folder name.
        model: the causal LM (eval mode).
        tokenizer: its tokenizer, with a chat template.
        constrained: constrain answers to the JSON shape of the answer format asked for (by default
            the decomposition's, see JsonAnswerGrammar).
    """

    name: str
    model: PretrainedModel
    tokenizer: Any
    constrained: bool = True
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            raise TTMInputError("llm", "the LLM is not a torch module", "load it with the LLM Loader")
        if not getattr(self.tokenizer, "chat_template", None):
            raise TTMInputError("model", f"{self.name} has no chat template (tokenizer_config.json "
                                "'chat_template' or chat_template.jinja)",
                                "use an instruction-tuned (chat) model, e.g. Llama-3.1-8B-Instruct or "
                                "Qwen2.5-7B-Instruct")

    def eos_ids(self) -> tuple[int, ...]:
        ids: list[int] = []
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            ids.extend(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return tuple(dict.fromkeys(int(i) for i in ids))

    def vocabulary(self) -> Vocabulary:
        if "vocabulary" not in self._cache:
            size = int(self.model.get_output_embeddings().weight.shape[0])
            self._cache["vocabulary"] = Vocabulary.build(self.tokenizer, size, self.eos_ids())
        return self._cache["vocabulary"]

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text the chat template makes (system folded into the first user turn when
        the template has no system role)."""
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        except (TemplateError, ValueError) as err:  # e.g. Gemma's template: "System role not supported"
            if messages and messages[0]["role"] == "system":
                merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]},
                          *messages[2:]]
                LOG.info("%s: the chat template refused a system turn (%s); folding it into the first user turn",
                         self.name, err)
                return self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
            raise

    def complete(self, messages: Sequence[Message], *, seed: int = 0, temperature: float = 0.0,
                 max_new_tokens: int = 512, device: torch.device | str | None = None,
                 progress: Progress | None = None, answer_format: AnswerFormat | None = None) -> str:
        """Generate the assistant's answer; greedy at temperature 0, else sampled with ``seed``.

        With ``constrained`` the answer follows ``answer_format``'s grammar (default: DECOMPOSITION);
        when ``grammar.wrap_up_tokens`` of the budget are left the grammar closes the answer."""
        device = torch.device(device) if device is not None else next(self.model.parameters()).device
        prompt = self.render(messages)
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        grammar = (answer_format or DECOMPOSITION).grammar(self.vocabulary()) if self.constrained else None
        eos = set(self.eos_ids())
        generated: list[int] = []
        # transformers >= 5.x calls the KV cache `cache`; earlier releases `past_key_values`.
        cache_name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        past = None
        step_input = ids
        with torch.inference_mode():
            for step in range(max_new_tokens):
                if grammar is not None and grammar.done:
                    break  # the JSON is complete: no need to ask for an end token
                out = self.model(input_ids=step_input, use_cache=True, **{cache_name: past})
                past = getattr(out, cache_name)
                logits = out.logits[0, -1].float().cpu()
                if grammar is not None:
                    allowed = grammar.allowed()
                    logits = logits[: allowed.shape[0]].masked_fill(~allowed[: logits.shape[0]], float("-inf"))
                token = _pick(logits, temperature, generator)
                if grammar is None and token in eos:
                    break
                generated.append(token)
                if grammar is not None:
                    grammar.advance(token)
                    if max_new_tokens - step <= grammar.wrap_up_tokens:
                        grammar.wrap_up()
                if progress:
                    progress(step + 1, max_new_tokens)
                step_input = torch.tensor([[token]], device=device)
        return self.tokenizer.decode(generated, skip_special_tokens=True)


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def load_local_llm(folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   constrained: bool = True) -> LocalLLM:
    """Load ``folder`` (config.json, weights, tokenizer with a chat template) without downloading."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TTMInputError("model", f"{folder} is not a transformers model folder (no config.json)",
                            "download a chat model (e.g. meta-llama/Llama-3.1-8B-Instruct) into models/LLM/<name>/")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model: PretrainedModel = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                                      dtype=dtype)
    except (OSError, ValueError) as err:
        raise TTMInputError("model", f"{folder.name} could not be loaded ({err})",
                            "the folder needs config.json, the weights (safetensors) and the tokenizer files") from None
    return LocalLLM(folder.name, model.to(device).eval(), tokenizer, constrained)


# --------------------------------------------------------------------------- HTTP endpoint

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class HttpLLM:
    """An OpenAI-compatible chat-completions endpoint.

    Attributes:
        base_url: e.g. ``http://127.0.0.1:11434/v1`` (Ollama); ``/chat/completions`` is appended.
        model: the model name the server knows (``llama3.1:8b``).
        api_key_env: NAME of the environment variable holding the key ("" = no key).
        timeout: seconds to wait for one answer.
        retries: extra tries after a transient failure (connection, timeout, 5xx, 429).
        json_schema: ask the server for structured output (``response_format`` json_schema).
    """

    base_url: str
    model: str
    api_key_env: str = ""
    timeout: float = 120.0
    retries: int = 2
    json_schema: bool = False

    def __post_init__(self) -> None:
        url = self.base_url.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise TTMInputError("base_url", f"{self.base_url!r} is not an http(s) URL",
                                "use e.g. http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:1234/v1 (LM Studio)")
        object.__setattr__(self, "base_url", url)
        if not self.model.strip():
            raise TTMInputError("model", "the model name is empty", "give the name the server knows, e.g. llama3.1:8b")
        name = self.api_key_env.strip()
        if name and not _ENV_NAME.match(name):
            raise TTMInputError("api_key_env", "this takes the NAME of an environment variable, not the key itself",
                                "set the key in an environment variable (e.g. OPENAI_API_KEY) and put that name here")
        object.__setattr__(self, "api_key_env", name)
        if not (0 < self.timeout <= 3600):
            raise TTMInputError("timeout", f"{self.timeout} s", "use 1 to 3600 seconds")
        if not (0 <= self.retries <= 10):
            raise TTMInputError("retries", f"{self.retries} retries", "use 0 to 10")

    @property
    def url(self) -> str:
        return self.base_url if self.base_url.endswith("/chat/completions") else self.base_url + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "")
            if not key:
                raise TTMInputError("api_key_env", f"the environment variable {self.api_key_env} is not set",
                                    f"set {self.api_key_env} before starting ComfyUI, or clear api_key_env for "
                                    "servers without keys")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def request_body(self, messages: Sequence[Message], seed: int, temperature: float,
                     max_new_tokens: int, answer_format: AnswerFormat | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": float(temperature),
                                "seed": int(seed), "max_tokens": int(max_new_tokens), "stream": False}
        if self.json_schema:
            answer = answer_format or DECOMPOSITION
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": answer.name, "schema": answer.json_schema, "strict": True}}
        return body

    def complete(self, messages: Sequence[Message], *, seed: int = 0, temperature: float = 0.0,
                 max_new_tokens: int = 512, device: object = None, progress: Progress | None = None,
                 answer_format: AnswerFormat | None = None) -> str:
        """POST the chat and return the answer text (bounded retries for transient failures);
        with ``json_schema`` the server is asked for ``answer_format``'s schema (default: DECOMPOSITION)."""
        data = json.dumps(self.request_body(messages, seed, temperature, max_new_tokens, answer_format)).encode()
        headers = self._headers()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as err:
                body = err.read().decode("utf-8", errors="replace")
                if err.code in (429, 500, 502, 503, 504):
                    last = f"HTTP {err.code}: {_short(body)}"
                    LOG.warning("%s answered %s (try %d of %d)", self.url, last, attempt + 1, self.retries + 1)
                    continue
                raise _http_error(self, err.code, body) from None
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s"
                LOG.warning("%s: %s (try %d of %d)", self.url, last, attempt + 1, self.retries + 1)
                continue
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                    last = f"no answer within {self.timeout:g} s"
                else:
                    last = f"cannot connect ({reason})"
                LOG.warning("%s: %s (try %d of %d)", self.url, last, attempt + 1, self.retries + 1)
                continue
            if progress:
                progress(1, 1)
            return _answer_text(self, payload)
        raise TTMInputError("base_url", f"{self.url} failed {self.retries + 1} time(s); last: {last}",
                            "check that the server is running and reachable (e.g. `ollama serve`), the URL ends "
                            "in /v1, and raise timeout for slow models")


def _short(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + " ...")


def _http_error(llm: HttpLLM, code: int, body: str) -> TTMInputError:
    if code in (401, 403):
        return TTMInputError("api_key_env", f"{llm.url} refused the request (HTTP {code}): {_short(body)}",
                             "put the right API key in the environment variable named by api_key_env")
    if code == 404:
        return TTMInputError("base_url", f"{llm.url} answered HTTP 404: {_short(body)}",
                             f"check the URL (it should end in /v1) and that the server has the model {llm.model!r}")
    return TTMInputError("model", f"{llm.url} rejected the request (HTTP {code}): {_short(body)}",
                         "check the model name; turn json_schema off if the server does not support it")


def _answer_text(llm: HttpLLM, payload: str) -> str:
    try:
        data = json.loads(payload)
    except json.JSONDecodeError:
        raise TTMInputError("base_url", f"{llm.url} did not answer with JSON: {_short(payload)}",
                            "point base_url at an OpenAI-compatible API (it usually ends in /v1)") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TTMInputError("base_url", f"{llm.url} answered without choices[0].message.content: "
                            f"{_short(payload)}", "use an OpenAI-compatible chat-completions endpoint") from None
    if not isinstance(content, str):
        raise TTMInputError("base_url", f"{llm.url} answered with non-text content: {_short(payload)}",
                            "use an OpenAI-compatible chat-completions endpoint")
    return content


# --------------------------------------------------------------------------- decomposition

@dataclass(frozen=True)
class Decomposition:
    """An LLM's decomposition: the parsed prompts, the answer they came from, tries used."""

    prompts: Prompts
    answer: str
    attempts: int


_DECOMPOSE_FIX = ("use a larger instruction-tuned model, raise max_new_tokens, turn constrained decoding on (local) or "
                  "json_schema on (HTTP), or paste a corrected answer with the llm_answer backend")

T = TypeVar("T")


def ask(llm: LocalLLM | HttpLLM, messages: Sequence[Message], parse: Callable[[str], T], *,
        answer_format: AnswerFormat | None = None, correct: Callable[[str], Message] = correction,
        fix: str = _DECOMPOSE_FIX, seed: int = 0, temperature: float = 0.0, max_new_tokens: int = 512,
        attempts: int = 3, device: torch.device | str | None = None,
        progress: Progress | None = None) -> tuple[T, str, int]:
    """Ask until ``parse`` accepts an answer: up to ``attempts`` times, each unusable answer shown back
    to the model with ``correct(problem)`` (the parser's complaint).

    Attempt k (0-based) uses seed + k, so a sampled retry differs and a run is reproducible.
    Returns (parsed value, the answer it came from, attempts used); raises TTMInputError (input
    ``llm``, ``fix``) with the last problem, quoting the last answer, when none parses.
    """
    if not 1 <= attempts <= 10:
        raise TTMInputError("attempts", f"{attempts} attempts", "use 1 to 10")
    answer, problem = "", ""
    for attempt in range(attempts):
        answer = llm.complete(messages, seed=seed + attempt, temperature=temperature,
                              max_new_tokens=max_new_tokens, device=device, progress=progress,
                              answer_format=answer_format)
        try:
            value = parse(answer)
        except TTMInputError as err:
            problem = err.problem
            LOG.warning("LLM answer %d of %d unusable: %s", attempt + 1, attempts, problem)
            messages = [*messages, {"role": "assistant", "content": answer}, correct(problem)]
            continue
        return value, answer, attempt + 1
    quoted = "" if _short(answer)[1:-1] in problem else f"; the last answer was {_short(answer)}"
    raise TTMInputError("llm", f"no usable answer in {attempts} attempt(s): {problem}{quoted}", fix)


def decompose(llm: LocalLLM | HttpLLM, caption: str, *, seed: int = 0, temperature: float = 0.0,
              max_new_tokens: int = 512, attempts: int = 3, device: torch.device | str | None = None,
              progress: Progress | None = None) -> Decomposition:
    """Split ``caption`` into Prompts with the LLM; retry malformed answers up to ``attempts`` times.

    The same seed (and model, caption, settings) gives the same answer; retry k uses seed + k so
    a sampled retry differs. Raises TTMInputError quoting the last answer when none parses.
    """
    if not caption.strip():
        raise TTMInputError("global_prompt", "the caption is empty",
                            "describe the whole video, e.g. 'a cat and a dog play on a lawn'")
    prompts, answer, used = ask(llm, build_messages(caption), lambda text: parse_llm_answer(text, caption),
                                seed=seed, temperature=temperature, max_new_tokens=max_new_tokens,
                                attempts=attempts, device=device, progress=progress)
    return Decomposition(prompts, answer, used)
