"""ID files and ID checks: the format, what a check accepts and refuses, the bundled IDs' promises, and the
generator itself on the real model against a real substitute."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from edgeinfer.inspect.ids import (
    FORMAT_VERSION,
    Answer,
    IdFileError,
    IdSet,
    check_answer,
    generate_ids,
    greedy_trace,
    logprob_gap,
    served_tolerances,
)
from edgeinfer.inspect.inspector import (
    UNCALIBRATED_FLOOR,
    Inspector,
    InspectorConfig,
    first_k,
    parse_answer,
)
from edgeinfer.inspect.prompts import prompt_pool


def test_the_pool_is_large_varied_and_fixed() -> None:
    pool = prompt_pool()
    assert len(pool) >= 200 and len(set(pool)) == len(pool)
    assert pool == prompt_pool()  # a file can be regenerated from the same order
    assert all(p.strip() and len(p) < 120 for p in pool)  # ordinary, short user requests


def test_bundled_ids_are_stable_and_caught_by_every_substitute(ids: IdSet) -> None:
    assert ids.version == FORMAT_VERSION and ids.model == "qwen2.5-coder-0.5b-instruct"
    assert len(ids.ids) >= 8
    assert set(ids.substitutes) >= {"quant:Q8_0", "quant:Q2_K", "exit:18", "model:gemma"}
    assert set(ids.required) == {"quant:Q2_K", "exit:18", "model:gemma"}  # Q8_0 optional (docs/inspect.md)
    for i in ids.ids:
        assert i.min_margin >= ids.min_margin, i.prompt
        assert set(ids.required) <= set(i.caught_by) <= set(ids.substitutes), i.prompt
        assert i.tolerance >= 0.03
        assert i.temperature == 0.0 and len(i.tokens) <= i.max_tokens
        assert "".join(t.token for t in i.tokens) == i.text
        assert i.prompt in prompt_pool()  # looks like the rest of the traffic


def test_a_file_round_trips_and_bad_files_are_refused(ids: IdSet, tmp_path) -> None:
    path = ids.save(tmp_path / "ids.json")
    assert IdSet.load(path) == ids
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc | {"version": 99}))
    with pytest.raises(IdFileError, match="version"):
        IdSet.load(path)
    path.write_text(json.dumps(doc | {"ids": [{"prompt": "x"}]}))
    with pytest.raises(IdFileError, match="malformed"):
        IdSet.load(path)
    path.write_text("{not json")
    with pytest.raises(IdFileError, match="cannot read"):
        IdSet.load(path)


def test_check_answer_text_then_logprobs_within_tolerance(ids: IdSet) -> None:
    want = ids.ids[0]
    tokens = tuple((bytes(t.bytes), t.logprob) for t in want.tokens)
    assert check_answer(want, Answer(want.text)).passed  # tokens-only service
    assert check_answer(want, Answer(want.text, "length", tokens)).passed
    assert not check_answer(want, Answer(want.text + "x")).passed
    assert not check_answer(want, Answer(want.text[:-1])).passed
    nudged = (tokens[0][0], tokens[0][1] - 2 * want.tolerance), *tokens[1:]
    bad = check_answer(want, Answer(want.text, "length", nudged))
    assert not bad.passed and bad.max_logprob_gap == pytest.approx(2 * want.tolerance, abs=1e-6)
    close = (tokens[0][0], tokens[0][1] - want.tolerance / 2), *tokens[1:]
    assert check_answer(want, Answer(want.text, "length", close)).passed
    swapped = (tokens[1], tokens[0], *tokens[2:])
    assert not check_answer(want, Answer(want.text, "length", swapped)).passed


def test_served_tolerances_cover_the_measured_spread_and_drop_the_floor(ids: IdSet, tmp_path) -> None:
    # the floor applies to files calibrated in-process only; a served calibration replaces it per ID
    raw = replace(ids, served_calibration=())
    assert Inspector(raw).min_tolerance == UNCALIBRATED_FLOOR
    spread = {n: (0.3 if n == 0 else 0.001) for n in range(len(ids.ids))}
    cal = served_tolerances(raw, spread, ["llamacpp-batched", "shard"])
    assert cal.served_calibration == ("llamacpp-batched", "shard")
    assert cal.ids[0].tolerance == pytest.approx(0.6)
    assert [i.tolerance for i in cal.ids[1:]] == [i.tolerance for i in raw.ids[1:]]  # never lowered
    assert IdSet.load(cal.save(tmp_path / "cal.json")) == cal
    inspector = Inspector(cal)
    assert inspector.min_tolerance == 0.0
    assert Inspector(cal, InspectorConfig(min_tolerance=0.5)).min_tolerance == 0.5
    inspector.close()
    want = cal.ids[1]
    off = tuple((bytes(t.bytes), t.logprob + 0.1) for t in want.tokens)  # within 0.2, beyond the ID's own
    assert not check_answer(want, Answer(want.text, "length", off), inspector.min_tolerance).passed
    with pytest.raises(ValueError, match="no served spread"):
        served_tolerances(raw, {0: 0.1}, ["shard"])


def test_parse_answer_reads_chat_bodies_and_streams(ids: IdSet) -> None:
    want = ids.ids[0]
    content = [
        {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes), "top_logprobs": []}
        for t in want.tokens
    ]
    body = {
        "choices": [
            {"message": {"content": want.text}, "finish_reason": "length", "logprobs": {"content": content}}
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": len(content), "total_tokens": 30 + len(content)},
    }
    answer, usage = parse_answer(json.dumps(body).encode(), streamed=False)
    assert check_answer(want, answer).passed and usage == {
        "prompt_tokens": 30,
        "completion_tokens": len(content),
    }
    events = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]}]
    events += [
        {"choices": [{"delta": {"content": c["token"]}, "logprobs": {"content": [c]}}]} for c in content
    ]
    events += [{"choices": [{"delta": {}, "finish_reason": "length"}]}]
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    answer, usage = parse_answer(sse.encode(), streamed=True)
    assert check_answer(want, answer).passed and usage == {}
    longer = Answer(want.text + " and more", "length", answer.tokens + ((b" more", -0.5),))
    assert check_answer(want, first_k(longer, want)).passed  # an ID mirroring a larger max_tokens


@pytest.mark.slow
def test_generate_keeps_only_stable_prompts_a_substitute_answers_differently(qwen_path) -> None:
    from edgeinfer.engine.load import LoadOptions, open_backend
    from edgeinfer.inspect.substitutes import Substitute, open_substitute

    reference = open_backend(
        str(qwen_path), LoadOptions(n_ctx=512, threads=2), name="qwen2.5-coder-0.5b-instruct"
    )
    q2k = open_substitute(Substitute.parse("quant:Q2_K"), "qwen", threads=2, n_ctx=512)
    try:
        pool = [
            "What is the capital of France?",
            "Write a haiku about autumn leaves.",
            "What is 12 times 12?",
        ]
        idset = generate_ids(reference, {"quant:Q2_K": q2k}, pool, n=3, k=4, min_margin=1.0)
        assert idset.model == "qwen2.5-coder-0.5b-instruct" and idset.substitutes == ("quant:Q2_K",)
        for i in idset.ids:
            assert i.min_margin >= 1.0 and i.caught_by["quant:Q2_K"] in ("text", "logprobs")
            again = greedy_trace(reference, i.prompt, 4)
            assert again is not None and again.text == i.text  # deterministic
        rejected = set(pool) - {i.prompt for i in idset.ids}
        for prompt in rejected:  # each was unstable or not told apart, as the generator claims
            ref, sub = greedy_trace(reference, prompt, 4), greedy_trace(q2k, prompt, 4)
            unstable = min(t.margin for t in ref.tokens) < 1.0
            same = ref.text == sub.text and logprob_gap(ref.tokens, sub.tokens) <= 0.2
            assert unstable or same, prompt
        strict = generate_ids(reference, {"quant:Q2_K": q2k}, pool, n=3, k=4, min_margin=50.0)
        assert strict.ids == ()  # no step is ever that certain
    finally:
        reference.close()
        q2k.close()
