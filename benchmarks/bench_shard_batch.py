"""Shard engine, continuous batching: aggregate decode tokens/s with N sequences in one step vs one alone.

    .venv/bin/python benchmarks/bench_shard_batch.py --model qwen --threads 2 --rounds 5
    .venv/bin/python benchmarks/bench_shard_batch.py --model gemma --slots 1,2,4

One ``ShardBatchBackend`` (whole model, default weight format) with max(--slots) slots. In every round and
for every batch size n (interleaved, so a busy machine slows all sizes alike), n sequences are prefilled,
then --gen decode steps are timed: aggregate tok/s = n x steps / time. The ratio n / 1 is taken within a
round; the table gives the median and the spread (min-max) over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from edgeinfer.bench.table import Format, Output, Table
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.shard_batch import ShardBatchBackend
from edgeinfer.models.registry import resolve

PROMPTS = [
    "A small robot lived in a lighthouse and counted the ships that passed every day.",
    "def quicksort(items):\n",
    "The history of the printing press begins",
    "1, 2, 3, 4, 5,",
    "Write a letter to a friend about a trip to the mountains.",
    "SELECT name, count(*) FROM orders",
    "The recipe needs three eggs, flour and",
    "In physics, energy is",
]
GREEDY = SamplingParams(temperature=0, max_tokens=None)


def decode_rate(backend: ShardBatchBackend, n: int, n_gen: int) -> float:
    """Aggregate decode tokens/s of ``n`` sequences stepped together (after their prefill)."""
    slots = [backend.add(backend.tokenize(PROMPTS[i % len(PROMPTS)]), GREEDY) for i in range(n)]
    try:
        while backend.n_active and len(backend.step()) < n:  # prefill until every slot decodes
            pass
        t0 = time.perf_counter()
        for _ in range(n_gen):
            backend.step()
        return n * n_gen / (time.perf_counter() - t0)
    finally:
        for s in slots:
            backend.remove(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", default="1,2,4", help="batch sizes to measure (1 is always included)")
    ap.add_argument("--gen", type=int, default=32, help="decode steps timed per measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--weight-format", default="auto")
    ap.add_argument("--format", default="md", choices=[f.value for f in Format])
    args = ap.parse_args()
    sizes = sorted({1, *(int(x) for x in args.slots.split(","))})
    _, path = resolve(args.model)
    backend = ShardBatchBackend(
        path, n_ctx=512, n_slots=max(sizes), threads=args.threads, weight_format=args.weight_format
    )
    try:
        decode_rate(backend, max(sizes), 4)  # warm-up
        rates: dict[int, list[float]] = {n: [] for n in sizes}
        for r in range(args.rounds):
            for n in sizes:
                rates[n].append(decode_rate(backend, n, args.gen))
            print(f"round {r + 1}: " + ", ".join(f"{n}: {rates[n][-1]:.1f} tok/s" for n in sizes), flush=True)
    finally:
        backend.close()
    rows = []
    for n in sizes:
        ratios = [a / b for a, b in zip(rates[n], rates[1], strict=True)]
        med = statistics.median(rates[n])
        rows.append(
            (
                str(n),
                f"{med:.1f}",
                f"{med / n:.1f}",
                f"{statistics.median(ratios):.2f}x",
                f"{min(ratios):.2f}-{max(ratios):.2f}x",
            )
        )
    title = (
        f"{path.stem}, shard engine ({backend.info.weight_format}), {args.threads} threads, "
        f"{args.gen} decode steps x {args.rounds} rounds"
    )
    header = ("sequences", "aggregate tok/s (median)", "per sequence tok/s", "ratio n/1 (median)", "spread")
    Output(Format(args.format)).table(Table(title, header, rows, frozenset({0, 1, 2, 3, 4})))


if __name__ == "__main__":
    main()
