"""Stage 1, ``plan`` backend (library side): an LLM plans each object's keyframes, which become the paths JSON.

Given the image size, the clip's length, every object (name, local prompt, first-frame box and
centre) and the motion prompt c_motion, the LLM answers one entry per object: static, or
keyframes of its centre, scale, rotation and easing. The answer is parsed strictly, checked for
plausibility (times inside the clip and increasing, positions not flung off the image, sensible
scales, known easings) and converted to the paths JSON v1 (``motion.paths``), the editable
intermediate an artist can paste into the ``paths`` backend. A rejected answer is shown back to the
model with the problem (``prompts.llm.ask``), a bounded number of times, seeded.

The prompt follows the way LLM-grounded video generation plans layouts (describe the coordinate
system, give worked examples, ask for exactly one JSON form) in our own words. The answer::

    {"objects": [
      {"name": "dog", "static": false, "keyframes": [
         {"t": 0, "x": 120, "y": 350, "scale": 1, "rotation": 0, "easing": "linear"},
         {"t": 0.7, "x": 240, "y": 350, "scale": 1, "rotation": 0, "easing": "ease_in"}]},
      {"name": "cat", "static": true, "keyframes": []}]}

* ``x``, ``y``: the object's CENTRE (its mask centroid) in pixels of the image, x to the right, y
  down; ``t``: 0..1 of the clip (0 = the first frame, the image; 1 = the last frame).
* ``scale``: size relative to the first frame; ``rotation``: degrees turned, clockwise on screen;
  ``easing``: how the segment arriving at the keyframe moves (``motion.paths.EASINGS``).
* The first keyframe of a moving object is its rest pose at t 0 (a t 0 keyframe elsewhere is an
  error); it may be left out, then the object starts from where it is.

Decisions: objects the answer leaves out stay still (logged); names match case-insensitively;
missing ``scale`` / ``rotation`` keep the previous keyframe's value and a missing ``easing`` is
linear (as in the paths JSON); unknown keys, strings for numbers, NaN / infinity are errors.

With a local model and constrained decoding (``PlanGrammar``) the answer cannot fail to parse: every
object is listed once, in the request's order, with its exact name; the start keyframe is
forced; the model only decides static or not, the numbers (digits limited, ranges the checks
accept, each time after the one before) and the easings.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from ..errors import TTMInputError
from ..prompts.grammar import Enum, Fixed, Num, NumberRange, Obj, OneOf, Program, SchemaGrammar, Vocabulary
from ..prompts.llm import AnswerFormat, HttpLLM, LocalLLM, Message, ask
from ..prompts.parse import json_values, quote_answer
from ..types import MAX_OBJECTS, ObjectPrompt, Objects, Prompts
from .paths import FAR_OFF_LIMIT, PATHS_VERSION, format_paths, parse_paths
from .poses import mask_centroids

LOG = logging.getLogger(__name__)

Device = torch.device | str | None

Easing = Literal["linear", "ease_in", "ease_out", "ease_in_out", "hold"]
EASING_NAMES: tuple[Easing, ...] = get_args(Easing)
"""The easings of ``motion.paths.EASINGS`` (a test keeps the two equal)."""

ANSWER_INPUT = "plan_answer"
"""The input name errors about an answer carry (the node input a plan answer is pasted into)."""
MIN_SCALE, MAX_SCALE = 0.05, 10.0
"""Plausible sizes relative to the first frame: from a twentieth to ten times."""
MAX_ROTATION = 720.0
"""Degrees; more than two turns within one clip is almost always a unit mix-up."""
MAX_KEYFRAMES = 16
"""Keyframes per object, the start included."""
START_TOLERANCE = 0.03
"""A keyframe at t 0 must lie within this share of the image's larger side (at least 3 px) of the
object's centre: it is the rest pose, and the image is frame 0."""
DECIMALS = {"t": 2, "x": 1, "y": 1, "scale": 2, "rotation": 1}
"""Fraction digits the constrained grammar lets a local model write."""
MAX_SIDE = 16384
MAX_FRAMES = 2048
KEYFRAME_KEYS = ("t", "x", "y", "scale", "rotation", "easing")


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class PlanObject:
    """One object as the LLM is told about it.

    Attributes:
        name: its unique name (how the answer addresses it).
        prompt: its local prompt (may be empty).
        box: (x0, y0, x1, y1) first-frame bounding box in pixels, x0 < x1, y0 < y1 (continuous
            coordinates: pixel (i, j) covers [i, i+1) x [j, j+1)).
        centroid: (x, y) first-frame mask centroid in pixels: the centre keyframes move.
    """

    name: str
    prompt: str
    box: tuple[float, float, float, float]
    centroid: tuple[float, float]

    def __post_init__(self) -> None:
        checked = ObjectPrompt(self.name, self.prompt or self.name)  # name rules of every object
        object.__setattr__(self, "name", checked.name)
        object.__setattr__(self, "prompt", self.prompt.strip())
        box = tuple(float(v) for v in self.box)
        centroid = tuple(float(v) for v in self.centroid)
        if len(box) != 4 or len(centroid) != 2 or not all(math.isfinite(v) for v in (*box, *centroid)):
            raise TTMInputError("objects", f"object {self.name!r}: box {self.box} / centre {self.centroid} are "
                                "not 4 and 2 finite numbers",
                                "give the box as (x0, y0, x1, y1) and the centre as (x, y)")
        x0, y0, x1, y1 = box
        if not (x0 < x1 and y0 < y1):
            raise TTMInputError("objects", f"object {self.name!r}: box {box} is empty", "give x0 < x1 and y0 < y1")
        cx, cy = centroid
        if not (x0 <= cx <= x1 and y0 <= cy <= y1):
            raise TTMInputError("objects", f"object {self.name!r}: centre {centroid} lies outside its box {box}",
                                "give the mask centroid, which lies inside the mask's box")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "centroid", centroid)


