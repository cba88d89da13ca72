"""The evaluation set, its checkers and templates; then a handful of items on the real Gemma model."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.bench.accuracy import (
    BackendAnswerer,
    chat_messages,
    check,
    completion_prompt,
    evaluate,
    load_eval_set,
    passes,
)


@pytest.fixture(scope="module")
def es():
    return load_eval_set()


def test_eval_set_size_and_balance(es) -> None:
    assert 40 <= len(es.items) <= 60
    cats = {i.category for i in es.items}
    assert cats == {"arithmetic", "facts", "instructions"}
    assert set(es.templates) == {"zero-shot", "few-shot", "system"}
    shot_questions = {q for q, _ in es.shots}
    assert not shot_questions & {i.question for i in es.items}  # no item is also a worked example


@pytest.mark.parametrize(
    ("spec", "good", "bad"),
    [
        ({"type": "number", "value": 42}, "17 + 25 = 42.", "The answer is 41."),
        ({"type": "number", "value": 1024}, "2^10 = 1,024", "10"),
        ({"type": "contains", "values": ["Paris"]}, "The capital is paris.", "Lyon"),
        ({"type": "contains", "values": ["7", "seven"]}, "There are seven.", "There are 17."),
        ({"type": "exact", "value": "YES", "case": True}, '"YES"', "Yes"),
        ({"type": "exact", "value": "tac"}, "Tac.", "tac tac"),
        ({"type": "regex", "pattern": r"\bAu\b"}, "Au", "Ag (gold?)"),
        ({"type": "upper"}, "APPLE", "Apple"),
        ({"type": "lower"}, "earth", "Earth"),
        ({"type": "words", "max": 5}, "Bees make honey.", "Bees make honey from the nectar of flowers."),
        ({"type": "lines", "n": 3}, "apple\nbanana\n\ncherry", "apple, banana, cherry"),
        ({"type": "starts", "value": "Today"}, "Today is sunny.", "It is sunny today."),
        ({"type": "ends", "value": "home."}, "I went home.", "Home I went."),
        (
            {"type": "json_keys", "keys": ["name", "age"]},
            '```json\n{"name": "Ann", "age": 30}\n```',
            '{"name": 1}',
        ),
    ],
)
def test_checkers_accept_good_and_reject_bad_answers(spec, good: str, bad: str) -> None:
    assert check(good, spec)
    assert not check(bad, spec)


def test_every_item_has_a_passing_and_a_failing_answer_in_principle(es) -> None:
    # an empty answer passes no item: every checker can fail
    assert not any(passes(item, "") for item in es.items)


def test_templates_shape_the_prompt(es) -> None:
    item = es.items[0]
    zero = chat_messages(item, es.templates["zero-shot"], es.shots)
    few = chat_messages(item, es.templates["few-shot"], es.shots)
    sys_ = chat_messages(item, es.templates["system"], es.shots)
    assert [m["role"] for m in zero] == ["user"] and zero[0]["content"].startswith(item.question)
    assert len(few) == 2 * len(es.shots) + 1 and few[1] == {"role": "assistant", "content": es.shots[0][1]}
    assert sys_[0]["role"] == "system" and sys_[-1]["content"] == item.question
    text = completion_prompt(item, es.templates["few-shot"], es.shots)
    assert (
        text.endswith(f"Question: {item.question}\nAnswer:") and text.count("Question:") == len(es.shots) + 1
    )


class _Oracle:
    """An answerer that knows the right answer to the first k items (to check the bookkeeping)."""

    chat = True

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def answer(self, messages, prompt):  # type: ignore[no-untyped-def]
        return self.answers.get(messages[-1]["content"].removesuffix("\nAnswer briefly."), "no idea")


def test_evaluate_counts_and_gives_a_wilson_interval(es) -> None:
    right = {"What is 17 + 25?": "42", "What is 9 times 8?": "72", "What is 100 minus 37?": "63"}
    (res,) = evaluate(_Oracle(right), es, ["zero-shot"], limit=10)
    assert res.n == 10 and res.correct == 3 and res.accuracy == pytest.approx(0.3)
    lo, hi = res.ci95
    assert lo < 0.3 < hi and lo == pytest.approx(0.1078, abs=1e-3)
    assert res.by_category == {"arithmetic": pytest.approx(0.3)}
    with pytest.raises(ValueError, match="unknown template"):
        evaluate(_Oracle(right), es, ["ten-shot"])


def test_custom_eval_set_with_a_bad_checker_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "set.yaml"
    bad.write_text(
        "templates: {z: {}}\nitems:\n  - {id: a, category: x, question: q, checks: [{type: vibes}]}\n"
    )
    with pytest.raises(ValueError, match="unknown check type 'vibes'"):
        load_eval_set(str(bad))


@pytest.mark.slow
def test_gemma_base_model_on_a_handful_of_items(gemma_path: Path, es) -> None:
    from edgeinfer.engine.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(gemma_path, name="gemma-3-270m", n_ctx=1024, threads=2)
    try:
        answerer = BackendAnswerer(backend, max_tokens=16)
        assert not answerer.chat  # a base model: plain Question/Answer completion
        facts = [i for i in es.items if i.category == "facts"][:5]
        subset = type(es)(facts, es.templates, es.shots)
        (res,) = evaluate(answerer, subset, ["few-shot"])
    finally:
        backend.close()
    assert res.n == 5 and res.mode == "completion"
    assert all(d.answer is not None and "\nQuestion:" not in d.answer for d in res.items)
    # few-shot Gemma 270M knows the capital of France
    assert res.items[0].id == "fact-01" and res.items[0].correct, res.items[0]


@pytest.mark.slow
def test_accuracy_through_a_server_that_wants_a_key(tmp_path: Path) -> None:
    """`bench accuracy --url` sends the API key; without it the refusal is named, not a traceback."""
    import os
    import subprocess
    import sys

    from edgeinfer.process import ServerProcess

    key = "bench-accuracy-test-key"
    args = ["-m", "gemma-3-270m", "--api-key", key, "--parallel", "1"]
    with ServerProcess(args, log=tmp_path / "server.log") as srv:
        argv = [sys.executable, "-m", "edgeinfer.cli", "bench", "accuracy", "--url", srv.url, "--limit", "2",
                "--template", "zero-shot", "--mode", "completion", "-f", "json"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "EDGEINFER_API_KEY"}
        refused = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert refused.returncode != 0 and "API key" in refused.stderr, refused.stderr[-2000:]
        ok = subprocess.run([*argv, "--api-key", key], capture_output=True, text=True, timeout=300, env=env)
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert "zero-shot" in ok.stdout and key not in ok.stdout
