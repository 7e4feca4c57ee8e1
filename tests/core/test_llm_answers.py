"""The strict LLM-answer parser against a corpus of realistic answers (the styles real chat models
write: prose around the JSON, code fences, JSON variants, the paper's format, line lists) and the
ways they go wrong (missing brackets, cut-off JSON, too many objects, duplicate names)."""

from __future__ import annotations

import pytest

from ttm_core.errors import TTMInputError
from ttm_core.prompts.parse import parse_llm_answer

CAPTION = "Two dogs play with a ball on a beach while a seagull flies overhead."

ACCEPTED = {
    "plain JSON": (
        '{"motion_prompt": "Two dogs chase a ball while a bird flies.", "objects": ['
        '{"name": "left dog", "prompt": "a brown dog running after the ball"}, '
        '{"name": "right dog", "prompt": "a white dog jumping for the ball"}, '
        '{"name": "ball", "prompt": "a red ball bouncing on the sand"}, '
        '{"name": "seagull", "prompt": "a seagull gliding across the sky"}]}',
        ("left dog", "right dog", "ball", "seagull"), "Two dogs chase a ball while a bird flies."),
    "prose before and after (Llama style)": (
        "Here is the decomposition of the caption:\n\n"
        '{"motion_prompt": "Two dogs chase a ball.", "objects": [{"name": "left dog", "prompt": "a dog running"}, '
        '{"name": "right dog", "prompt": "a dog jumping"}]}\n\n'
        "I dropped the beach because it does not move. Let me know if you want changes!",
        ("left dog", "right dog"), "Two dogs chase a ball."),
    "code fence (Qwen style)": (
        '```json\n{\n  "motion_prompt": "Two dogs chase a ball.",\n  "objects": [\n'
        '    {"name": "dog", "prompt": "a dog running"}\n  ]\n}\n```',
        ("dog",), "Two dogs chase a ball."),
    "braces in the prose too": (
        'Sure {as requested}: {"motion_prompt": "A bird flies.", "objects": [{"name": "bird", "prompt": "a bird"}]} '
        "(format: {name, prompt})",
        ("bird",), "A bird flies."),
    "trailing commas": (
        '{"motion_prompt": "Dogs run.", "objects": [{"name": "dog", "prompt": "a dog running",},],}',
        ("dog",), "Dogs run."),
    "single quotes (Python dict)": (
        "{'motion_prompt': 'Dogs run.', 'objects': [{'name': 'dog', 'prompt': \"a dog's run\"}]}",
        ("dog",), "Dogs run."),
    "objects as a mapping": (
        '{"motion": "Dogs run.", "objects": {"left dog": "a dog running", "right dog": "a dog sitting up"}}',
        ("left dog", "right dog"), "Dogs run."),
    "objects as name/prompt pairs": (
        '{"motion_prompt": "Dogs run.", "objects": [["dog", "a dog running"], ["ball", "a rolling ball"]]}',
        ("dog", "ball"), "Dogs run."),
    "other key names": (
        '{"motion_specific_prompt": "Dogs run.", "local_prompts": [{"object": "dog", "description": "a dog"}]}',
        ("dog",), "Dogs run."),
    "the same JSON fenced and repeated": (
        '```json\n{"motion_prompt": "Dogs run.", "objects": []}\n```\nAgain: {"motion_prompt": "Dogs run.", '
        '"objects": []}',
        (), "Dogs run."),
    "the paper's format": (
        'Motion-specific prompt: "Two dogs chase a ball on the beach."\n'
        "Answer: [[Object 1: a brown dog running after the ball] [Object 2: a white dog jumping]]",
        ("object 1", "object 2"), "Two dogs chase a ball on the beach."),
    "the paper's format in markdown bold": (
        '**Motion-specific prompt:** "Dogs run."\n**Answer:** [[dog: a dog running] [ball: a red ball]]',
        ("dog", "ball"), "Dogs run."),
    "the paper's list over several lines": (
        "Motion-specific prompt: Dogs run.\nAnswer: [[left dog: a dog running]\n[right dog: a dog jumping]]",
        ("left dog", "right dog"), "Dogs run."),
    "line format with numbers": (
        "Motion: Two dogs chase a ball.\nObjects:\n1. left dog: a dog running\n2. right dog: a dog jumping",
        ("left dog", "right dog"), "Two dogs chase a ball."),
    "unicode names": (
        '{"motion_prompt": "Die Hunde rennen.", "objects": [{"name": "Hund links", "prompt": "ein Hund rennt"}, '
        '{"name": "犬", "prompt": "走る犬"}, {"name": "chien noir 🐕", "prompt": "un chien saute"}, '
        '{"name": "Öl-Kanne", "prompt": "eine rollende Kanne"}]}',
        ("Hund links", "犬", "chien noir 🐕", "Öl-Kanne"), "Die Hunde rennen."),
    "zero objects": (
        '{"motion_prompt": "Waves roll onto the beach.", "objects": []}', (), "Waves roll onto the beach."),
    "paper format, zero objects": ('Motion-specific prompt: "Waves roll."\nAnswer: []', (), "Waves roll."),
    "eight objects (the most)": (
        '{"motion_prompt": "Birds fly.", "objects": ['
        + ", ".join(f'{{"name": "bird {i}", "prompt": "a bird flying"}}' for i in range(1, 9)) + "]}",
        tuple(f"bird {i}" for i in range(1, 9)), "Birds fly."),
}