@dataclass(frozen=True)
class PlanRequest:
    """What the LLM plans from.

    Attributes:
        width, height: the image size in pixels.
        num_frames: T >= 2, the clip's length in frames (t 0 is frame 0, t 1 frame T - 1).
        fps: playback rate, frames per second (the duration helps the model judge speeds).
        motion_prompt: c_motion, the overall motion in words.
        objects: one to eight objects, names unique (case-insensitive), boxes inside the image.
    """

    width: int
    height: int
    num_frames: int
    fps: float
    motion_prompt: str
    objects: tuple[PlanObject, ...]

    def __post_init__(self) -> None:
        if not (1 <= self.width <= MAX_SIDE and 1 <= self.height <= MAX_SIDE):
            raise TTMInputError("image", f"the image is {self.width}x{self.height} px",
                                f"use an image of 1 to {MAX_SIDE} px a side")
        if not 2 <= self.num_frames <= MAX_FRAMES:
            raise TTMInputError("num_frames", f"{self.num_frames} frames", f"plan 2 to {MAX_FRAMES} frames")
        if not (math.isfinite(self.fps) and 0 < self.fps <= 240):
            raise TTMInputError("fps", f"fps {self.fps}", "use a frame rate above 0, up to 240 (e.g. 16)")
        object.__setattr__(self, "motion_prompt", self.motion_prompt.strip())
        if not self.motion_prompt:
            raise TTMInputError("motion_prompt", "the motion prompt is empty",
                                "describe the motion in one sentence, e.g. 'the dog runs to the right'")
        objects = tuple(self.objects)
        object.__setattr__(self, "objects", objects)
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise TTMInputError("objects", f"{len(objects)} objects", f"plan 1 to {MAX_OBJECTS} objects")
        seen: set[str] = set()
        for obj in objects:
            if obj.name.casefold() in seen:
                raise TTMInputError("objects", f"the name {obj.name!r} is used twice", "give each object a unique name")
            seen.add(obj.name.casefold())
            x0, y0, x1, y1 = obj.box
            if x0 < 0 or y0 < 0 or x1 > self.width or y1 > self.height:
                raise TTMInputError("objects", f"object {obj.name!r}: box {obj.box} is not inside the "
                                    f"{self.width}x{self.height} image", "give boxes in the image's pixels")

    @classmethod
    def from_objects(cls, objects: Objects, motion_prompt: str, num_frames: int, fps: float) -> PlanRequest:
        """The request for ``objects``: boxes and centroids from their first-frame masks (``[L, H, W]``).

        An empty ``motion_prompt`` falls back to the prompts' motion prompt, then the global one."""
        binary = objects.binary()
        centroids = mask_centroids(binary)
        planned = []
        for i, prompt in enumerate(objects.prompts.objects):
            ys, xs = torch.nonzero(binary[i], as_tuple=True)
            box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1.0, float(ys.max()) + 1.0)
            planned.append(PlanObject(prompt.name, prompt.local_prompt, box,
                                      (float(centroids[i, 0]), float(centroids[i, 1]))))
        motion = motion_prompt.strip() or objects.prompts.motion_prompt or objects.prompts.global_prompt
        height, width = objects.size
        return cls(width, height, num_frames, fps, motion, tuple(planned))

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the last."""
        return (self.num_frames - 1) / self.fps

    def index_of(self, name: str) -> int | None:
        """0-based index of the object called ``name`` (case-insensitive, spaces trimmed), else None."""
        wanted = name.strip().casefold()
        return next((i for i, o in enumerate(self.objects) if o.name.casefold() == wanted), None)

    def prompts(self) -> Prompts:
        """The objects as Prompts (for ``parse_paths``)."""
        objects = tuple(ObjectPrompt(o.name, o.prompt or o.name) for o in self.objects)
        return Prompts(self.motion_prompt, self.motion_prompt, objects)

    def rest_positions(self) -> torch.Tensor:
        """float64 ``[L, 2]``: the centroids (x, y) in pixels."""
        return torch.tensor([o.centroid for o in self.objects], dtype=torch.float64)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlanKeyframe:
    """The object's pose at time ``t`` (0..1 of the clip): centre (x, y) in pixels, ``scale`` relative
    to the first frame, ``rotation`` in degrees clockwise, ``easing`` of the segment arriving here."""

    t: float
    x: float
    y: float
    scale: float = 1.0
    rotation: float = 0.0
    easing: Easing = "linear"


@dataclass(frozen=True)
class ObjectPlan:
    """One object's plan: its keyframes in time order (the first may be the rest pose at t 0);
    none means the object stays still."""

    name: str
    keyframes: tuple[PlanKeyframe, ...] = ()

    @property
    def static(self) -> bool:
        return not any(k.t > 0 for k in self.keyframes)


@dataclass(frozen=True)
class Plan:
    """One ObjectPlan per requested object, in the request's order."""

    objects: tuple[ObjectPlan, ...]


