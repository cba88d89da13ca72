"""The official `openai` client against the real server with the real bundled models."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from prom import scrape

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(real_server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=real_server + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_both_bundled_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m"]


def test_greedy_chat_knows_paris(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="qwen2.5-coder-0.5b-instruct", messages=QUESTION, temperature=0, max_tokens=30
    )
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 30
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_same_seed_same_sample(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.chat.completions.create(
            model="qwen2.5-coder-0.5b-instruct",
            messages=[{"role": "user", "content": "Write a one-line poem about the sea."}],
            temperature=1.0,
            max_tokens=24,
            seed=seed,
        )
        return r.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(s) != first for s in (1, 2, 3))  # the seed really steers the sampler


def test_streaming_chat_matches_non_streaming(client: openai.OpenAI) -> None:
    kwargs = dict(model="qwen2.5-coder-0.5b-instruct", messages=QUESTION, temperature=0, max_tokens=30)
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_completion_and_stream_with_base_model(client: openai.OpenAI) -> None:
    kwargs = dict(
        model="gemma-3-270m",
        prompt="The Eiffel Tower is located in the city of",
        temperature=0,
        max_tokens=12,
    )
    r = client.completions.create(**kwargs)
    assert "Paris" in r.choices[0].text
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(**kwargs, stream=True) if c.choices
    )
    assert streamed == r.choices[0].text


def test_chat_with_base_model_uses_plain_transcript(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gemma-3-270m", messages=QUESTION, temperature=0, max_tokens=40)
    text = r.choices[0].message.content
    assert "Paris" in text
    for token in ("<start_of_turn>", "<end_of_turn>", "User:"):
        assert token not in text


def test_stop_sequence_cuts_before_it(client: openai.OpenAI) -> None:
    base = dict(model="qwen2.5-coder-0.5b-instruct", messages=QUESTION, temperature=0, max_tokens=30)
    full = client.chat.completions.create(**base).choices[0].message.content
    assert "Paris" in full
    r = client.chat.completions.create(**base, stop=["Paris"])
    assert r.choices[0].message.content == full[: full.index("Paris")]
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**base, stop=["Paris"], stream=True)
        if c.choices
    )
    assert streamed == r.choices[0].message.content


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model="gemma-3-270m", prompt="Once upon a time", max_tokens=5, temperature=0
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_errors_surface_as_client_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert nf.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gemma-3-270m", messages=QUESTION, temperature=7)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="gemma-3-270m", messages=[])
    assert empty.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as lp:
        client.completions.create(model="gemma-3-270m", prompt="x", logprobs=6)  # OpenAI's bound is 5
    assert lp.value.body["param"] == "logprobs"


def test_overlong_prompt_is_a_400_that_says_what_to_fix(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="gemma-3-270m", prompt="word " * 5000, max_tokens=4)
    assert exc.value.body["code"] == "context_length_exceeded"
    assert "maximum context length" in exc.value.body["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"messages": [', None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"messages": [{"role": "robot", "content": "hi"}]}', "messages.0.role"),
        (b'{"messages": [{"role": "user"}]}', "messages.0.content"),
        (
            b'{"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": null}]}',
            "messages.1",
        ),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', "n"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["a","b","c","d","e"]}', "stop"),
    ],
)
def test_malformed_requests_get_openai_style_400(real_server: str, body: bytes, param: str | None) -> None:
    r = httpx.post(
        real_server + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param


def test_null_options_mean_defaults(real_server: str) -> None:
    nulls = dict.fromkeys(("temperature", "top_p", "top_k", "stream", "n", "seed", "stop"))
    body = {"model": "gemma-3-270m", "prompt": "The sky is", "max_tokens": 3, **nulls}
    r = httpx.post(real_server + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_metrics_count_tokens_and_requests(real_server: str, client: openai.OpenAI) -> None:
    before = scrape(real_server)
    r = client.completions.create(model="gemma-3-270m", prompt="Hello", max_tokens=7, temperature=0)
    after = scrape(real_server)
    label = '{model_name="gemma-3-270m"}'
    assert (
        after[f"edgeinfer:generation_tokens_total{label}"]
        - before.get(f"edgeinfer:generation_tokens_total{label}", 0)
        == r.usage.completion_tokens
    )
    assert (
        after[f"edgeinfer:prompt_tokens_total{label}"]
        - before.get(f"edgeinfer:prompt_tokens_total{label}", 0)
        == r.usage.prompt_tokens
    )
    assert after[f"edgeinfer:time_to_first_token_seconds_count{label}"] >= 1
    assert after['edgeinfer:num_requests_running{model_name="gemma-3-270m"}'] == 0
    assert any(k.startswith("edgeinfer:http_requests_total") and 'code="200"' in k for k in after)


def test_sse_wire_format(real_server: str) -> None:
    body = {"model": "gemma-3-270m", "prompt": "1, 2, 3,", "max_tokens": 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", real_server + "/v1/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] == "length" and "usage" not in last  # usage only if asked
    body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", real_server + "/v1/completions", json=body, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
