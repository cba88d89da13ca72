"""Decode attention of the shard engine: the native-kernel path on the fp16 KV cache against the bmm path
on a float32 copy of it, A/B in one process (interleaved rounds, min of the rounds).

    .venv/bin/python benchmarks/bench_attention.py --model gemma-3-270m --context 512

Prints a Markdown table of milliseconds per decode step after a prompt of --context random tokens, for
both paths.
"""

from __future__ import annotations

import argparse
import time

from edgeinfer.bench.table import Format, Output, Table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="bundled model name or GGUF path")
    ap.add_argument("--context", type=int, default=128, help="prompt tokens before the decode steps")
    ap.add_argument("--steps", type=int, default=24, help="decode steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    import edgeinfer.models.common as common
    from edgeinfer.engine.shard import Shard, layer_count
    from edgeinfer.models.registry import resolve

    _, path = resolve(args.model)
    shard = Shard(path, 0, layer_count(path), threads=args.threads, max_seq_len=args.context + args.steps + 1)
    paths = {"native kernel on the fp16 cache": common.DIRECT_ROWS, "bmm on a float32 copy": 0}
    times: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, rows in paths.items():
                common.DIRECT_ROWS = rows  # this script only: which path decode takes
                shard.drop("a")
                shard.forward("a", torch.randint(10, 1000, (args.context,)))
                token = torch.tensor([100])
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    shard.forward("a", token)
                times[name].append((time.perf_counter() - t0) / args.steps * 1000)
    rows = [(name, f"{min(t):.2f}") for name, t in times.items()]
    note = f"{args.model}, context {args.context}, {args.threads} threads, min of {args.rounds} rounds"
    Output(Format.MD).table(
        Table("Decode attention A/B", ("path", "ms per decode step"), rows, frozenset({1}), (note,))
    )


if __name__ == "__main__":
    main()
