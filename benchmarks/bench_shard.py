"""Shard engine vs. llama.cpp: prefill and decode tokens/s on the same GGUF file and thread count.

    .venv/bin/python benchmarks/bench_shard.py --model qwen2.5-coder-0.5b-instruct --threads 2
    .venv/bin/python benchmarks/bench_shard.py --model gemma-3-270m --formats gguf,int8 --profile

Each engine prefills the same prompt and then decodes --gen tokens greedily (one token per forward pass).
Prints a Markdown table through the bench harness's renderer (ratio = shard / llama.cpp) and, with
--profile, where the shard engine's decode time goes (torch profiler, top operators).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from edgeinfer.bench.table import Format, Output, Table

PROMPT = (
    "A small robot lived in a lighthouse and counted the ships that passed every day. It wrote the names of "
    "the ships in a notebook, together with the weather, the colour of the sea and the birds it had seen. "
)


def bench_llamacpp(
    path: str, threads: int, prompt: list[int], n_gen: int, repeats: int
) -> tuple[float, float]:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        path, n_ctx=1024, n_batch=1024, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    prefill, decode = [], []
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        for _ in range(n_gen):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        t2 = time.perf_counter()
        prefill.append(len(prompt) / (t1 - t0))
        decode.append(n_gen / (t2 - t1))
    llm.close()
    return max(prefill), max(decode)


def bench_shard(
    path: str, threads: int, fmt: str, prompt: list[int], n_gen: int, repeats: int, profile: bool
):
    import torch

    from edgeinfer.engine.shard import Shard, layer_count

    shard = Shard(path, 0, layer_count(path), threads=threads, weight_format=fmt, max_seq_len=1024)
    prefill, decode = [], []
    for r in range(repeats):
        seq = f"bench{r}"
        t0 = time.perf_counter()
        logits = shard.forward(seq, torch.tensor(prompt))
        t1 = time.perf_counter()
        for _ in range(n_gen):
            logits = shard.forward(seq, torch.tensor([int(torch.argmax(logits))]))
        t2 = time.perf_counter()
        shard.drop(seq)
        prefill.append(len(prompt) / (t1 - t0))
        decode.append(n_gen / (t2 - t1))
    table = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        shard.forward("prof", torch.tensor(prompt))
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            logits = torch.zeros(1)
            for _ in range(16):
                shard.forward("prof", torch.tensor([int(torch.argmax(logits)) if logits.numel() > 1 else 0]))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    weight_mb = shard.weight_bytes / 1e6
    shard.close()
    return max(prefill), max(decode), weight_mb, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="bundled model name or GGUF path")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both engines")
    ap.add_argument("--formats", default="gguf,int8,bf16", help="shard weight formats (comma list)")
    ap.add_argument(
        "--prompt-tokens", type=int, default=128, help="prompt length for the prefill measurement"
    )
    ap.add_argument("--gen", type=int, default=32, help="decoded tokens per repeat")
    ap.add_argument("--repeats", type=int, default=2, help="repeats; the best is reported")
    ap.add_argument("--profile", action="store_true", help="print a torch profile of shard decode")
    args = ap.parse_args()

    from edgeinfer.engine.vocab import Vocab
    from edgeinfer.models.registry import resolve

    name, path = resolve(args.model)
    vocab = Vocab(path)
    ids = vocab.tokenize((PROMPT * 20), add_bos=True)[: args.prompt_tokens]
    vocab.close()
    load = os.getloadavg()[0]
    lp, ld = bench_llamacpp(str(path), args.threads, ids, args.gen, args.repeats)
    rows = [("llama.cpp", "GGUF", f"{lp:.1f}", f"{ld:.1f}", "1.00", "1.00")]
    profiles = []
    for fmt in args.formats.split(","):
        sp, sd, mb, table = bench_shard(
            str(path), args.threads, fmt, ids, args.gen, args.repeats, args.profile
        )
        rows.append(
            ("shard", f"{fmt} ({mb:.0f} MB)", f"{sp:.1f}", f"{sd:.1f}", f"{sp / lp:.2f}", f"{sd / ld:.2f}")
        )
        print(f"shard {fmt}: prefill {sp:.1f} tok/s, decode {sd:.1f} tok/s", file=sys.stderr, flush=True)
        if table:
            profiles.append((fmt, table))
    note = (
        f"model {name}, {args.threads} threads, prompt {len(ids)} tokens, {args.gen} decoded, "
        f"load {load:.2f} -> {os.getloadavg()[0]:.2f}"
    )
    header = ("engine", "weights", "prefill tok/s", "decode tok/s", "prefill ratio", "decode ratio")
    Output(Format.MD).table(
        Table("Shard engine vs llama.cpp", header, rows, frozenset({2, 3, 4, 5}), (note,))
    )
    for fmt, table in profiles:
        print(f"\nshard decode profile ({fmt}):\n{table}")


if __name__ == "__main__":
    main()