@dataclass(frozen=True, eq=False)
class PlanResult:
    """What ``plan_motion`` returns.

    Attributes:
        paths: the paths JSON v1 (units pixels, ``t`` times, objects keyed by name, static ones
            left out) as a dict.
        paths_json: the same as text, one keyframe a line, for the ``paths`` backend's editor.
        answer: the LLM's answer it came from.
        attempts: the attempts used (1 = the first answer was usable).
        plan: the parsed plan (every object, static ones included).
    """

    paths: dict[str, Any]
    paths_json: str
    answer: str
    attempts: int
    plan: Plan


# --------------------------------------------------------------------------- numbers as the prompt writes them


def _plain(value: float) -> float | int:
    """``value`` for JSON: an int when whole (``1`` not ``1.0``)."""
    return int(value) if float(value).is_integer() else float(value)


def _text(value: float, decimals: int = 1) -> str:
    """A number for the prompt: at most ``decimals`` fraction digits, no trailing zeros."""
    text = f"{value:.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def start_keyframe(obj: PlanObject) -> dict[str, Any]:
    """The rest pose every moving object's keyframes start from (centre rounded to 0.1 px)."""
    x, y = (_plain(round(v, DECIMALS["x"])) for v in obj.centroid)
    return {"t": 0, "x": x, "y": y, "scale": 1, "rotation": 0, "easing": "linear"}


# --------------------------------------------------------------------------- the prompt

_SHAPE = '{"t": 0, "x": 0, "y": 0, "scale": 1, "rotation": 0, "easing": "linear"}'
SYSTEM_PROMPT = f"""You plan how the objects in a still image move during a short video made from it.
You get the image size, the clip's length, every object (its name, a description, its bounding box and its centre in
the first frame) and one sentence describing the motion. Answer with keyframes for every object.

Coordinates are pixels of the image: x runs from 0 at the left edge to the image width at the right edge, y from 0 at
the top edge to the image height at the bottom edge (y grows downwards). Time t is the fraction of the clip: t 0 is the
first frame (the image itself), t 1 is the last frame.

List every object once, in the order given:
- "name": the object's name exactly as given.
- "static": true when the object does not move; its "keyframes" are then [].
- "keyframes" of a moving object: the first is its pose in the image,
  {{"t": 0, "x": <centre x>, "y": <centre y>, "scale": 1, "rotation": 0, "easing": "linear"}}; then one keyframe
  wherever the motion changes, t increasing, the last one usually at t 1 (after it the object stays where it is).
  "x", "y": where the object's CENTRE is at time t. "scale": its size relative to the image (1 = unchanged,
  2 = twice as large as it comes closer, 0.5 = half as large as it moves away; {MIN_SCALE:g} to {MAX_SCALE:g}).
  "rotation": degrees turned since the image, clockwise positive. "easing": how it moves from the previous keyframe to
  this one: "linear" (steady speed), "ease_in" (starts slowly, speeds up), "ease_out" (slows down to a stop),
  "ease_in_out" (starts and stops gently), "hold" (stays, then jumps at this keyframe; rarely right).
Keep the motion physically plausible for the clip's duration: realistic speeds, things stay on the ground they stand
on, rolling things turn as they go. Objects may leave the image, but never by more than the image's size. Objects the
motion does not move are static.
Answer with the JSON object only, no other text:
{{"objects": [{{"name": "...", "static": false, "keyframes": [{_SHAPE}, ...]}}]}}"""


