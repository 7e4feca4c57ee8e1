"""Prompt decomposition: the manual format and a strict parser for LLM answers.

The paper (Sec. 3.1, supplementary) has an LLM split a caption c into a motion prompt
c_motion and one local prompt c_local(l) per movable object. Its answer formats are::

    Motion-specific prompt: "A dog runs to the left while a cat jumps."
    Answer: [[Object 1: a brown dog running to the left] [Object 2: a white cat jumping]]

Our own LLM templates ask for JSON; both, and a plain line format, parse here::

    {"motion_prompt": "...", "objects": [{"name": "dog", "prompt": "..."}]}

    Motion: ...
    Objects:
    - dog: ...

Parsing is strict: an answer that is neither gives an error that quotes it, and an
individual bad line is named by its number.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Iterator

from ..errors import TTMInputError
from ..types import ObjectPrompt, Prompts

_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"
_MAX_QUOTE = 300


def _strip_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def _quote(answer: str) -> str:
    flat = " ".join(answer.split())
    return repr(flat if len(flat) <= _MAX_QUOTE else flat[:_MAX_QUOTE] + " ...")


def parse_object_lines(text: str, input_name: str = "objects") -> tuple[ObjectPrompt, ...]:
    """Parse one object per line, ``name: local prompt``.

    Blank lines and lines starting with ``#`` are skipped; a leading list bullet
    (``-``, ``*``, ``1.``) is allowed. Errors name the offending line by number and content.
    """
    objects: list[ObjectPrompt] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = _BULLET.sub("", line)
        name, sep, prompt = line.partition(":")
        if not sep:
            raise TTMInputError(input_name, f"line {number} ({raw.strip()!r}) has no colon",
                                "write each object as 'name: local prompt'")
        name, prompt = _strip_quotes(name), _strip_quotes(prompt)
        if not name or not prompt:
            missing = "name" if not name else "local prompt"
            raise TTMInputError(input_name, f"line {number} ({raw.strip()!r}) has an empty {missing}",
                                "write each object as 'name: local prompt'")
        try:
            objects.append(ObjectPrompt(name, prompt))
        except TTMInputError as err:
            raise TTMInputError(input_name, f"line {number} ({raw.strip()!r}): {err.problem}", err.fix) from None
    return tuple(objects)


def manual_prompts(global_prompt: str, motion_prompt: str, objects_text: str) -> Prompts:
    """The manual backend: the artist writes every part of the decomposition."""
    if not global_prompt.strip():
        raise TTMInputError("global_prompt", "the global prompt is empty",
                            "describe the whole video, e.g. 'a cat and a dog play on a lawn'")
    objects = parse_object_lines(objects_text)
    try:
        return Prompts(global_prompt, motion_prompt or global_prompt, objects)
    except TTMInputError as err:
        raise TTMInputError("objects", err.problem, err.fix) from None


# --------------------------------------------------------------------------- LLM answers

def _json_candidates(answer: str) -> Iterable[str]:
    """JSON objects in the answer: fenced blocks first, then the outermost {...} span."""
    for match in re.finditer(r"```(?:json)?\s*(.*?)```", answer, flags=re.S | re.I):
        yield match.group(1).strip()
    start, end = answer.find("{"), answer.rfind("}")
    if start != -1 and end > start:
        yield answer[start:end + 1]


_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_DECODER = json.JSONDecoder()
_KEYS_MOTION = ("motion_prompt", "motion", "motion_specific_prompt")
_KEYS_OBJECTS = ("objects", "local_prompts", "answer")


def _load_candidate(text: str) -> object:
    """JSON; failing that the same with trailing commas dropped, or a Python literal (single
    quotes) - both unambiguous repairs of what LLMs often write. None when it is neither."""
    for attempt in (text, _TRAILING_COMMA.sub(r"\1", text)):
        try:
            return json.loads(attempt)
        except json.JSONDecodeError:
            continue
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def json_values(answer: str) -> Iterator[object]:
    """The JSON values an LLM answer holds, for a caller to pick from: fenced blocks first, then the
    outermost ``{...}`` span (each repaired when unambiguous, None when it is not JSON), then every
    object that parses from a ``{`` anywhere in the prose. The same value may come more than once."""
    for candidate in _json_candidates(answer):
        yield _load_candidate(candidate)
    for match in re.finditer(r"\{", answer):  # JSON objects anywhere in the prose
        try:
            yield _DECODER.raw_decode(answer, match.start())[0]
        except json.JSONDecodeError:
            continue


def quote_answer(answer: str) -> str:
    """The answer quoted for an error message (whitespace folded, cut after 300 characters)."""
    return _quote(answer)


def _decompositions(answer: str) -> list[dict]:
    """Every distinct JSON object in the answer that has a motion prompt or an object list."""
    found: dict[str, dict] = {}
    for value in json_values(answer):
        if isinstance(value, dict) and any(k in value for k in _KEYS_MOTION + _KEYS_OBJECTS):
            found.setdefault(json.dumps(value, sort_keys=True, default=str), value)
    return list(found.values())


def _objects_from_json(value: object, answer: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for name, prompt in value.items():
            if not isinstance(prompt, str):
                raise TTMInputError("llm_answer", f"object {name!r} has a non-text prompt in {_quote(answer)}",
                                    "each object needs a text prompt")
            pairs.append((str(name), prompt))
        return pairs
    if not isinstance(value, list):
        raise TTMInputError("llm_answer", f"'objects' is not a list in {_quote(answer)}",
                            "answer with \"objects\": [{\"name\": ..., \"prompt\": ...}]")
    for i, item in enumerate(value, start=1):
        if isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, str) for v in item):
            pairs.append((item[0], item[1]))  # ["name", "prompt"] pairs
            continue
        if not isinstance(item, dict):
            raise TTMInputError("llm_answer", f"object {i} is not an object with name and prompt in {_quote(answer)}",
                                "answer with \"objects\": [{\"name\": ..., \"prompt\": ...}]")
        name = item.get("name") or item.get("object") or item.get("label")
        prompt = item.get("prompt") or item.get("local_prompt") or item.get("description")
        if not isinstance(name, str) or not isinstance(prompt, str):
            raise TTMInputError("llm_answer", f"object {i} lacks a text 'name' or 'prompt' in {_quote(answer)}",
                                "give every object a name and a prompt")
        pairs.append((name, prompt))
    return pairs


def _parse_json_answer(answer: str) -> tuple[str | None, list[tuple[str, str]]] | None:
    decompositions = _decompositions(answer)
    if len(decompositions) > 1:
        raise TTMInputError("llm_answer", f"the answer holds {len(decompositions)} different decompositions in "
                            f"{_quote(answer)}", "keep exactly one JSON answer")
    if not decompositions:
        start = answer.find("{")
        if start != -1 and re.search(r"[\"']motion", answer[start:]):
            try:
                json.loads(answer[start:])
            except json.JSONDecodeError as err:
                raise TTMInputError("llm_answer", f"the JSON answer is cut off or malformed ({err.msg} at line "
                                    f"{err.lineno} column {err.colno}) in {_quote(answer)}",
                                    "complete the JSON (for an LLM: raise max_new_tokens)") from None
        return None
    data = decompositions[0]
    motion = next((data[k] for k in _KEYS_MOTION if k in data), None)
    objects = next((data[k] for k in _KEYS_OBJECTS if k in data), None)
    if motion is not None and not isinstance(motion, str):
        raise TTMInputError("llm_answer", f"the motion prompt is not text in {_quote(answer)}",
                            "answer with \"motion_prompt\": \"...\"")
    return motion, _objects_from_json(objects if objects is not None else [], answer)


_MOTION_LINE = re.compile(r"^\s*\**\s*motion(?:[- ]specific)?(?: prompt)?\s*\**\s*:\s*\**\s*(.*)$", re.I)
_ANSWER_LINE = re.compile(r"^\s*\**\s*(?:answer|objects|local prompts)\s*\**\s*:\s*\**\s*(.*)$", re.I)
_BRACKETED = re.compile(r"\[\s*([^\[\]]*?)\s*\]")


def _parse_text_answer(answer: str) -> tuple[str | None, list[tuple[str, str]]] | None:
    lines = answer.splitlines()
    motion: str | None = None
    pairs: list[tuple[str, str]] = []
    found_objects = False
    for index, line in enumerate(lines):
        m = _MOTION_LINE.match(line)
        if m and motion is None:
            motion = _strip_quotes(m.group(1))
            continue
        a = _ANSWER_LINE.match(line)
        if a and not found_objects:
            found_objects = True
            rest = a.group(1).strip()
            following = index + 1
            while rest.count("[") > rest.count("]") and following < len(lines) \
                    and not _MOTION_LINE.match(lines[following]):
                rest += " " + lines[following].strip()  # a bracketed list continued on the next lines
                following += 1
            if rest:
                if rest.count("[") != rest.count("]"):
                    raise TTMInputError("llm_answer", f"unbalanced brackets in the answer line {rest!r}",
                                        "write the objects as [[name: prompt] [name: prompt]]")
                items = _BRACKETED.findall(rest) if "[" in rest else [rest]
                for item in items:
                    if not item.strip():
                        continue
                    name, sep, prompt = item.partition(":")
                    if not sep:
                        raise TTMInputError("llm_answer", f"the item {item!r} has no 'name: prompt' colon",
                                            "write the objects as [[name: prompt] [name: prompt]]")
                    pairs.append((name, prompt))
            else:
                block = []
                for follow in lines[index + 1:]:
                    if _MOTION_LINE.match(follow):
                        break
                    block.append(follow)
                pairs.extend((o.name, o.local_prompt) for o in parse_object_lines("\n".join(block), "llm_answer"))
    if motion is None and not found_objects:
        return None
    return motion, pairs


def parse_llm_answer(answer: str, global_prompt: str) -> Prompts:
    """Parse an LLM's decomposition of ``global_prompt`` into Prompts.

    Accepts the JSON format of our templates (optionally fenced, with prose around it), the
    paper's ``Motion-specific prompt:`` / ``Answer: [[...]]`` format and a line format.
    ``Object N`` labels (the paper's) become the names ``object N``. Raises TTMInputError
    quoting the answer when it holds no decomposition, or naming the bad part.
    """
    if not answer.strip():
        raise TTMInputError("llm_answer", "the answer is empty", "paste or generate the LLM's answer")
    parsed = _parse_json_answer(answer) or _parse_text_answer(answer)
    if parsed is None:
        raise TTMInputError("llm_answer", f"no motion prompt or object list found in {_quote(answer)}",
                            "answer in JSON {\"motion_prompt\": ..., \"objects\": [...]} or with "
                            "'Motion-specific prompt:' and 'Answer: [[name: prompt] ...]' lines")
    motion, pairs = parsed
    if not motion or not motion.strip():
        raise TTMInputError("llm_answer", f"the motion prompt is missing in {_quote(answer)}",
                            "include one sentence describing the overall motion")
    objects = []
    for name, prompt in pairs:
        name = _strip_quotes(name)
        if re.fullmatch(r"object\s*\d+", name, flags=re.I):
            name = name.lower()
        try:
            objects.append(ObjectPrompt(name, _strip_quotes(prompt)))
        except TTMInputError as err:
            raise TTMInputError("llm_answer", f"{err.problem} in {_quote(answer)}", err.fix) from None
    try:
        return Prompts(global_prompt or motion, motion, tuple(objects))
    except TTMInputError as err:
        raise TTMInputError("llm_answer", f"{err.problem} in {_quote(answer)}", err.fix) from None
