"""LLM prompt decomposition: templates, the constrained-JSON grammar, the local transformers backend
(a tiny random model from models/LLM) and the HTTP backend against a real loopback server that
speaks the OpenAI chat-completions protocol."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fake_openai import FakeOpenAI, Reply, chat_completion
from tiny_models import TinyModels
from ttm_core.errors import TTMInputError
from ttm_core.prompts.llm import FEW_SHOT, HttpLLM, JsonAnswerGrammar, build_messages, decompose, load_local_llm
from ttm_core.prompts.parse import parse_llm_answer
from ttm_core.types import MAX_OBJECTS

CAPTION = "The left coin slides to the right while the big coin glides down to the left."
GOOD_ANSWER = json.dumps({"motion_prompt": "Two coins slide across the table.", "objects": [
    {"name": "left coin", "prompt": "a small silver coin sliding to the right"},
    {"name": "big coin", "prompt": "a large silver coin gliding down and to the left"}]})


# --------------------------------------------------------------------------- templates

def test_messages_follow_the_papers_structure() -> None:
    messages = build_messages(CAPTION)
    assert messages[0]["role"] == "system"
    assert "no other text" in messages[0]["content"] and "left dog" in messages[0]["content"]
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * len(FEW_SHOT)
    assert len(FEW_SHOT) == 6
    assert messages[-1] == {"role": "user", "content": f"Caption: {CAPTION}"}


@pytest.mark.parametrize("caption, answer", FEW_SHOT, ids=[c[:20] for c, _ in FEW_SHOT])
def test_every_worked_example_is_a_valid_answer(caption: str, answer: dict) -> None:
    prompts = parse_llm_answer(json.dumps(answer), caption)
    motion = prompts.motion_prompt.lower()
    assert not any(colour in motion for colour in ("red", "brown", "white", "grey", "silver", "golden"))
    assert len(prompts.objects) <= MAX_OBJECTS


# --------------------------------------------------------------------------- the grammar

@pytest.fixture(scope="module")
def llm(tiny_models: TinyModels):
    return load_local_llm(tiny_models.llm)


def walk(grammar: JsonAnswerGrammar, choose, budget: int) -> list[int]:
    tokens: list[int] = []
    for step in range(budget):
        if budget - step <= 64:
            grammar.wrap_up()
        allowed = grammar.allowed().nonzero().flatten().tolist()
        assert allowed, f"no token allowed after {grammar.v.texts and ''.join(grammar.v.texts[t] for t in tokens)!r}"
        token = choose(allowed, tokens)
        if grammar.done:
            break
        tokens.append(token)
        grammar.advance(token)
    return tokens


def test_grammar_spells_a_valid_answer_exactly(llm) -> None:
    grammar = JsonAnswerGrammar(llm.vocabulary())
    texts = grammar.v.texts

    def follow(allowed: list[int], tokens: list[int]) -> int:
        rest = GOOD_ANSWER[len("".join(texts[t] for t in tokens)):]
        fitting = [t for t in allowed if rest.startswith(texts[t])]
        return max(fitting, key=lambda t: len(texts[t])) if fitting else allowed[0]

    tokens = walk(grammar, follow, 400)
    assert grammar.done and llm.tokenizer.decode(tokens) == GOOD_ANSWER


def test_any_path_through_the_grammar_parses(llm) -> None:
    """Random walks (the worst a model can do) always end in an answer the strict parser accepts."""
    rng = random.Random(0)
    counts = set()
    for budget in (96, 160, 400):
        for _ in range(5):
            grammar = JsonAnswerGrammar(llm.vocabulary())
            tokens = walk(grammar, lambda allowed, _tokens: rng.choice(allowed), budget)
            assert grammar.done, "the answer did not close within the token budget"
            text = llm.tokenizer.decode(tokens)
            try:
                prompts = parse_llm_answer(text, "caption")
            except TTMInputError as err:  # random names may repeat: the one thing the parser still rejects
                assert "is used twice" in str(err), text
                continue
            assert 1 <= len(prompts.objects) <= MAX_OBJECTS
            assert all(":" not in name for name in prompts.names)
            counts.add(len(prompts.objects))
    assert len(counts) > 1  # the walks really chose between another object and the end


# --------------------------------------------------------------------------- local backend

def test_local_model_loads_with_its_chat_template(llm, tiny_models: TinyModels) -> None:
    assert llm.name == "ttm-tiny-llm" and llm.constrained and not llm.model.training
    rendered = llm.render(build_messages(CAPTION))
    assert rendered.startswith("<|system|>\nYou prepare captions")
    assert rendered.endswith(f"<|user|>\nCaption: {CAPTION}<|end|>\n<|assistant|>\n")
    assert rendered.count("<|assistant|>") == len(FEW_SHOT) + 1


def test_local_answers_are_repeatable_by_seed(llm) -> None:
    messages = build_messages(CAPTION)

    def ask(seed: int, temperature: float) -> str:
        return llm.complete(messages, seed=seed, temperature=temperature, max_new_tokens=72)

    greedy = ask(0, 0.0)
    assert greedy == ask(5, 0.0)  # greedy ignores the seed
    sampled = ask(1, 1.0)
    assert sampled == ask(1, 1.0) and sampled != ask(2, 1.0)
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    ask(3, 1.0)
    assert torch.rand(1) == expected  # sampling used its own generator, not the global RNG


def test_constrained_local_answer_always_parses(llm) -> None:
    seen: list[tuple[int, int]] = []
    result = decompose(llm, CAPTION, seed=0, temperature=1.0, max_new_tokens=128,
                       progress=lambda done, total: seen.append((done, total)))
    assert result.attempts == 1 and 1 <= len(result.prompts.objects) <= MAX_OBJECTS
    assert result.prompts.global_prompt == CAPTION
    assert json.loads(result.answer)["motion_prompt"] == result.prompts.motion_prompt
    assert seen and seen[-1][1] == 128 and [d for d, _ in seen] == list(range(1, len(seen) + 1))


def test_unconstrained_garbage_ends_in_an_error_quoting_it(tiny_models: TinyModels, caplog) -> None:
    free = load_local_llm(tiny_models.llm, constrained=False)
    with pytest.raises(TTMInputError) as err:
        decompose(free, CAPTION, max_new_tokens=48, attempts=2)
    message = str(err.value)
    warnings = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 2 and warnings[1].startswith("LLM answer 2 of 2 unusable: no motion prompt")
    last_problem = warnings[1].split("unusable: ", 1)[1]
    assert message == (f"llm: no usable answer in 2 attempt(s): {last_problem}. Fix: use a larger instruction-tuned "
                       "model, raise max_new_tokens, turn constrained decoding on (local) or json_schema on (HTTP), "
                       "or paste a corrected answer with the llm_answer backend")


def test_local_model_errors(tmp_path: Path, tiny_models: TinyModels) -> None:
    with pytest.raises(TTMInputError, match="is not a transformers model folder"):
        load_local_llm(tmp_path)
    import shutil

    copy = tmp_path / "no-template"
    shutil.copytree(tiny_models.llm, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in copy.glob("chat_template.*"):
        extra.unlink()
    with pytest.raises(TTMInputError, match="no-template has no chat template"):
        load_local_llm(copy)


# --------------------------------------------------------------------------- HTTP backend

@pytest.fixture()
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI.running() as fake:
        yield fake


def test_http_backend_decomposes_with_a_realistic_answer(fake_openai: FakeOpenAI, monkeypatch) -> None:
    monkeypatch.setenv("TTM_TEST_KEY", "sk-secret")
    fake_openai.replies = [Reply(body=chat_completion(f"Here you go:\n```json\n{GOOD_ANSWER}\n```"))]
    llm = HttpLLM(fake_openai.url, "llama3.1:8b", api_key_env="TTM_TEST_KEY", timeout=10, retries=0)
    result = decompose(llm, CAPTION, seed=7, temperature=0.3, max_new_tokens=300)
    assert result.prompts.names == ("left coin", "big coin") and result.attempts == 1
    (request,) = fake_openai.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-secret"
    body = request["body"]
    assert body["model"] == "llama3.1:8b" and body["seed"] == 7 and body["temperature"] == 0.3
    assert body["max_tokens"] == 300 and body["stream"] is False and "response_format" not in body
    assert body["messages"] == build_messages(CAPTION)
    assert "sk-secret" not in json.dumps(body)


def test_http_structured_output_and_no_key(fake_openai: FakeOpenAI) -> None:
    fake_openai.replies = [Reply(body=chat_completion(GOOD_ANSWER))]
    llm = HttpLLM(fake_openai.url + "/", "m", json_schema=True)
    decompose(llm, CAPTION)
    request = fake_openai.requests[0]
    assert "Authorization" not in request["headers"]
    schema = request["body"]["response_format"]
    assert schema["type"] == "json_schema"
    assert schema["json_schema"]["schema"]["required"] == ["motion_prompt", "objects"]


def test_http_retries_server_errors_then_succeeds(fake_openai: FakeOpenAI) -> None:
    fake_openai.replies = [Reply(500, '{"error": "overloaded"}'), Reply(503, "busy"),
                           Reply(body=chat_completion(GOOD_ANSWER))]
    result = decompose(HttpLLM(fake_openai.url, "m", retries=2, timeout=10), CAPTION)
    assert result.prompts.names == ("left coin", "big coin") and len(fake_openai.requests) == 3


def test_http_gives_up_after_bounded_retries_quoting_the_server(fake_openai: FakeOpenAI) -> None:
    fake_openai.replies = [Reply(500, '{"error": "model crashed"}')] * 3
    with pytest.raises(TTMInputError, match=r"base_url: .*/v1/chat/completions failed 2 time\(s\); last: HTTP 500: "
                                            r"'\{\"error\": \"model crashed\"\}'"):
        decompose(HttpLLM(fake_openai.url, "m", retries=1, timeout=10), CAPTION)
    assert len(fake_openai.requests) == 2


def test_http_timeout(fake_openai: FakeOpenAI) -> None:
    fake_openai.replies = [Reply(body=chat_completion(GOOD_ANSWER), delay=3.0)]
    started = time.monotonic()
    with pytest.raises(TTMInputError, match=r"failed 1 time\(s\); last: no answer within 1 s"):
        decompose(HttpLLM(fake_openai.url, "m", retries=0, timeout=1), CAPTION)
    assert time.monotonic() - started < 3.0


def test_http_malformed_json_is_quoted(fake_openai: FakeOpenAI) -> None:
    fake_openai.replies = [Reply(body="<html>Bad gateway</html>")]
    with pytest.raises(TTMInputError, match=r"did not answer with JSON: '<html>Bad gateway</html>'"):
        decompose(HttpLLM(fake_openai.url, "m", retries=0), CAPTION)
    fake_openai.replies = [Reply(body='{"choices": []}')]
    with pytest.raises(TTMInputError, match=r"without choices\[0\].message.content: '\{\"choices\": \[\]\}'"):
        decompose(HttpLLM(fake_openai.url, "m", retries=0), CAPTION)


def test_http_client_errors_name_the_input_to_fix(fake_openai: FakeOpenAI, monkeypatch) -> None:
    monkeypatch.setenv("TTM_TEST_KEY", "wrong")
    fake_openai.replies = [Reply(401, '{"error": "invalid api key"}')]
    with pytest.raises(TTMInputError, match=r"api_key_env: .* refused the request \(HTTP 401\)"):
        decompose(HttpLLM(fake_openai.url, "m", api_key_env="TTM_TEST_KEY"), CAPTION)
    fake_openai.replies = [Reply(404, '{"error": "model \\"m\\" not found"}')]
    with pytest.raises(TTMInputError, match=r"base_url: .* answered HTTP 404"):
        decompose(HttpLLM(fake_openai.url, "m"), CAPTION)
    assert len(fake_openai.requests) == 2  # client errors are not retried


def test_http_unreachable_and_configuration_errors(monkeypatch) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TTMInputError, match=r"failed 2 time\(s\); last: cannot connect .*Fix: check that the server"):
        decompose(HttpLLM(f"http://127.0.0.1:{port}/v1", "m", retries=1, timeout=5), CAPTION)
    monkeypatch.delenv("TTM_UNSET_KEY", raising=False)
    with pytest.raises(TTMInputError, match="api_key_env: the environment variable TTM_UNSET_KEY is not set"):
        decompose(HttpLLM(f"http://127.0.0.1:{port}/v1", "m", api_key_env="TTM_UNSET_KEY"), CAPTION)
    with pytest.raises(TTMInputError, match="api_key_env: this takes the NAME of an environment variable"):
        HttpLLM("http://x/v1", "m", api_key_env="sk-abc123-def")
    with pytest.raises(TTMInputError, match="base_url: 'localhost:11434' is not an http"):
        HttpLLM("localhost:11434", "m")


def test_malformed_answers_are_retried_with_the_problem(fake_openai: FakeOpenAI) -> None:
    fake_openai.replies = [Reply(body=chat_completion("Sure! The motion is that the coins slide.")),
                           Reply(body=chat_completion(GOOD_ANSWER))]
    result = decompose(HttpLLM(fake_openai.url, "m"), CAPTION, seed=3)
    assert result.attempts == 2 and result.answer == GOOD_ANSWER
    second = fake_openai.requests[1]["body"]
    assert second["seed"] == 4  # retry k uses seed + k
    assert second["messages"][-2] == {"role": "assistant", "content": "Sure! The motion is that the coins slide."}
    assert "no motion prompt or object list found" in second["messages"][-1]["content"]
    fake_openai.replies = [Reply(body=chat_completion('{"motion_prompt": "m", "objects": [{"name": "a: b"}]}'))] * 2
    with pytest.raises(TTMInputError, match=r"llm: no usable answer in 2 attempt\(s\): object 1 lacks a text 'name' or "
                                            r"'prompt' in '\{\"motion_prompt\""):
        decompose(HttpLLM(fake_openai.url, "m"), CAPTION, attempts=2)
