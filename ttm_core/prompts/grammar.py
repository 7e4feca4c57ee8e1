"""Token-level constrained decoding: a small schema-driven grammar engine over a tokenizer's vocabulary.

A local model's answer is kept a prefix of a valid JSON answer one token at a time: ``allowed()``
gives the tokens that may come next (a bool mask over the vocabulary), ``advance(token)`` consumes
the one the model chose. Two layers:

* **Requests**, what the engine spells: ``Fixed`` (forced text: punctuation, keys), ``OneOf`` (one
  of a few prefix-free texts: ``true`` / ``false``, an enum value, another list item or the end),
  ``TextValue`` (a JSON string's content and its closing quote) and ``NumberValue`` (a bounded
  decimal with limited digits, ended by the text that follows it). ``SchemaGrammar`` runs a
  *program*, a generator that yields requests and receives each one's result (the option index,
  the text, the number), so later parts may depend on earlier ones.
* **Nodes**, a declarative schema compiled into programs: ``Obj`` (fixed keys in a fixed order),
  ``Str``, ``Num``, ``Bool``, ``Enum``, ``Const`` and ``Arr`` (bounded lists). A node that
  depends on what came before (a keyframe time bounded by the previous one) is a program written
  with these pieces.

Forced text is spelled with the longest token that is a prefix of what remains, so the model sees
the same tokens whatever it would have preferred. Each ``Fixed`` request is spelled on its own (never
run together with the next), and a choice's options carry the text that follows them up to the next
decision, so the token boundaries are where the schema puts them. Strings take tokens without
quotes, backslashes or control characters (names also without colons) and must start with a visible
character; numbers take digit tokens, ``.`` and ``-`` as long as some completion stays in range.
``wrap_up()`` (called when the token budget runs low) closes the answer as soon as possible: strings
close, numbers end once valid, choices take their closing option.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import TTMInputError

# --------------------------------------------------------------------------- vocabulary


@dataclass
class Vocabulary:
    """Per-tokenizer tables for constrained decoding (built once per loaded model).

    Attributes:
        texts: the text each token id adds after another token (``[V]``).
        by_text: the first non-special token id of each text.
        max_length: the longest token text, in characters.
        content: bool ``[V]``: may appear inside a JSON string value.
        no_colon: bool ``[V]``: content tokens without ':' (for names).
        nonblank: bool ``[V]``: tokens with a visible character (a string's first token).
        lengths: int ``[V]``: characters each token adds.
        quote: the token of '"'.
        eos: the model's end tokens.
        digits: (token id, text) of the non-special tokens made only of ASCII digits.
    """

    texts: list[str]
    by_text: dict[str, int]
    max_length: int
    content: torch.Tensor
    no_colon: torch.Tensor
    nonblank: torch.Tensor
    lengths: torch.Tensor
    quote: int
    eos: tuple[int, ...]
    digits: tuple[tuple[int, str], ...] = ()

    @classmethod
    def build(cls, tokenizer: Any, vocab_size: int, eos: Sequence[int]) -> Vocabulary:
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
        base = tokenizer.decode(anchor)
        pairs = tokenizer.batch_decode([[*anchor, i] for i in range(vocab_size)])
        texts = [p[len(base):] if p.startswith(base) else p for p in pairs]
        by_text: dict[str, int] = {}
        for i, text in enumerate(texts):
            if i not in special and text and text not in by_text:
                by_text[text] = i
        if '"' not in by_text:
            raise TTMInputError("llm", "the tokenizer has no token for '\"', so answers cannot be constrained",
                                "turn constrained decoding off in the LLM Loader")
        content = torch.tensor([bool(t) and i not in special and '"' not in t and "\\" not in t
                                and not any(ord(c) < 32 for c in t) for i, t in enumerate(texts)])
        no_colon = content & torch.tensor([":" not in t for t in texts])
        nonblank = torch.tensor([bool(t.strip()) for t in texts])
        lengths = torch.tensor([len(t) for t in texts])
        digits = tuple(sorted(((i, t) for t, i in by_text.items() if t.isascii() and t.isdigit()),
                              key=lambda pair: (len(pair[1]), pair[1])))
        return cls(texts, by_text, max(len(t) for t in by_text), content, no_colon, nonblank, lengths,
                   by_text['"'], tuple(eos), digits)

    def literal_token(self, remaining: str) -> int:
        """The longest token that spells a prefix of ``remaining``."""
        for size in range(min(len(remaining), self.max_length), 0, -1):
            token = self.by_text.get(remaining[:size])
            if token is not None:
                return token
        raise TTMInputError("llm", f"the tokenizer cannot spell {remaining[:1]!r}",
                            "turn constrained decoding off in the LLM Loader")

    def spelled_length(self, text: str) -> int:
        """How many forced tokens spell ``text`` (longest prefix first)."""
        count = 0
        while text:
            text = text[len(self.texts[self.literal_token(text)]):]
            count += 1
        return count

    def number_tokens(self) -> tuple[int, int]:
        """The tokens of '.' and '-'; raises when the tokenizer cannot spell numbers one digit at a time."""
        single = {t for _, t in self.digits if len(t) == 1}
        if single != set("0123456789") or "." not in self.by_text or "-" not in self.by_text:
            raise TTMInputError("llm", "the tokenizer has no single-character tokens for the digits, '.' and '-', "
                                "so numbers cannot be constrained", "turn constrained decoding off in the LLM Loader")
        return self.by_text["."], self.by_text["-"]


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Fixed:
    """Forced text (may be empty: nothing to spell)."""

    text: str


@dataclass(frozen=True)
class OneOf:
    """One of several texts, none a prefix of another; the program receives the chosen index.

    ``closing``: the option that finishes the answer soonest, the only one offered after ``wrap_up()``
    (None: no preference, the model picks)."""

    options: tuple[str, ...]
    closing: int | None = None

    def __post_init__(self) -> None:
        if not self.options or any(not o for o in self.options):
            raise ValueError(f"a choice needs non-empty options, got {self.options!r}")
        for a in self.options:
            for b in self.options:
                if a is not b and b.startswith(a):
                    raise ValueError(f"choice option {a!r} is a prefix of {b!r}")
        if self.closing is not None and not 0 <= self.closing < len(self.options):
            raise ValueError(f"closing option {self.closing} of {len(self.options)}")


@dataclass(frozen=True)
class TextValue:
    """A JSON string's content (at most ``limit`` characters, at least one visible) and its closing
    quote; the opening quote belongs to the text before it. The program receives the content."""

    limit: int
    no_colon: bool = False


@dataclass(frozen=True)
class NumberRange:
    """Decimals ``low`` .. ``high`` written with at most ``decimals`` fraction digits, no exponent and
    no leading zeros (``-12.5``, ``0.25``, ``3``); ``low_open`` excludes ``low`` itself.

    Values are checked in integer units of 10^-decimals, so the bounds are rounded to that grid."""

    low: float
    high: float
    decimals: int = 0
    low_open: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or not 0 <= self.decimals <= 6:
            raise ValueError(f"bad number range {self}")
        if self.bounds[0] > self.bounds[1]:
            raise ValueError(f"empty number range {self}")

    @property
    def scale(self) -> int:
        return 10 ** self.decimals

    @property
    def bounds(self) -> tuple[int, int]:
        """(lowest, highest) allowed value in units of 10^-decimals."""
        low = math.ceil(round(self.low * self.scale, 6))
        if self.low_open and low == round(self.low * self.scale, 6):
            low += 1
        return low, math.floor(round(self.high * self.scale, 6))

    @property
    def int_digits(self) -> int:
        return len(str(max(abs(b) for b in self.bounds) // self.scale))

    def _parts(self, prefix: str) -> tuple[bool, str, bool, str] | None:
        """(negative, integer digits, has '.', fraction digits), or None when no number starts so."""
        negative = prefix.startswith("-")
        body = prefix[1:] if negative else prefix
        whole, dot, fraction = body.partition(".")
        if negative and self.bounds[0] >= 0:
            return None
        if not (whole.isascii() and fraction.isascii()) or (whole and not whole.isdigit()) \
                or (fraction and not fraction.isdigit()):
            return None
        if len(whole) > self.int_digits or (len(whole) > 1 and whole[0] == "0"):
            return None
        if dot and (not whole or self.decimals == 0 or len(fraction) > self.decimals):
            return None
        return negative, whole, bool(dot), fraction

    def feasible(self, prefix: str) -> bool:
        """Whether some number that starts with ``prefix`` lies in the range."""
        parts = self._parts(prefix)
        if parts is None:
            return False
        negative, whole, dot, fraction = parts
        scale = self.scale
        spans: list[tuple[int, int]] = []  # magnitudes reachable, in units
        if dot:
            base = int(whole) * scale + int(fraction.ljust(self.decimals, "0"))
            spans.append((base, base + 10 ** (self.decimals - len(fraction)) - 1))
        elif not whole:
            spans.append((0, 10 ** self.int_digits * scale - 1))
        elif whole == "0":
            spans.append((0, scale - 1))
        else:
            for extra in range(self.int_digits - len(whole) + 1):
                low = int(whole) * 10 ** extra
                high = (int(whole) + 1) * 10 ** extra - 1
                spans.append((low * scale, high * scale + scale - 1))
        lowest, highest = self.bounds
        for a, b in spans:
            a, b = (-b, -a) if negative else (a, b)
            if a <= highest and b >= lowest:
                return True
        return False

    def value(self, text: str) -> float | None:
        """The number ``text`` spells when it is complete and in range, else None."""
        parts = self._parts(text)
        if parts is None:
            return None
        negative, whole, dot, fraction = parts
        if not whole or (dot and not fraction):
            return None
        units = int(whole) * self.scale + int(fraction.ljust(self.decimals, "0") or "0")
        units = -units if negative else units
        lowest, highest = self.bounds
        return units / self.scale if lowest <= units <= highest else None


@dataclass(frozen=True)
class NumberValue:
    """A number in ``range``, ended by the model choosing the first token of ``then`` (the text that
    follows it, spelled after it). The program receives the value."""

    range: NumberRange
    then: str

    def __post_init__(self) -> None:
        if not self.then or self.then[0] in "0123456789.-":
            raise ValueError(f"a number needs a following text that cannot continue it, got {self.then!r}")


Request = Fixed | OneOf | TextValue | NumberValue
Program = Generator[Request, Any, Any]
"""A generator of requests; ``yield`` gives None for Fixed, the index for OneOf, the text for
TextValue and the float for NumberValue; its return value is the parsed answer."""


class TokenGrammar(Protocol):
    """What LocalLLM needs from a grammar: masks, consumption and an early close."""

    done: bool
    wrap_up_tokens: int

    def allowed(self) -> torch.Tensor: ...

    def advance(self, token: int) -> None: ...

    def wrap_up(self) -> None: ...


# --------------------------------------------------------------------------- the engine


class SchemaGrammar:
    """Token-level state machine that spells a program's requests (see the module docstring).

    Args:
        vocabulary: the model's Vocabulary.
        program: a Node (its program is run) or a program.
        wrap_up_tokens: LocalLLM calls ``wrap_up()`` when this many tokens of the budget are left:
            enough to close the answer from any state.
    """

    def __init__(self, vocabulary: Vocabulary, program: Node | Program, wrap_up_tokens: int = 64) -> None:
        self.v = vocabulary
        self.wrap_up_tokens = wrap_up_tokens
        self.done = False
        self.closing_soon = False
        self.value: Any = None  # the program's return value once done
        self._program = program.program() if isinstance(program, Node) else program
        self._literal = ""  # forced text still to spell
        self._result: Any = None  # sent to the program once the forced text is spelled
        self._options: list[tuple[int, str]] = []  # (option index, text still to spell) while choosing
        self._closing: int | None = None
        self._text: TextValue | None = None
        self._written = ""  # the string or number so far
        self._number: NumberValue | None = None
        self._masks: dict[tuple[NumberValue, str, bool], torch.Tensor] = {}
        self._resume(None)

    def wrap_up(self) -> None:
        """Finish the answer with as few tokens as possible from now on."""
        self.closing_soon = True

    # ------------------------------------------------------------------ masks

    def allowed(self) -> torch.Tensor:
        """bool ``[V]``: the tokens that may come next."""
        if self._text is not None:
            mask = (self.v.no_colon if self._text.no_colon else self.v.content).clone()
            mask &= self.v.lengths <= self._text.limit - len(self._written)
            if not self._written.strip():
                mask &= self.v.nonblank  # strings start with a visible character
            elif self.closing_soon:
                mask[:] = False
            mask[self.v.quote] = bool(self._written.strip())
            return mask
        if self._number is not None:
            return self._number_mask(self._number, self._written).clone()
        mask = torch.zeros(len(self.v.texts), dtype=torch.bool)
        if self.done:
            mask[list(self.v.eos)] = True
        elif self._options:
            options = self._options
            if self.closing_soon and any(i == self._closing for i, _ in options):
                options = [(i, rest) for i, rest in options if i == self._closing]
            for _, rest in options:
                mask[self.v.literal_token(rest)] = True
        else:
            mask[self.v.literal_token(self._literal)] = True
        return mask

    def _number_mask(self, request: NumberValue, prefix: str) -> torch.Tensor:
        key = (request, prefix, self.closing_soon)
        cached = self._masks.get(key)
        if cached is not None:
            return cached
        number = request.range
        mask = torch.zeros(len(self.v.texts), dtype=torch.bool)
        if number.value(prefix) is not None:
            mask[self.v.literal_token(request.then)] = True
        if not (self.closing_soon and mask.any()):
            dot, minus = self.v.number_tokens()
            for token, text in self.v.digits:
                if number.feasible(prefix + text):
                    mask[token] = True
            mask[dot] = number.feasible(prefix + ".")
            mask[minus] = not prefix and number.feasible("-")
        self._masks[key] = mask
        return mask

    # ------------------------------------------------------------------ consumption

    def advance(self, token: int) -> None:
        """Consume ``token`` (one of ``allowed()``)."""
        piece = self.v.texts[token]
        if self._text is not None:
            if token == self.v.quote:
                text, self._text, self._written = self._written, None, ""
                self._resume(text)
            else:
                self._written += piece
            return
        if self.done:
            return
        if self._number is not None:
            if piece and piece[0] in "0123456789.-":
                self._written += piece
                return
            value = self._number.range.value(self._written)
            self._literal, self._result = self._number.then[len(piece):], value
            self._number, self._written = None, ""
            if not self._literal:
                self._resume(value)
            return
        if self._options:
            remaining = [(i, rest[len(piece):]) for i, rest in self._options if rest.startswith(piece)]
            finished = [i for i, rest in remaining if not rest]
            if finished:
                self._options = []
                self._resume(finished[0])
            elif len(remaining) == 1:
                (index, rest), self._options = remaining[0], []
                self._literal, self._result = rest, index
            else:
                self._options = remaining
            return
        self._literal = self._literal[len(piece):]
        if not self._literal:
            self._resume(self._result)

    def _resume(self, value: Any) -> None:
        """Run the program up to its next request that needs a token."""
        while True:
            try:
                request = self._program.send(value)
            except StopIteration as stop:
                self.done, self.value = True, stop.value
                return
            value = None
            if isinstance(request, Fixed):
                if request.text:
                    self._literal, self._result = request.text, None
                    return
            elif isinstance(request, OneOf):
                self._options = list(enumerate(request.options))
                self._closing = request.closing
                return
            elif isinstance(request, TextValue):
                self._text, self._written = request, ""
                return
            else:
                self.v.number_tokens()  # a clear error now for tokenizers that cannot spell numbers
                self._number, self._written = request, ""
                return


# --------------------------------------------------------------------------- schema nodes


class Node:
    """A JSON value's schema, compiled into a program.

    ``program(lead, tail, opened)`` spells ``lead`` (text that must come first), the value, then
    ``tail``; with ``opened`` the node's ``opening()`` was already spelled by whoever came before
    (a choice option that runs on into the value), and ``lead`` is empty.
    """

    wants_tail = False
    """The node spells the text after it within its own last request (numbers need it to end them;
    for enums and constants it makes fewer, longer forced runs)."""

    def opening(self) -> str:
        """The text every value of this node starts with (may be empty)."""
        return ""

    def program(self, lead: str = "", tail: str = "", opened: bool = False) -> Program:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Node):
    """A string of at most ``limit`` characters (``no_colon``: without ':')."""

    limit: int
    no_colon: bool = False

    def opening(self) -> str:
        return '"'

    def program(self, lead: str = "", tail: str = "", opened: bool = False) -> Program:
        if not opened:
            yield Fixed(lead + '"')
        text = yield TextValue(self.limit, self.no_colon)
        if tail:
            yield Fixed(tail)
        return text


@dataclass(frozen=True)
class Num(Node):
    """A number in ``range`` (see NumberRange)."""

    range: NumberRange
    wants_tail = True

    def program(self, lead: str = "", tail: str = "", opened: bool = False) -> Program:
        if lead:
            yield Fixed(lead)
        return (yield NumberValue(self.range, tail))


@dataclass(frozen=True)
class Enum(Node):
    """One of ``values`` (strings without quotes or backslashes)."""

    values: tuple[str, ...]
    wants_tail = True

    def __post_init__(self) -> None:
        if not self.values or any('"' in v or "\\" in v for v in self.values):
            raise ValueError(f"bad enum values {self.values!r}")

    def opening(self) -> str:
        return '"'

    def program(self, lead: str = "", tail: str = "", opened: bool = False) -> Program:
        if not opened:
            yield Fixed(lead + '"')
        index = yield OneOf(tuple(f'{v}"{tail}' for v in self.values))
        return self.values[index]


@dataclass(frozen=True)
class Bool(Node):
    """``true`` or ``false``; ``closing``: the value offered after wrap-up (None: either)."""

    closing: bool | None = None
    wants_tail = True

    def program(self, lead: str = "", tail: str = "", opened: bool = False) -> Program:
        if lead:
            yield Fixed(lead)
        closing = None if self.closing is None else (0 if self.closing else 1)
        return (yield OneOf((f"true{tail}", f"false{tail}"), closing)) == 0


@dataclass(frozen=True)
class Const(Node):
    """A fixed JSON value, spelled as ``json.dumps`` writes it."""

    value: Any
    wants_tail = True

    def opening(self) -> str:
        return json.dumps(self.value, ensure_ascii=False)

    def program(self, lead: str = "", tail: str = "", opened: bool = False) -> Program:
        yield Fixed(lead + tail if opened else lead + self.opening() + tail)
        return self.value


@dataclass(frozen=True)
class Obj(Node):
    """An object with exactly ``fields`` ((key, node) pairs), in that order."""

    fields: tuple[tuple[str, Node], ...]

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("an object schema needs at least one field")

    def opening(self) -> str:
        key, node = self.fields[0]
        return "{" + json.dumps(key) + ": " + node.opening()

    def program(self, lead: str = "", tail: str = "", opened: bool = False) -> Program:
        values: dict[str, Any] = {}
        pending = "" if opened else lead + "{"
        for i, (key, node) in enumerate(self.fields):
            last = i == len(self.fields) - 1
            field_lead = "" if opened else pending + ("" if i == 0 else ", ") + json.dumps(key) + ": "
            node_tail, next_opened = ("}" + tail if last else ""), False
            if not last and node.wants_tail:  # the next key (and its value's opening) end this value
                next_key, next_node = self.fields[i + 1]
                node_tail, next_opened = ", " + json.dumps(next_key) + ": " + next_node.opening(), True
            values[key] = yield from node.program(field_lead, node_tail, opened)
            opened, pending = next_opened, ""
        return values


@dataclass(frozen=True)
class Arr(Node):
    """A list of ``min_items`` to ``max_items`` values of ``item`` (which must open with fixed text)."""

    item: Node
    min_items: int = 0
    max_items: int = 8

    def __post_init__(self) -> None:
        if not self.item.opening() or not 0 <= self.min_items <= self.max_items or self.max_items < 1:
            raise ValueError(f"bad list schema {self}")

    def opening(self) -> str:
        return "["

    def program(self, lead: str = "", tail: str = "", opened: bool = False) -> Program:
        if not opened:
            yield Fixed(lead + "[")
        values: list[Any] = []
        while True:
            count = len(values)
            separator = ", " if count else ""
            if count >= self.max_items:
                yield Fixed("]" + tail)
                return values
            if count < self.min_items:
                values.append((yield from self.item.program(separator)))
                continue
            choice = yield OneOf((separator + self.item.opening(), "]" + tail), closing=1)
            if choice == 1:
                return values
            values.append((yield from self.item.program(opened=True)))

