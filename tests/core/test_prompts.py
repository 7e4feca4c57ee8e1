"""The manual prompt format and the strict LLM-answer parser."""

from __future__ import annotations

import pytest

from ttm_core.errors import TTMInputError
from ttm_core.prompts.parse import manual_prompts, parse_llm_answer, parse_object_lines


def test_manual_lines_with_bullets_comments_and_blanks() -> None:
    prompts = manual_prompts("a cat and a dog", "",
                             "# movable objects\n- cat: a ginger cat jumps\n\n2. dog: a dog runs\n")
    assert prompts.names == ("cat", "dog")
    assert prompts.objects[1].local_prompt == "a dog runs"
    assert prompts.motion_prompt == "a cat and a dog"  # empty motion prompt falls back to the global one


def test_manual_line_without_colon_names_the_line() -> None:
    with pytest.raises(TTMInputError, match=r"line 3 \('dog a dog runs'\) has no colon") as err:
        parse_object_lines("cat: a cat\n\ndog a dog runs")
    assert err.value.input_name == "objects"


def test_manual_empty_prompt_names_the_line() -> None:
    with pytest.raises(TTMInputError, match=r"line 1 \('cat:'\) has an empty local prompt"):
        parse_object_lines("cat:")


def test_manual_duplicate_names() -> None:
    with pytest.raises(TTMInputError, match="'Cat' is used twice") as err:
        manual_prompts("g", "m", "cat: a\nCat: b")
    assert err.value.input_name == "objects"


def test_manual_needs_global_prompt() -> None:
    with pytest.raises(TTMInputError) as err:
        manual_prompts(" ", "m", "cat: a")
    assert err.value.input_name == "global_prompt"


def test_manual_zero_objects_is_a_valid_decomposition() -> None:
    assert manual_prompts("a calm lake", "water ripples", "").objects == ()


JSON_WITH_PROSE = """Sure! Here is the decomposition:
```json
{"motion_prompt": "A dog runs left while a cat jumps.",
 "objects": [{"name": "dog", "prompt": "a brown dog running"},
             {"name": "cat", "prompt": "a white cat jumping"}]}
```
Let me know if you need more."""

PAPER_FORMAT = """Motion-specific prompt: "Two dogs run towards each other."
Answer: [[Object 1: a dog on the left running right] [Object 2: a dog on the right running left]]"""

LINE_FORMAT = """Motion: the birds fly away
Objects:
- left bird: a small sparrow flapping its wings
- right bird: a sparrow taking off"""


@pytest.mark.parametrize("answer, names, motion", [
    (JSON_WITH_PROSE, ("dog", "cat"), "A dog runs left while a cat jumps."),
    ('{"motion": "waves", "objects": {"boat": "a red boat rocking"}}', ("boat",), "waves"),
    (PAPER_FORMAT, ("object 1", "object 2"), "Two dogs run towards each other."),
    ("Motion-specific prompt: A ball rolls.\nAnswer: [[ball: a red ball rolling]]", ("ball",), "A ball rolls."),
    (LINE_FORMAT, ("left bird", "right bird"), "the birds fly away"),
    ('{"motion_prompt": "Les chats dansent", "objects": [{"name": "chat noir", "prompt": "un chat noir"}, '
     '{"name": "猫", "prompt": "一只猫"}]}', ("chat noir", "猫"), "Les chats dansent"),
    ('Motion-specific prompt: "Leaves sway."\nAnswer: []', (), "Leaves sway."),
])
def test_llm_answers_parse(answer: str, names: tuple[str, ...], motion: str) -> None:
    prompts = parse_llm_answer(answer, "caption")
    assert prompts.names == names
    assert prompts.motion_prompt == motion
    assert prompts.global_prompt == "caption"


@pytest.mark.parametrize("answer, message", [
    ("I cannot help with that.", "no motion prompt or object list found in 'I cannot help with that.'"),
    ("", "empty"),
    ('{"objects": [{"name": "dog", "prompt": "a dog"}]}', "motion prompt is missing"),
    ("Motion-specific prompt: x\nAnswer: [[dog: a dog] [cat: a cat]", "unbalanced brackets"),
    ("Motion-specific prompt: x\nAnswer: [[dog a dog]]", "no 'name: prompt' colon"),
    ('{"motion_prompt": "m", "objects": [{"name": "dog", "prompt": "a"}, {"name": "Dog", "prompt": "b"}]}',
     "used twice"),
    ('{"motion_prompt": "m", "objects": [' + ", ".join(f'{{"name": "o{i}", "prompt": "p"}}' for i in range(12))
     + "]}", "12 objects"),
    ('{"motion_prompt": "m", "objects": "dog"}', "'objects' is not a list"),
])
def test_llm_answers_rejected_with_quote(answer: str, message: str) -> None:
    with pytest.raises(TTMInputError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        parse_llm_answer(answer, "caption")
    assert err.value.input_name == "llm_answer"
