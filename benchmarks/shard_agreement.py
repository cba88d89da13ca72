"""Shard engine vs. llama.cpp, teacher-forced: top-1 next-token agreement and logit differences.

    .venv/bin/python benchmarks/shard_agreement.py --model qwen2.5-coder-0.5b-instruct --formats gguf,bf16
    .venv/bin/python benchmarks/shard_agreement.py --model gemma-3-270m --test-text --sensitivity

Both engines read the same text (written for this project, about 250 tokens) in one pass and return the
logits of every position (llama-cpp-python with ``logits_all=True``). Reported per weight format: the share
of positions whose argmax agrees, and the max / mean absolute logit difference over all positions and the
whole vocabulary. The same comparison is asserted in tests/engine/test_shard_vs_llamacpp.py.

``--sensitivity`` adds the engine against itself with one change of rounding: RMSNorm's mean of squares
taken in float64 instead of float32 (ggml takes it in double), a relative change of ~1e-7 in one op. How far
that moves the logits is the noise floor of any implementation that is not bit-identical to the oracle:
with 8-bit activation rounding a 1e-7 change flips roundings, and the flips spread through the KV cache.
"""

from __future__ import annotations

import argparse
import sys
import time

from edgeinfer.bench.table import Format, Output, Table

TEXT = (
    "The harbour town woke up slowly on winter mornings. Before the bakery opened its shutters, the "
    "fishermen were already down at the quay, checking their nets and arguing about the weather. Old Marta, "
    "who had sold newspapers at the corner for forty years, claimed she could tell a storm was coming by the "
    "way the gulls gathered on the church roof. Nobody believed her, but nobody went out to sea when the "
    "gulls were there either.\n\n"
    "In the spring of that year a young engineer arrived with two suitcases and a crate of instruments. She "
    "had been sent by the regional office to measure the tides and to decide whether the old breakwater "
    "could be repaired or had to be replaced. Every evening she sat in the café by the harbour, writing "
    "long columns of numbers into a green notebook, and every evening the fishermen asked her what the "
    "numbers said. The answer was always the same: the sea was rising a little faster than anyone had "
    "expected, and the breakwater, built by their grandfathers from granite blocks and stubbornness, would "
    "not survive another twenty winters. The town council listened politely, thanked her, and voted to "
    "think about it until the autumn."
)


def teacher_forced(path: str, ids: list[int], fmt: str, threads: int = 2):
    """(llama.cpp logits, shard logits), both float32 numpy arrays [len(ids), vocab]."""
    import llama_cpp
    import numpy as np
    import torch

    from edgeinfer.engine.shard import Shard, layer_count

    llm = llama_cpp.Llama(
        path, n_ctx=1024, n_batch=1024, n_threads=threads, logits_all=True, verbose=False, seed=0
    )
    llm.eval(ids)
    ref = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    shard = Shard(path, 0, layer_count(path), threads=threads, weight_format=fmt, max_seq_len=1024)
    ours = shard.forward("text", torch.tensor(ids), all_logits=True).numpy()
    shard.close()
    return ref, ours


def sensitivity(path: str, ids: list[int], fmt: str, threads: int = 2):
    """(engine logits, engine logits with RMSNorm's mean of squares in float64)."""
    import torch

    from edgeinfer.engine.shard import Shard, layer_count
    from edgeinfer.models import gemma3, llama

    def logits():
        shard = Shard(path, 0, layer_count(path), threads=threads, weight_format=fmt, max_seq_len=1024)
        out = shard.forward("text", torch.tensor(ids), all_logits=True).numpy()
        shard.close()
        return out

    def rms_norm_f64(x, weight, eps):
        xd = x.double()
        return (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)).float() * weight

    base = logits()
    saved = llama.rms_norm, gemma3.rms_norm
    llama.rms_norm = gemma3.rms_norm = rms_norm_f64  # this script only: one op rounded differently
    try:
        return base, logits()
    finally:
        llama.rms_norm, gemma3.rms_norm = saved


def compare(ref, ours) -> dict[str, float]:
    import numpy as np

    diff = np.abs(ref - ours)
    return {
        "positions": len(ref),
        "top1": float((ref.argmax(-1) == ours.argmax(-1)).mean()),
        "max_diff": float(diff.max()),
        "mean_diff": float(diff.mean()),
        "logit_std": float(ref.std()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="bundled model name or GGUF path")
    ap.add_argument("--formats", default="gguf,int8,bf16", help="shard weight formats (comma list)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--test-text", action="store_true", help="use the text of tests/engine/test_shard_vs_llamacpp.py"
    )
    ap.add_argument(
        "--sensitivity", action="store_true", help="also compare each format with itself, norms in float64"
    )
    args = ap.parse_args()
    text = TEXT
    if args.test_text:
        import importlib.util
        from pathlib import Path

        test = Path(__file__).resolve().parents[1] / "tests/engine/test_shard_vs_llamacpp.py"
        spec = importlib.util.spec_from_file_location("agreement_test", test)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        text = module.TEXT

    from edgeinfer.engine.vocab import Vocab
    from edgeinfer.models.registry import resolve

    name, path = resolve(args.model)
    vocab = Vocab(path)
    ids = vocab.tokenize(text, add_bos=True)
    vocab.close()
    rows = []

    def row(label: str, logits_pair, fmt: str) -> None:
        """One table row: ``logits_pair`` (teacher_forced or sensitivity) gives the two logit arrays."""
        t0 = time.perf_counter()
        r = compare(*logits_pair(str(path), ids, fmt, args.threads))
        rows.append(
            (
                label,
                f"{100 * r['top1']:.1f} % ({round(r['top1'] * r['positions'])}/{r['positions']})",
                f"{r['max_diff']:.3f}",
                f"{r['mean_diff']:.4f}",
                f"{r['logit_std']:.2f}",
                f"{time.perf_counter() - t0:.1f}",
            )
        )
        print(f"{label}: top-1 {rows[-1][1]}", file=sys.stderr, flush=True)

    for fmt in args.formats.split(","):
        row(fmt, teacher_forced, fmt)
        if args.sensitivity:
            row(f"{fmt} vs itself, norms in f64", sensitivity, fmt)
    header = (
        "weights",
        "top-1 agreement",
        "max abs logit diff",
        "mean abs logit diff",
        "logit std",
        "time s",
    )
    note = f"model {name}, {len(ids)} tokens teacher-forced"
    Output(Format.MD).table(
        Table("Shard engine vs llama.cpp: logit agreement", header, rows, frozenset({1, 2, 3, 4, 5}), (note,))
    )


if __name__ == "__main__":
    main()
