"""HTTP server vs. llama-cpp-python called directly: decode tok/s, TTFT, and the server's peak RSS.

Same GGUF, same threads, same prompts, greedy decoding, streaming in both cases. The direct side is what a
user of llama-cpp-python writes (`Llama.create_completion(..., stream=True)`); the server side is
`edgeinfer serve` over HTTP/SSE on loopback, timed by the client. Prompts differ per repeat so that
llama.cpp's prefix cache does not hide prefill.

    .venv/bin/python benchmarks/bench_serve_overhead.py --model qwen2.5-coder-0.5b-instruct --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx

from edgeinfer.bench.table import Format, Output, Table
from edgeinfer.models.registry import resolve
from edgeinfer.process import ServerProcess

PROMPT = "Story {i}: Write a long, detailed story about a lighthouse keeper who finds a strange map."


def _rates(stamps: list[float], start: float) -> tuple[float, float]:
    """(TTFT seconds, decode tok/s) from the arrival times of successive tokens."""
    ttft = stamps[0] - start
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return ttft, decode


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(name: str, path: Path, threads: int, n_ctx: int, tokens: int, repeats: int) -> dict:
    """Alternate direct and served runs, so that background load hits both sides alike."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    args = ["-m", name, "-t", str(threads), "--ctx-size", str(n_ctx)]
    direct, served = [], []
    with ServerProcess(args) as srv, httpx.Client(timeout=300) as client:
        for i in range(repeats + 1):  # run 0 warms both up
            start, stamps = time.perf_counter(), []
            for _ in llm.create_completion(PROMPT.format(i=i), max_tokens=tokens, temperature=0, stream=True):
                stamps.append(time.perf_counter())
            d = _rates(stamps, start)
            body = {
                "model": name,
                "prompt": PROMPT.format(i=i),
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
            }
            start, stamps = time.perf_counter(), []
            with client.stream("POST", srv.url + "/v1/completions", json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                        stamps.append(time.perf_counter())
            if i:
                direct.append(d)
                served.append(_rates(stamps, start))
        rss = peak_rss_mib(srv.pid)
    llm.close()
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    res = {
        "model": name,
        "threads": threads,
        "tokens": tokens,
        "repeats": repeats,
        "direct_decode_tok_s": med(direct, 1),
        "server_decode_tok_s": med(served, 1),
        "direct_ttft_ms": 1000 * med(direct, 0),
        "server_ttft_ms": 1000 * med(served, 0),
        "server_peak_rss_mib": rss,
    }
    res["decode_ratio"] = res["server_decode_tok_s"] / res["direct_decode_tok_s"]
    res["ttft_ratio_direct_over_server"] = res["direct_ttft_ms"] / res["server_ttft_ms"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx-size", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    name, path = resolve(a.model)
    res = measure(name, path, a.threads, a.ctx_size, a.tokens, a.repeats)
    note = f"{res['model']}, {res['threads']} threads, {res['tokens']} tokens, median of {res['repeats']}"
    rows = [
        ("in process", f"{res['direct_decode_tok_s']:.1f}", f"{res['direct_ttft_ms']:.0f}", "–"),
        (
            "edgeinfer serve",
            f"{res['server_decode_tok_s']:.1f}",
            f"{res['server_ttft_ms']:.0f}",
            f"{res['server_peak_rss_mib']:.0f}",
        ),
        (
            "server / in process",
            f"{res['decode_ratio']:.3f}",
            f"{1 / res['ttft_ratio_direct_over_server']:.3f}",
            "–",
        ),
    ]
    header = ("path", "decode tok/s", "TTFT ms", "peak RSS MiB")
    Output(Format.MD).table(Table("Serving overhead", header, rows, frozenset({1, 2, 3}), (note,)))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
