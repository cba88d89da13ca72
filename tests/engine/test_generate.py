"""The shared generation loop: stop strings, UTF-8 reassembly and budgets, on the real llama.cpp backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import (
    ContextLengthExceeded,
    Delta,
    GenerationResult,
    _StopMatcher,
    complete,
    stream,
)


def test_stop_matcher_holds_back_possible_prefix() -> None:
    m = _StopMatcher(["END"])
    assert m.feed("abc E") == ("abc ", False)
    assert m.feed("N") == ("", False)
    assert m.feed("X") == ("ENX", False)
    assert m.feed(" E") == (" ", False)
    assert m.feed("ND tail") == ("", True)


def test_stop_matcher_earliest_of_several_stops_wins() -> None:
    m = _StopMatcher(["world", "lo"])
    assert m.feed("hello world") == ("hel", True)


def test_stop_matcher_flush_releases_held_text() -> None:
    m = _StopMatcher(["\nUser:"])
    assert m.feed("answer\nUs") == ("answer", False)
    assert m.flush() == "\nUs"


@pytest.fixture(scope="module")
def gemma(gemma_path: Path):
    from edgeinfer.engine.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(gemma_path, n_ctx=256, threads=2)
    yield backend
    backend.close()


@pytest.mark.slow
def test_deltas_concatenate_to_result_text_and_count_tokens(gemma) -> None:
    prompt = gemma.tokenize("Les élèves ont mangé des crêpes à")
    items = list(stream(gemma, prompt, SamplingParams(temperature=0, max_tokens=24)))
    *deltas, result = items
    assert isinstance(result, GenerationResult) and all(isinstance(d, Delta) for d in deltas)
    assert "".join(d.text for d in deltas) == result.text
    assert sum(d.n_tokens for d in deltas) == result.completion_tokens == 24
    assert "\ufffd" not in result.text  # multi-byte characters were reassembled
    assert len(result.token_times) == result.completion_tokens - 1 and result.ttft > 0


@pytest.mark.slow
def test_stop_string_spanning_tokens(gemma) -> None:
    prompt = gemma.tokenize("1, 2, 3, 4, 5,")
    full = complete(gemma, prompt, SamplingParams(temperature=0, max_tokens=20)).text
    assert " 8," in full
    cut = complete(gemma, prompt, SamplingParams(temperature=0, max_tokens=20, stop=(" 8,",)))
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(" 8,")]


@pytest.mark.slow
def test_context_limit(gemma) -> None:
    with pytest.raises(ContextLengthExceeded):
        complete(gemma, list(range(10, 300)), SamplingParams(max_tokens=4))
    near_end = gemma.tokenize("word " * 600)[: gemma.info.n_ctx - 3]
    result = complete(gemma, near_end, SamplingParams(temperature=0, max_tokens=50))
    assert len(near_end) == 253
    assert result.completion_tokens <= 3 and result.finish_reason in ("length", "stop")
