"""The `edgeinfer` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeinfer.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_command() -> None:
    out = run("--help").stdout
    for command in ("serve", "generate", "models", "bench", "split"):
        assert command in out


def test_serve_help_documents_every_option() -> None:
    out = run("serve", "--help").stdout
    options = ("--model", "--host", "--port", "--backend", "--weight-format", "--ctx-size", "--threads")
    for option in (*options, "--max-queue", "--allow-special-tokens"):
        assert option in out


def test_models_lists_bundled_models() -> None:
    out = run("models").stdout
    assert "qwen2.5-coder" in out and "gemma-3-270m" in out


@pytest.mark.slow
def test_generate_streams_greedy_answer() -> None:
    r = run("generate", "What is the capital of France?", "--temperature", "0", "-n", "20")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "generated tokens" in r.stderr


@pytest.mark.slow
def test_generate_raw_completion_with_base_model() -> None:
    r = run(
        "generate",
        "The Eiffel Tower is located in the city of",
        "-m",
        "gemma",
        "--temperature",
        "0",
        "-n",
        "4",
        "--raw",
    )
    assert r.returncode == 0 and "Paris" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("weight_format", ["gguf", "bf16"])
def test_generate_on_the_shard_engine_in_a_chosen_weight_format(weight_format) -> None:
    r = run("generate", "What is the capital of France?", "--backend", "shard", "--weight-format",
            weight_format, "--temperature", "0", "-n", "12")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_bad_weight_formats_are_refused_before_loading() -> None:
    r = run("generate", "hi", "--backend", "shard", "--weight-format", "int3")
    assert r.returncode == 2 and "unknown weight format 'int3'" in r.stderr
    r = run("generate", "hi", "--weight-format", "bf16")  # the llama.cpp backend has no such choice
    assert r.returncode == 2 and "shard backend only" in r.stderr