def describe(request: PlanRequest) -> str:
    """The user turn for ``request``: image, clip, objects (box and centre), motion."""
    lines = [f"Image: {request.width} x {request.height} pixels.",
             f"Clip: {request.num_frames} frames at {_text(request.fps, 3)} fps ({request.duration:.1f} s).",
             "Objects:"]
    for i, obj in enumerate(request.objects, start=1):
        x0, y0, x1, y1 = (_text(v) for v in obj.box)
        start = start_keyframe(obj)
        about = f": {obj.prompt.rstrip('.')}" if obj.prompt else ""
        lines.append(f"{i}. {json.dumps(obj.name, ensure_ascii=False)}{about}. Box x {x0} to {x1}, y {y0} to {y1}; "
                     f"centre ({start['x']}, {start['y']}).")
    lines.append(f"Motion: {request.motion_prompt}")
    return "\n".join(lines)


def _keyframe(t: float, x: float, y: float, scale: float = 1, rotation: float = 0,
              easing: Easing = "linear") -> dict[str, Any]:
    return {"t": t, "x": x, "y": y, "scale": scale, "rotation": rotation, "easing": easing}


def _example(width: int, height: int, num_frames: int, fps: float, motion: str,
             objects: list[tuple[PlanObject, list[dict[str, Any]] | None]]) -> tuple[PlanRequest, dict[str, Any]]:
    """A worked example: the request and its answer (None = static; keyframes after the start)."""
    request = PlanRequest(width, height, num_frames, fps, motion, tuple(o for o, _ in objects))
    answer = {"objects": [
        {"name": obj.name, "static": keys is None,
         "keyframes": [] if keys is None else [start_keyframe(obj), *keys]} for obj, keys in objects]}
    return request, answer


EXAMPLES: tuple[tuple[PlanRequest, dict[str, Any]], ...] = (
    # one object moving across
    _example(640, 360, 49, 16, "A car drives off along the road to the right and stops.", [
        (PlanObject("car", "a red car driving along the road", (40, 200, 200, 280), (120, 240)),
         [_keyframe(1, 500, 240, easing="ease_in_out")])]),
    # two objects, one static
    _example(512, 512, 33, 8, "A dog runs to the right and stops in front of the cat, which sits still.", [
        (PlanObject("dog", "a brown dog running", (60, 300, 180, 400), (120, 350)),
         [_keyframe(0.7, 240, 350, easing="ease_in"), _keyframe(1, 265, 350, easing="ease_out")]),
        (PlanObject("cat", "a grey cat sitting on the grass", (340, 280, 440, 400), (390, 340)), None)]),
    # one object approaches (grows), another walks away (shrinks)
    _example(480, 320, 49, 16, "A bird flies towards the camera while a man walks away down the path.", [
        (PlanObject("bird", "a small bird flying towards the camera", (200, 100, 240, 130), (220, 115)),
         [_keyframe(0.5, 232, 128, scale=1.8, easing="ease_in"), _keyframe(1, 250, 150, scale=4)]),
        (PlanObject("man", "a man walking away down the path", (300, 120, 340, 260), (320, 190)),
         [_keyframe(1, 300, 150, scale=0.6)])]),
    # turning: a bottle tips over about its bottom corner, a ball rolls (turning as it goes)
    _example(512, 384, 49, 16, "A bottle tips over to the right and a ball rolls away to the left.", [
        (PlanObject("bottle", "a glass bottle tipping over", (230, 150, 270, 290), (250, 220)),
         [_keyframe(0.5, 305.4, 226.4, rotation=45, easing="ease_in"),
          _keyframe(0.7, 340, 270, rotation=90, easing="ease_in")]),
        (PlanObject("ball", "a rubber ball", (100, 250, 140, 290), (120, 270)),
         [_keyframe(1, 25.8, 270, rotation=-270, easing="ease_out")])]),
)