@pytest.mark.parametrize("answer, names, motion", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_realistic_answers_parse(answer: str, names: tuple[str, ...], motion: str) -> None:
    prompts = parse_llm_answer(answer, CAPTION)
    assert prompts.names == names
    assert prompts.motion_prompt == motion
    assert prompts.global_prompt == CAPTION
    assert all(o.local_prompt for o in prompts.objects)


REJECTED = {
    "refusal": ("I'm sorry, but I can't help with that request.",
                "no motion prompt or object list found in \"I'm sorry, but I can't help with that request.\""),
    "missing closing bracket": ("Motion-specific prompt: Dogs run.\nAnswer: [[dog: a dog] [ball: a ball]",
                                "unbalanced brackets in the answer line"),
    "missing opening bracket": ("Motion-specific prompt: Dogs run.\nAnswer: dog: a dog] [ball: a ball]]",
                                "unbalanced brackets in the answer line"),
    "cut-off JSON": ('{"motion_prompt": "Dogs run.", "objects": [{"name": "dog", "prompt": "a dog runn',
                     "the JSON answer is cut off or malformed (Unterminated string"),
    "cut-off JSON after an object": ('{"motion_prompt": "Dogs run.", "objects": [{"name": "dog", "prompt": "a"}',
                                     "the JSON answer is cut off or malformed"),
    "twelve objects": ('{"motion_prompt": "Birds fly.", "objects": ['
                       + ", ".join(f'{{"name": "bird {i}", "prompt": "a bird"}}' for i in range(12)) + "]}",
                       "12 objects were given"),
    "duplicate names": ('{"motion_prompt": "Dogs run.", "objects": [{"name": "dog", "prompt": "a"}, '
                        '{"name": "Dog", "prompt": "b"}]}', "the name 'Dog' is used twice"),
    "duplicate names, paper format": ("Motion-specific prompt: Dogs run.\nAnswer: [[dog: a] [dog: b]]",
                                      "the name 'dog' is used twice"),
    "colon in a name": ('{"motion_prompt": "Dogs run.", "objects": [{"name": "dog: brown", "prompt": "a dog"}]}',
                        "contains a colon"),
    "empty prompt": ('{"motion_prompt": "Dogs run.", "objects": [{"name": "dog", "prompt": " "}]}',
                     "object 'dog' has an empty local prompt"),
    "no motion prompt": ('{"objects": [{"name": "dog", "prompt": "a dog"}]}', "the motion prompt is missing"),
    "two different answers": ('First try: {"motion_prompt": "Dogs run.", "objects": []}\nBetter: '
                              '{"motion_prompt": "Dogs play.", "objects": []}', "holds 2 different decompositions"),
    "motion prompt not text": ('{"motion_prompt": ["run"], "objects": []}', "the motion prompt is not text"),
    "objects not a list": ('{"motion_prompt": "m", "objects": "dog"}', "'objects' is not a list"),
    "paper item without colon": ("Motion-specific prompt: m\nAnswer: [[a dog running]]", "has no 'name: prompt' colon"),
    "whitespace only": ("  \n ", "the answer is empty"),
}


@pytest.mark.parametrize("answer, message", REJECTED.values(), ids=REJECTED.keys())
def test_malformed_answers_are_rejected_clearly(answer: str, message: str) -> None:
    with pytest.raises(TTMInputError) as err:
        parse_llm_answer(answer, CAPTION)
    assert err.value.input_name == "llm_answer"
    assert message in str(err.value)
    assert err.value.fix
