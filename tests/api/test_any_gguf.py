"""`--model PATH` serves any GGUF, on either backend: a tiny random model keeps these tests fast."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from edgeinfer.models.synthetic import write_tiny_gguf
from edgeinfer.process import ServerProcess


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf", arch="llama", n_layers=2)


@pytest.fixture(scope="module", params=["llamacpp", "shard"])
def tiny_client(request: pytest.FixtureRequest, tiny_gguf: Path) -> Iterator[openai.OpenAI]:
    args = ["--model", str(tiny_gguf), "--backend", request.param, "-t", "1", "--ctx-size", "256"]
    with ServerProcess(args) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_served_under_its_file_name(tiny_client: openai.OpenAI) -> None:
    assert [m.id for m in tiny_client.models.list().data] == ["tiny-llama"]


def test_completion_stream_and_usage_agree(tiny_client: openai.OpenAI) -> None:
    kwargs = dict(model="tiny-llama", prompt="hello world", max_tokens=12, temperature=0)
    whole = tiny_client.completions.create(**kwargs)
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens >= 2
    chunks = list(tiny_client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_context_overflow_is_rejected(tiny_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length is 256"):
        tiny_client.completions.create(model="tiny-llama", prompt="hello " * 400, max_tokens=2)