def build_plan_messages(request: PlanRequest) -> list[Message]:
    """The chat for one request: the rules, four worked examples, then the request."""
    messages: list[Message] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example, answer in EXAMPLES:
        messages.append({"role": "user", "content": describe(example)})
        messages.append({"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)})
    messages.append({"role": "user", "content": describe(request)})
    return messages


def plan_correction(problem: str) -> Message:
    """What the model is told after an unusable plan."""
    return {"role": "user", "content": f"That plan could not be used: {problem}. Answer again for the same objects "
                                       "with the JSON object only, in exactly the format shown."}


# --------------------------------------------------------------------------- constrained decoding


def _keyframe_schema(request: PlanRequest, after: float) -> Obj:
    """A keyframe later than ``after`` whose numbers pass the plausibility checks."""
    far_x, far_y = FAR_OFF_LIMIT * request.width, FAR_OFF_LIMIT * request.height
    return Obj((
        ("t", Num(NumberRange(after, 1.0, DECIMALS["t"], low_open=True))),
        ("x", Num(NumberRange(-far_x, request.width + far_x, DECIMALS["x"]))),
        ("y", Num(NumberRange(-far_y, request.height + far_y, DECIMALS["y"]))),
        ("scale", Num(NumberRange(MIN_SCALE, MAX_SCALE, DECIMALS["scale"]))),
        ("rotation", Num(NumberRange(-MAX_ROTATION, MAX_ROTATION, DECIMALS["rotation"]))),
        ("easing", Enum(EASING_NAMES)),
    ))


def _heads(request: PlanRequest) -> list[str]:
    return ['{"name": ' + json.dumps(o.name, ensure_ascii=False) + ', "static": ' for o in request.objects]


def plan_program(request: PlanRequest) -> Program:
    """The grammar's program: every object once, in order, static or start + 1..15 keyframes."""
    heads = _heads(request)
    opening = _keyframe_schema(request, 0.0).opening()
    yield Fixed('{"objects": [' + heads[0])
    plans: list[ObjectPlan] = []
    for k, obj in enumerate(request.objects):
        tail = ", " + heads[k + 1] if k + 1 < len(heads) else "]}"
        start = start_keyframe(obj)
        moving = yield OneOf(('true, "keyframes": []}' + tail,
                              'false, "keyframes": [' + json.dumps(start) + ", " + opening), closing=0)
        if moving == 0:
            plans.append(ObjectPlan(obj.name))
            continue
        keys = [PlanKeyframe(0.0, float(start["x"]), float(start["y"]))]
        while True:
            values = yield from _keyframe_schema(request, keys[-1].t).program(opened=True)
            keys.append(PlanKeyframe(**values))
            if len(keys) >= MAX_KEYFRAMES or keys[-1].t >= 1.0:
                yield Fixed("]}" + tail)
                break
            if (yield OneOf((", " + opening, "]}" + tail), closing=1)) == 1:
                break
        plans.append(ObjectPlan(obj.name, tuple(keys)))
    return Plan(tuple(plans))


class PlanGrammar(SchemaGrammar):
    """Token grammar for ``request``'s plan (see ``plan_program``); its ``value`` is the Plan.

    ``wrap_up_tokens`` is what closing needs from any state with this vocabulary: the rest of a
    keyframe at one character a token, and every object static."""

    def __init__(self, vocabulary: Vocabulary, request: PlanRequest) -> None:
        static = '{"objects": [' + ", ".join(h + 'true, "keyframes": []}' for h in _heads(request)) + "]}"
        start = max(vocabulary.spelled_length(json.dumps(start_keyframe(o))) for o in request.objects)
        widest = {"t": "0.99", "x": f"-{request.width * 2}.9", "y": f"-{request.height * 2}.9", "scale": "10.99",
                  "rotation": "-720.9", "easing": '"ease_in_out"'}
        keyframe = len(", {" + ", ".join(f'"{k}": {v}' for k, v in widest.items()) + "}]}")
        super().__init__(vocabulary, plan_program(request),
                         vocabulary.spelled_length(static) + start + keyframe + 16)


def plan_json_schema(request: PlanRequest) -> dict[str, Any]:
    """The structured-output schema HTTP servers are asked for (names as an enum, every object once)."""
    number: dict[str, Any] = {"type": "number"}
    keyframe = {"type": "object", "additionalProperties": False, "required": list(KEYFRAME_KEYS), "properties": {
        "t": {**number, "minimum": 0, "maximum": 1}, "x": number, "y": number,
        "scale": {**number, "minimum": MIN_SCALE, "maximum": MAX_SCALE},
        "rotation": {**number, "minimum": -MAX_ROTATION, "maximum": MAX_ROTATION},
        "easing": {"type": "string", "enum": list(EASING_NAMES)}}}
    entry = {"type": "object", "additionalProperties": False, "required": ["name", "static", "keyframes"],
             "properties": {"name": {"type": "string", "enum": [o.name for o in request.objects]},
                            "static": {"type": "boolean"},
                            "keyframes": {"type": "array", "items": keyframe, "maxItems": MAX_KEYFRAMES}}}
    count = len(request.objects)
    return {"type": "object", "additionalProperties": False, "required": ["objects"], "properties": {
        "objects": {"type": "array", "items": entry, "minItems": count, "maxItems": count}}}


def plan_answer_format(request: PlanRequest) -> AnswerFormat:
    """The plan's AnswerFormat: PlanGrammar for local models, plan_json_schema for HTTP servers."""
    return AnswerFormat("motion_plan", plan_json_schema(request),
                        lambda vocabulary: PlanGrammar(vocabulary, request))


# --------------------------------------------------------------------------- strict parsing


def _bad(problem: str, fix: str) -> TTMInputError:
    return TTMInputError(ANSWER_INPUT, problem, fix)


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:60].rstrip() + " ..."


def _find_plan(answer: str) -> dict[str, Any]:
    found: dict[str, dict[str, Any]] = {}
    for value in json_values(answer):
        if isinstance(value, dict) and "objects" in value:
            found.setdefault(json.dumps(value, sort_keys=True, default=str), value)
    if len(found) > 1:
        raise _bad(f"the answer holds {len(found)} different plans in {quote_answer(answer)}",
                   "keep exactly one JSON plan")
    if found:
        return next(iter(found.values()))
    start = answer.find("{")
    if start != -1 and re.search(r"[\"']objects[\"']", answer[start:]):
        try:
            json.loads(answer[start:])
        except json.JSONDecodeError as err:
            raise _bad(f"the JSON plan is cut off or malformed ({err.msg}, line {err.lineno} column {err.colno}) "
                       f"in {quote_answer(answer)}", "complete the JSON (for an LLM: raise max_new_tokens)") from None
    raise _bad(f"no plan (a JSON object with \"objects\") found in {quote_answer(answer)}",
               'answer with {"objects": [{"name": ..., "static": ..., "keyframes": [...]}]} as in the examples')


def _number(value: object, what: str) -> float:
    if isinstance(value, str):
        raise _bad(f"{what} is the text {value!r}, not a number", "write numbers without quotes")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{what} is {_short(value)}, not a number", "write a plain number")
    if not math.isfinite(value):
        raise _bad(f"{what} is {value}, not a finite number", "write a plain number")
    return float(value)


def _parse_keyframe(item: object, what: str, previous: PlanKeyframe | None, obj: PlanObject,
                    request: PlanRequest) -> PlanKeyframe:
    if not isinstance(item, dict):
        raise _bad(f"{what} is {_short(item)}, not an object", 'write each keyframe as {"t": ..., "x": ..., ...}')
    unknown = sorted(set(item) - set(KEYFRAME_KEYS))
    if unknown:
        raise _bad(f"{what} has unknown keys {unknown}",
                   "use only t (0..1 of the clip), x, y, scale, rotation and easing")
    for key in ("t", "x", "y"):
        if key not in item:
            raise _bad(f"{what} has no {key!r}", "give t, x and y in every keyframe")
    t = _number(item["t"], f"{what}: t")
    if not 0.0 <= t <= 1.0:
        hint = " (t is the fraction of the clip, not a frame number)" if t > 1 else ""
        raise _bad(f"{what}: t {t:g} is outside 0..1{hint}", "use t from 0 (first frame) to 1 (last frame)")
    if previous is not None and t <= previous.t:
        raise _bad(f"{what}: t {t:g} does not come after the previous keyframe's t {previous.t:g}",
                   "give the keyframes in time order, each later than the one before")
    x, y = _number(item["x"], f"{what}: x"), _number(item["y"], f"{what}: y")
    far_x, far_y = FAR_OFF_LIMIT * request.width, FAR_OFF_LIMIT * request.height
    if not (-far_x <= x <= request.width + far_x and -far_y <= y <= request.height + far_y):
        raise _bad(f"{what}: the centre ({x:g}, {y:g}) is more than one image size off the "
                   f"{request.width}x{request.height} image",
                   f"keep x in {-far_x:g}..{request.width + far_x:g} and y in {-far_y:g}..{request.height + far_y:g} "
                   "pixels: objects may leave the image, not fly away")
    scale = _number(item["scale"], f"{what}: scale") if "scale" in item else previous.scale if previous else 1.0
    if scale <= 0:
        raise _bad(f"{what}: scale {scale:g} is not positive", "use a scale above 0 (1 = the size in the image)")
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise _bad(f"{what}: scale {scale:g} is implausible",
                   f"use {MIN_SCALE:g} to {MAX_SCALE:g} (1 = the size in the image, 2 = twice as large)")
    rotation = _number(item["rotation"], f"{what}: rotation") if "rotation" in item \
        else previous.rotation if previous else 0.0
    if abs(rotation) > MAX_ROTATION:
        raise _bad(f"{what}: rotation {rotation:g} degrees is more than two turns",
                   f"give degrees from {-MAX_ROTATION:g} to {MAX_ROTATION:g}")
    easing = item.get("easing", "linear")
    if easing not in EASING_NAMES:
        raise _bad(f"{what}: unknown easing {_short(easing)}", f"use one of {', '.join(EASING_NAMES)}")
    if t == 0.0:
        cx, cy = obj.centroid
        tolerance = max(3.0, START_TOLERANCE * max(request.width, request.height))
        if abs(x - cx) > tolerance or abs(y - cy) > tolerance:
            hint = "; x and y are pixels, not fractions of the image" if abs(x) <= 1 and abs(y) <= 1 else ""
            raise _bad(f"{what}: at t 0 the centre must be where the object is in the image, ({cx:.1f}, {cy:.1f}), "
                       f"not ({x:g}, {y:g}){hint}", "start every moving object at its centre as given")
        if abs(scale - 1.0) > 0.01 or abs(rotation) > 0.5:
            raise _bad(f"{what}: at t 0 the object is as in the image (scale 1, rotation 0), not scale {scale:g}, "
                       f"rotation {rotation:g}", "start every moving object with scale 1 and rotation 0")
    return PlanKeyframe(t, x, y, scale, rotation, easing)


def _parse_object(entry: object, position: int, request: PlanRequest) -> tuple[int, ObjectPlan]:
    if not isinstance(entry, dict):
        raise _bad(f"object {position} is {_short(entry)}, not an object with name, static and keyframes",
                   'write each object as {"name": ..., "static": ..., "keyframes": [...]}')
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _bad(f"object {position} has no name", "give every object its name exactly as given")
    index = request.index_of(name)
    if index is None:
        known = ", ".join(repr(o.name) for o in request.objects)
        raise _bad(f"object {position} is called {name!r}, which is not one of the objects ({known})",
                   "use the objects' names exactly as given")
    obj = request.objects[index]
    unknown = sorted(set(entry) - {"name", "static", "keyframes"})
    if unknown:
        raise _bad(f"object {obj.name!r} has unknown keys {unknown}", "use only name, static and keyframes")
    static = entry.get("static")
    if static is not None and not isinstance(static, bool):
        raise _bad(f"object {obj.name!r}: static is {_short(static)}, not true or false", "write true or false")
    raw = entry.get("keyframes") or []
    if not isinstance(raw, list):
        raise _bad(f"object {obj.name!r}: keyframes is {_short(raw)}, not a list", "give a list of keyframes")
    if static and raw:
        raise _bad(f"object {obj.name!r} is static but has {len(raw)} keyframe(s)",
                   'give a static object "keyframes": [], or make it "static": false')
    if static is False and not raw:
        raise _bad(f"object {obj.name!r} moves (static false) but has no keyframes",
                   'give its keyframes, or make it "static": true')
    if len(raw) > MAX_KEYFRAMES:
        raise _bad(f"object {obj.name!r} has {len(raw)} keyframes", f"use at most {MAX_KEYFRAMES}, the start included")
    keys: list[PlanKeyframe] = []
    for number, item in enumerate(raw, start=1):
        keys.append(_parse_keyframe(item, f"object {obj.name!r} keyframe {number}", keys[-1] if keys else None,
                                    obj, request))
    if keys and not any(k.t > 0 for k in keys):
        raise _bad(f"object {obj.name!r} moves but has no keyframe after t 0",
                   'add keyframes after t 0, or make it "static": true')
    return index, ObjectPlan(obj.name, tuple(keys))


def parse_plan_answer(answer: str, request: PlanRequest) -> Plan:
    """Parse an LLM's plan for ``request`` strictly and check it is plausible.

    Tolerates code fences and prose around the JSON (as the decomposition parser does). Objects
    the answer leaves out stay still. Raises TTMInputError (input ``plan_answer``) naming the
    object and keyframe (1-based) of the first problem, or quoting the answer when it holds no
    plan; a plan that passes always converts to paths that ``motion.paths.parse_paths`` accepts.
    """
    if not answer.strip():
        raise _bad("the answer is empty", "paste or generate the LLM's plan")
    data = _find_plan(answer)
    unknown = sorted(set(data) - {"objects"})
    if unknown:
        raise _bad(f"the plan has unknown top-level keys {unknown}", 'answer with {"objects": [...]} only')
    entries = data["objects"]
    if not isinstance(entries, list):
        raise _bad(f"'objects' is {_short(entries)}, not a list", 'answer with "objects": [{"name": ...}, ...]')
    planned: dict[int, ObjectPlan] = {}
    for position, entry in enumerate(entries, start=1):
        index, object_plan = _parse_object(entry, position, request)
        if index in planned:
            raise _bad(f"object {object_plan.name!r} is listed twice", "list every object once")
        planned[index] = object_plan
    missing = [o.name for i, o in enumerate(request.objects) if i not in planned]
    if missing:
        LOG.info("the plan leaves out %s; they stay still", ", ".join(repr(n) for n in missing))
    plan = Plan(tuple(planned.get(i, ObjectPlan(o.name)) for i, o in enumerate(request.objects)))
    try:  # the checks above cover what parse_paths refuses; this keeps that true
        parse_paths(plan_to_paths(plan), request.prompts(), (request.height, request.width), request.num_frames,
                    request.rest_positions())
    except TTMInputError as err:
        raise _bad(f"the plan makes no valid paths: {err.problem}", err.fix) from None
    return plan


# --------------------------------------------------------------------------- the paths JSON


def plan_to_paths(plan: Plan) -> dict[str, Any]:
    """The paths JSON v1 of a plan: units pixels, ``t`` times, every field of every keyframe written,
    objects keyed by name in plan order; static objects and the t 0 rest pose are left out (the
    paths JSON starts every object from where it is)."""
    objects: dict[str, Any] = {}
    for object_plan in plan.objects:
        keys = [k for k in object_plan.keyframes if k.t > 0]
        if keys:
            objects[object_plan.name] = {"keyframes": [
                {"t": _plain(k.t), "x": _plain(k.x), "y": _plain(k.y), "scale": _plain(k.scale),
                 "rotation": _plain(k.rotation), "easing": k.easing} for k in keys]}
    return {"version": PATHS_VERSION, "units": "pixels", "objects": objects}


# --------------------------------------------------------------------------- planning

_PLAN_FIX = ("use a larger instruction-tuned model, raise max_new_tokens, turn constrained decoding on (local) or "
             "json_schema on (HTTP), or write the paths yourself with the paths backend")


def plan_motion(llm: LocalLLM | HttpLLM, request: PlanRequest, *, seed: int = 0, temperature: float = 0.0,
                max_new_tokens: int = 1024, attempts: int = 3, device: Device | Callable[[], Device] = None,
                progress: Callable[[int, int], None] | None = None) -> PlanResult:
    """Plan every object's motion with the LLM and convert the plan to the paths JSON v1.

    Args:
        llm: a local model (constrained decoding follows PlanGrammar when it is on) or an
            OpenAI-compatible endpoint (asked for plan_json_schema when its json_schema is on).
        request: the image, clip and objects (``PlanRequest.from_objects``).
        seed: sampling seed; attempt k uses seed + k. The same seed, model and request give the
            same plan.
        temperature: 0 = greedy.
        max_new_tokens: the answer's token budget (a local constrained model closes the plan
            before it runs out).
        attempts: 1..10 answers at most; each rejected one is shown back with its problem.
        device: where a local model runs (default: where it is), or a function returning it, called
            once the request and budget are checked (so a managed model is moved to its device only
            for a request that can run).
        progress: called with (tokens so far, max_new_tokens) while a local model writes.
    Returns:
        PlanResult; raises TTMInputError (input ``llm``) quoting the last problem and answer when
        no attempt gives a usable plan.
    """
    if not 1 <= max_new_tokens <= 32768:
        raise TTMInputError("max_new_tokens", f"{max_new_tokens} tokens", "use 1 to 32768 (1024 suits most plans)")
    answer_format = plan_answer_format(request)
    if isinstance(llm, LocalLLM) and llm.constrained:
        needed = PlanGrammar(llm.vocabulary(), request).wrap_up_tokens
        if max_new_tokens < needed:
            raise TTMInputError("max_new_tokens", f"{max_new_tokens} tokens are too few to plan "
                                f"{len(request.objects)} object(s) with this tokenizer",
                                f"use at least {needed} ({2 * needed} leaves room for numbers)")
    if callable(device):  # everything cheap is checked: now move a managed model to its device
        device = device()
    plan, answer, used = ask(llm, build_plan_messages(request), lambda text: parse_plan_answer(text, request),
                             answer_format=answer_format, correct=plan_correction, fix=_PLAN_FIX, seed=seed,
                             temperature=temperature, max_new_tokens=max_new_tokens, attempts=attempts,
                             device=device, progress=progress)
    paths = plan_to_paths(plan)
    moving = len(paths["objects"])
    LOG.info("motion plan after %d attempt(s): %d moving, %d static", used, moving, len(plan.objects) - moving)
    return PlanResult(paths, format_paths(paths), answer, used, plan)


def plan_objects(llm: LocalLLM | HttpLLM, objects: Objects, num_frames: int, fps: float, *, motion_prompt: str = "",
                 seed: int = 0, temperature: float = 0.0, max_new_tokens: int = 1024, attempts: int = 3,
                 device: Device | Callable[[], Device] = None,
                 progress: Callable[[int, int], None] | None = None) -> PlanResult:
    """``plan_motion`` for ``objects`` (first-frame masks and prompts), what Image To Motion's plan backend calls.

    ``motion_prompt`` empty: the objects' motion prompt (then their global prompt). The result's
    ``paths`` go through ``parse_paths`` and ``render.trajectory_from_paths`` exactly like the paths
    backend's JSON; ``paths_json`` is that JSON as text, to paste into the paths backend and edit."""
    request = PlanRequest.from_objects(objects, motion_prompt, num_frames, fps)
    return plan_motion(llm, request, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens,
                       attempts=attempts, device=device, progress=progress)
