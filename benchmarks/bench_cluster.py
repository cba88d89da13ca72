"""Edge<->edge pipeline benchmark on the namespace test-bed (needs root).

1. decode tok/s of 1, 2 and 3 nodes (equal contiguous split) at several link rates, and the N-node / 1-node
   ratio. All nodes share this machine's cores (one thread each by default), so a pipeline cannot be faster
   than one node here: the ratio shows what the network and the RPC hops cost.
2. planner choice vs. the best measured partition of two nodes (every split point, and each node alone);
   with --sweep-memory-limit each node may hold only that much, so the planner has to split the model.
3. predicted vs. measured per-token latency for every configuration, and where the time goes: per decode
   step, the node's compute, the rest of each stage's RPC (gRPC, wire codec, link) and the gateway's own work.
4. the same 1, 2, 3 shards chained in this one process (``ShardBackend``, no RPC, no other processes):
   what the compute of an N-stage split costs without the test-bed (--no-in-process to skip).
5. with --concurrent C: C greedy streams at once (different prompts) through the whole model on one node
   and through an equal 2-node split, and one stream alone on one node: aggregate output tok/s and the
   ratios within each round (several sequences in flight keep every stage of a pipeline busy).

Every configuration is measured --repeat times in interleaved rounds (load drifts hit all alike); the tables
show medians.

    sudo .venv/bin/python benchmarks/bench_cluster.py --model qwen --rates 1gbit,100mbit,10mbit --out run.json

Everything runs inside a test-bed that is removed on exit (also on Ctrl-C or SIGTERM, e.g. from `timeout`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from edgeinfer.bench.table import Format, Output, Table
from edgeinfer.cluster.bringup import load_cluster
from edgeinfer.cluster.config import load_config
from edgeinfer.cluster.gateway import ClusterError
from edgeinfer.cluster.testbed import start_nodes
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import complete
from edgeinfer.engine.shard import layer_count
from edgeinfer.engine.shard_backend import ShardBackend
from edgeinfer.models.registry import resolve
from edgeinfer.testbed.netns import Testbed

PROMPT = "Write a short story about a robot who learns to paint."
med = statistics.median


def measure(cfg_path: Path, tokens: int) -> dict:
    t0 = time.monotonic()
    backend = load_cluster(load_config(cfg_path))
    try:
        params = SamplingParams(temperature=0.0, max_tokens=tokens)
        complete(backend, backend.tokenize("Hello"), SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
        for st in backend.stages:
            st.timings.clear()
        r = complete(backend, backend.tokenize(PROMPT), params)
        ms = med(r.token_times) * 1e3
        stages = []
        for st in backend.stages:
            decode = [t for t in st.timings if t[0] == 1]
            stages.append(
                {
                    "node": st.name,
                    "rpc_ms": med(t[1] for t in decode) * 1e3,
                    "compute_ms": med(t[2] for t in decode) * 1e3,
                }
            )
        rows = backend.plan.breakdown
        return {
            "plan": backend.plan.describe(),
            "predicted_ms": backend.plan.latency * 1e3,
            "predicted_compute_ms": sum(x.compute for x in rows) * 1e3,
            "predicted_hop_ms": sum(x.hop for x in rows) * 1e3,
            "measured_ms": ms,
            "compute_ms": sum(s["compute_ms"] for s in stages),
            "rpc_ms": sum(s["rpc_ms"] for s in stages),
            "stages": stages,
            "tok_s": 1e3 / ms,
            "tokens": r.completion_tokens,
            "load1": os.getloadavg()[0],
            "seconds": time.monotonic() - t0,
        }
    finally:
        backend.close()


STREAM_PROMPTS = [
    PROMPT,
    "Explain how a bicycle gear works to a child.",
    "List five uses of a paper clip and why they work.",
    "Describe the sea at night in a few sentences.",
    "Write a haiku about a mountain in autumn.",
    "Summarize the rules of chess in plain words.",
    "Tell a joke about a cat and a laptop.",
    "What should a hiker carry on a day trip?",
]


def measure_streams(cfg_path: Path, tokens: int, streams: int) -> dict:
    """``streams`` greedy streams at once (``parallel=streams``, one thread each, as `serve` runs them):
    aggregate output tok/s = tokens of all streams / wall time from the first request to the last token."""
    import threading

    backend = load_cluster(load_config(cfg_path), parallel=streams)
    try:
        complete(backend, backend.tokenize("Hello"), SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
        params = SamplingParams(temperature=0.0, max_tokens=tokens)
        prompts = [backend.tokenize(STREAM_PROMPTS[i % len(STREAM_PROMPTS)]) for i in range(streams)]
        done: list[int] = [0] * streams
        go = threading.Barrier(streams + 1)

        def one(i: int) -> None:
            go.wait()
            done[i] = complete(backend, prompts[i], params).completion_tokens

        threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
        for t in threads:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return {
            "plan": backend.plan.describe(),
            "streams": streams,
            "tokens": sum(done),
            "seconds": wall,
            "tok_s": sum(done) / wall,
            "load1": os.getloadavg()[0],
        }
    finally:
        backend.close()


def measure_in_process(path: Path, n_stages: int, n_layers: int, tokens: int, threads: int) -> dict:
    cuts = [b for _, _, b in equal_stages([str(i) for i in range(n_stages)], n_layers)][:-1]
    backend = ShardBackend(path, splits=cuts, threads=threads)
    try:
        complete(backend, backend.tokenize("Hello"), SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
        r = complete(backend, backend.tokenize(PROMPT), SamplingParams(temperature=0.0, max_tokens=tokens))
        return {"nodes": n_stages, "measured_ms": med(r.token_times) * 1e3, "load1": os.getloadavg()[0]}
    finally:
        backend.close()


def write_cfg(path: Path, model: str, specs, stages=None, memory_limit=None, **planner) -> Path:
    nodes = [{"name": s.name, "address": s.address} for s in specs]
    if memory_limit:
        nodes = [n | {"memory_limit": memory_limit} for n in nodes]
    doc = {"model": model, "nodes": nodes}
    if stages is not None:
        planner["stages"] = [{"node": n, "layers": [a, b]} for n, a, b in stages]
    if planner:
        doc["planner"] = planner
    path.write_text(yaml.safe_dump(doc))
    return path


def equal_stages(names: list[str], n_layers: int) -> list[tuple[str, int, int]]:
    k = len(names)
    cuts = [round(i * n_layers / k) for i in range(k + 1)]
    return [(names[i], cuts[i], cuts[i + 1]) for i in range(k)]


def summarize(runs: list[dict]) -> dict:
    """Median over the repeats of one configuration (plus the spread of the measured latency)."""
    keys = ("predicted_ms", "predicted_compute_ms", "predicted_hop_ms", "measured_ms", "compute_ms", "rpc_ms")
    out = {k: med(r[k] for r in runs) for k in keys}
    out["tok_s"] = 1e3 / out["measured_ms"]
    out["measured_min_ms"] = min(r["measured_ms"] for r in runs)
    out["measured_max_ms"] = max(r["measured_ms"] for r in runs)
    out["plans"] = sorted({r["plan"] for r in runs})
    out["plan"] = out["plans"][0] if len(out["plans"]) == 1 else " | ".join(out["plans"])
    out["runs"] = runs
    return out


def summarize_streams(rounds: list[dict], streams: int, rate: str) -> dict:
    """Per configuration: median and min-max aggregate tok/s; the ratios 2 nodes / 1 node taken within
    each round (same load), then their median and spread."""

    def spread(values: list[float]) -> dict:
        return {"median": med(values), "min": min(values), "max": max(values)}

    keys = list(rounds[0])
    return {
        "streams": streams,
        "rate": rate,
        "tok_s": {k: spread([r[k]["tok_s"] for r in rounds]) for k in keys},
        "plans": {k: rounds[0][k]["plan"] for k in keys},
        "ratio_vs_1_node_same_streams": spread(
            [r["2 nodes"]["tok_s"] / r["1 node"]["tok_s"] for r in rounds]
        ),
        "ratio_vs_1_node_1_stream": spread(
            [r["2 nodes"]["tok_s"] / r["1 node, 1 stream"]["tok_s"] for r in rounds]
        ),
        "rounds": rounds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument(
        "--rates", default="1gbit,100mbit,10mbit", help="link rates of the scaling runs ('' to skip)"
    )
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds; every configuration is measured once per round"
    )
    ap.add_argument("--threads", type=int, default=1, help="threads per node")
    ap.add_argument("--partition-rate", default="1gbit", help="link rate of the partition sweep ('' to skip)")
    ap.add_argument("--sweep-step", type=int, default=4, help="layers between the split points of the sweep")
    ap.add_argument(
        "--sweep-memory-limit",
        default=None,
        help="per-node memory limit of the partition sweep, e.g. 300MB (layouts that do not fit are skipped)",
    )
    ap.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the same shard chains inside this process (no RPC)",
    )
    ap.add_argument(
        "--concurrent",
        type=int,
        default=0,
        help="also run this many streams at once on 1 node and on 2 nodes (0: skip)",
    )
    ap.add_argument("--concurrent-rate", default="1gbit", help="link rate of the concurrent-streams runs")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    _, path = resolve(args.model)
    n_layers = layer_count(path)
    counts = [int(x) for x in args.nodes.split(",")]
    rates = [r for r in args.rates.split(",") if r]
    n_hosts = max(counts) if rates else 2
    results: dict = {
        "model": args.model,
        "threads": args.threads,
        "tokens": args.tokens,
        "repeat": args.repeat,
        "load_before": os.getloadavg(),
        "scaling": [],
    }
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    scaling: dict[tuple[str, int], list[dict]] = {}
    sweep: dict[str, list[dict]] = {}
    auto: list[dict] = []
    in_process: dict[int, list[dict]] = {}
    streams: list[dict] = []  # per round: configuration -> measure_streams
    limit = args.sweep_memory_limit
    with Testbed(n_hosts, rate="1gbit") as tb:
        specs = start_nodes(tb, threads=args.threads, log_dir=work)
        names = [s.name for s in specs]
        two = specs[:2]
        layouts = [[("n0", 0, n_layers)], [("n1", 0, n_layers)]]
        layouts += [
            [("n0", 0, c), ("n1", c, n_layers)] for c in range(args.sweep_step, n_layers, args.sweep_step)
        ]
        for rnd in range(args.repeat):
            for n in counts if args.in_process else []:
                r = measure_in_process(path, n, n_layers, args.tokens, args.threads) | {"round": rnd}
                in_process.setdefault(n, []).append(r)
                print(json.dumps(r), file=sys.stderr)
            for rate in rates:
                for i in range(len(specs)):
                    tb.set_rate(i, rate)
                for n in counts:
                    stages = equal_stages(names[:n], n_layers)
                    cfg = write_cfg(work / f"{rate}-{n}.yaml", str(path), specs, stages)
                    r = measure(cfg, args.tokens) | {"rate": rate, "nodes": n, "round": rnd}
                    scaling.setdefault((rate, n), []).append(r)
                    print(json.dumps(r), file=sys.stderr)
            if args.concurrent:
                for i in range(len(specs)):
                    tb.set_rate(i, args.concurrent_rate)
                row = {}
                for key, n, c in (
                    ("1 node, 1 stream", 1, 1),
                    ("1 node", 1, args.concurrent),
                    ("2 nodes", 2, args.concurrent),
                ):
                    stages = equal_stages(names[:n], n_layers)
                    cfg = write_cfg(work / f"streams-{n}.yaml", str(path), specs, stages)
                    row[key] = measure_streams(cfg, args.tokens, c) | {"round": rnd}
                    print(json.dumps(row[key]), file=sys.stderr)
                streams.append(row)
            if args.partition_rate:
                for i in range(len(specs)):
                    tb.set_rate(i, args.partition_rate)
                for stages in layouts:
                    cfg = write_cfg(work / "sweep.yaml", str(path), two, stages, memory_limit=limit)
                    try:
                        r = measure(cfg, args.tokens) | {"round": rnd}
                    except ClusterError as exc:  # a fixed layout beyond the memory limit
                        print(f"skipped {stages}: {exc}", file=sys.stderr)
                        continue
                    sweep.setdefault(r["plan"], []).append(r)
                    print(json.dumps(r), file=sys.stderr)
                cfg = write_cfg(work / "auto.yaml", str(path), two, memory_limit=limit)
                r = measure(cfg, args.tokens) | {"round": rnd, "auto": True}
                auto.append(r)
                print(json.dumps(r), file=sys.stderr)
    for (rate, n), runs in scaling.items():
        results["scaling"].append(summarize(runs) | {"rate": rate, "nodes": n})
    results["in_process"] = [
        {
            "nodes": n,
            "measured_ms": med(r["measured_ms"] for r in runs),
            "measured_min_ms": min(r["measured_ms"] for r in runs),
            "measured_max_ms": max(r["measured_ms"] for r in runs),
            "runs": runs,
        }
        for n, runs in in_process.items()
    ]
    if auto:
        rows = [summarize(runs) for runs in sweep.values()]
        chosen = summarize(auto)
        best = min(rows, key=lambda r: r["measured_ms"])
        results["partition"] = {
            "rate": args.partition_rate,
            "memory_limit": limit,
            "sweep": rows,
            "planner": chosen,
            "best": best,
            "ratio": chosen["measured_ms"] / best["measured_ms"],
        }
    if streams:
        results["streams"] = summarize_streams(streams, args.concurrent, args.concurrent_rate)
    results["load_after"] = os.getloadavg()
    print_tables(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def print_tables(res: dict) -> None:
    """The results as Markdown tables, through the bench harness's renderer."""
    show = Output(Format.MD)
    note = (
        f"model {res['model']}, {res['threads']} thread(s) per node, {res['tokens']} tokens, "
        f"median of {res['repeat']} round(s), load {res['load_before'][0]:.1f} -> {res['load_after'][0]:.1f}"
    )

    def measured(r: dict) -> str:
        return f"{r['measured_ms']:.1f} ({r['measured_min_ms']:.1f}-{r['measured_max_ms']:.1f})"

    if res["scaling"]:
        base = {r["rate"]: r["tok_s"] for r in res["scaling"] if r["nodes"] == 1}
        rows = [
            (
                r["rate"],
                str(r["nodes"]),
                r["plan"],
                f"{r['tok_s']:.1f}",
                f"{r['tok_s'] / base[r['rate']] if r['rate'] in base else float('nan'):.2f}",
                f"{r['predicted_ms']:.1f}",
                measured(r),
                f"{r['compute_ms']:.1f}",
                f"{r['rpc_ms'] - r['compute_ms']:.1f}",
                f"{r['measured_ms'] - r['rpc_ms']:.1f}",
            )
            for r in res["scaling"]
        ]
        header = (
            "link",
            "nodes",
            "plan",
            "tok/s",
            "vs 1 node",
            "predicted ms/token",
            "measured ms/token (min-max)",
            "node compute ms",
            "RPC overhead ms",
            "gateway ms",
        )
        show.table(Table("Pipeline scaling", header, rows, frozenset({1, *range(3, 10)}), (note,)))
    if res.get("in_process"):
        rows = [(str(r["nodes"]), measured(r)) for r in res["in_process"]]
        show.table(
            Table("Stages in one process (no RPC)", ("stages", "ms/token (min-max)"), rows, frozenset({0, 1}))
        )
    if "partition" in res:
        p = res["partition"]
        limit = f", memory limit {p['memory_limit']} per node" if p.get("memory_limit") else ""
        rows = [
            (
                f"planner: {r['plan']}" if r is p["planner"] else r["plan"],
                f"{r['predicted_ms']:.1f}",
                measured(r),
            )
            for r in [*p["sweep"], p["planner"]]
        ]
        chosen, best = p["planner"], p["best"]
        notes = (
            f"planner chose {chosen['plan']}: {chosen['measured_ms']:.1f} ms measured; best measured "
            f"{best['plan']}: {best['measured_ms']:.1f} ms; ratio {p['ratio']:.3f}",
        )
        header = ("partition", "predicted ms/token", "measured ms/token (min-max)")
        title = f"Partition sweep at {p['rate']} (two nodes{limit})"
        show.table(Table(title, header, rows, frozenset({1, 2}), notes))
    if "streams" in res:
        st = res["streams"]

        def span(d: dict, digits: int = 1) -> str:
            return f"{d['median']:.{digits}f} ({d['min']:.{digits}f}-{d['max']:.{digits}f})"

        rows = [(k, st["plans"][k], span(v)) for k, v in st["tok_s"].items()]
        notes = (
            f"2 nodes / 1 node, same {st['streams']} streams: {span(st['ratio_vs_1_node_same_streams'], 2)}; "
            f"2 nodes / 1 node with 1 stream: {span(st['ratio_vs_1_node_1_stream'], 2)}",
            "ratios taken within each round (same load), median (min-max) over the rounds",
            note,
        )
        title = f"{st['streams']} streams at once at {st['rate']}"
        show.table(
            Table(title, ("configuration", "plan", "aggregate tok/s (min-max)"), rows, frozenset({2}), notes)
        )


if __name__ == "__main__":
    main()
