"""Speculative decoding through a pipeline on the namespace test-bed (needs root), issue 14.

Three nodes on tbf-limited links (default 10 Mbit/s), the model split in three equal stages. One gateway
decodes the code-editing workload (prompts that ask to change a given function) greedily, with
``speculative: off`` and ``speculative: ngram`` alternately on the same loaded shards, interleaved per prompt
and repeated in rounds (load drifts hit both alike). Reported: decode tok/s of each mode per round (decoded
tokens after the first / their time), the ratio speculative / plain per round (median and spread), the
acceptance rate and tokens per pass, and whether both modes produced the same text.

    sudo .venv/bin/python benchmarks/bench_cluster_speculative.py --model qwen --rate 10mbit --out run.json

Everything runs inside a test-bed that is removed on exit (also on Ctrl-C or SIGTERM, e.g. from `timeout`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml

from edgeinfer.bench.table import Format, Output, Table
from edgeinfer.cluster.bringup import load_cluster
from edgeinfer.cluster.config import load_config
from edgeinfer.cluster.testbed import start_nodes
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.chat import build_chat_prompt
from edgeinfer.engine.generate import complete
from edgeinfer.engine.shard import layer_count
from edgeinfer.models.registry import resolve
from edgeinfer.testbed.netns import Testbed

med = statistics.median


def workload(name: str = "code") -> list[list[dict]]:
    """A workload of the single-device speculative benchmark (``benchmarks/bench_speculative.py``, beside
    this script): ``code`` (code editing) or ``chat``, as chat messages."""
    import bench_speculative  # noqa: PLC0415 - a sibling script, on sys.path when this one runs

    return [[{"role": "user", "content": text}] for text in bench_speculative.WORKLOADS[name]]


def write_cfg(path: Path, model: str, specs, n_layers: int, draft_max: int, wire_dtype: str) -> Path:
    k = len(specs)
    cuts = [round(i * n_layers / k) for i in range(k + 1)]
    doc = {
        "model": model,
        "nodes": [{"name": s.name, "address": s.address} for s in specs],
        "planner": {
            "stages": [{"node": s.name, "layers": [cuts[i], cuts[i + 1]]} for i, s in enumerate(specs)]
        },
        "wire_dtype": wire_dtype,
        "speculative": {"mode": "ngram", "draft_max": draft_max},
        "failover": {"adapt": False},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def decode(backend, prompt: list[int], tokens: int) -> tuple[int, float, str, list[tuple[int, float]]]:
    """(tokens decoded after the first, their seconds, the text, per decode pass after the prompt:
    (positions, seconds of its calls summed over the stages))."""
    for st in backend.stages:
        st.timings.clear()
    r = complete(backend, prompt, SamplingParams(temperature=0.0, max_tokens=tokens))
    assert r.ttft is not None
    calls = [list(st.timings) for st in backend.stages]
    passes = [(c[0][0], sum(x[1] for x in c)) for c in zip(*calls, strict=True)]
    return r.completion_tokens - 1, r.total - r.ttft, r.text, passes[1:]  # [0]: the prompt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--rate", default="10mbit", help="link rate of every node")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="max tokens per answer")
    ap.add_argument("--workload", default="code", choices=("code", "chat"), help="of bench_speculative.py")
    ap.add_argument("--prompts", type=int, default=0, help="use the first N prompts (0: all)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over the whole workload")
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="threads per node")
    ap.add_argument("--wire-dtype", default="f16")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    _, path = resolve(args.model)
    n_layers = layer_count(path)
    prompts = workload(args.workload)[: args.prompts or None]
    work = Path(tempfile.mkdtemp(prefix="bench-spec-"))
    rounds: list[dict] = []
    res: dict = {
        "model": args.model,
        "rate": args.rate,
        "nodes": args.nodes,
        "tokens": args.tokens,
        "workload": args.workload,
        "prompts": len(prompts),
        "repeat": args.repeat,
        "draft_max": args.draft_max,
        "threads": args.threads,
        "wire_dtype": args.wire_dtype,
        "load_before": os.getloadavg(),
    }
    with Testbed(args.nodes, rate=args.rate) as tb:
        specs = start_nodes(tb, threads=args.threads, log_dir=work)
        cfg = write_cfg(work / "spec.yaml", str(path), specs, n_layers, args.draft_max, args.wire_dtype)
        backend = load_cluster(load_config(cfg))
        try:
            res["plan"] = backend.plan.describe()
            ngram = backend.speculative
            off = replace(ngram, mode="off")
            chats = [build_chat_prompt(backend, m).tokens for m in prompts]
            backend.speculative = off
            decode(backend, chats[0], 8)  # warm-up
            for rnd in range(args.repeat):
                row: dict = {"round": rnd, "same_text": 0}
                tally = {m: {"tokens": 0, "seconds": 0.0, "passes": []} for m in ("off", "ngram")}
                before = backend.spec_stats.snapshot()
                for chat in chats:
                    texts = {}
                    order = ("off", "ngram") if rnd % 2 == 0 else ("ngram", "off")
                    for mode in order:
                        backend.speculative = off if mode == "off" else ngram
                        n, seconds, texts[mode], passes = decode(backend, chat, args.tokens)
                        tally[mode]["tokens"] += n
                        tally[mode]["seconds"] += seconds
                        tally[mode]["passes"] += passes
                    row["same_text"] += texts["off"] == texts["ngram"]
                s = backend.spec_stats.since(before)
                for mode, t in tally.items():
                    row[f"{mode}_tok_s"] = t["tokens"] / t["seconds"]
                    row[f"{mode}_pass_ms"] = med(x[1] for x in t["passes"]) * 1e3
                    row[f"{mode}_positions"] = statistics.mean(x[0] for x in t["passes"])
                row |= {
                    "ratio": row["ngram_tok_s"] / row["off_tok_s"],
                    "acceptance": s.acceptance_rate,
                    "tokens_per_pass": s.tokens_per_pass,
                    "load1": os.getloadavg()[0],
                }
                rounds.append(row)
                print(json.dumps(row), file=sys.stderr)
        finally:
            backend.close()
    res["rounds"] = rounds
    res["load_after"] = os.getloadavg()
    print_table(res)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def print_table(res: dict) -> None:
    rows = res["rounds"]
    note = (
        f"model {res['model']}, {res['nodes']} nodes at {res['rate']}, plan {res['plan']}, "
        f"{res['prompts']} prompts of {res['workload']} x {res['tokens']} tokens max, greedy, "
        f"draft_max {res['draft_max']}, wire {res['wire_dtype']}, {res['threads']} thread(s) per node, "
        f"median (min-max) of {res['repeat']} round(s), load {res['load_before'][0]:.1f} -> "
        f"{res['load_after'][0]:.1f}"
    )

    def col(key: str, fmt: str = "{:.2f}") -> str:
        return _spread([r[key] for r in rows], fmt)

    table = [
        ("decode tok/s", col("off_tok_s"), col("ngram_tok_s")),
        ("speculative / plain", "", col("ratio")),
        ("ms per pass through the stages", col("off_pass_ms", "{:.0f}"), col("ngram_pass_ms", "{:.0f}")),
        ("positions per pass", col("off_positions"), col("ngram_positions")),
        ("tokens per pass", "1", col("tokens_per_pass")),
        ("acceptance rate", "", col("acceptance")),
        ("same text (prompts)", "", f"{min(r['same_text'] for r in rows)} of {res['prompts']}"),
    ]
    title = "Speculative decoding through the pipeline"
    Output(Format.MD).table(
        Table(title, ("", "plain", "speculative (ngram)"), table, frozenset({1, 2}), (note,))
    )


if __name__ == "__main__":
    main()
