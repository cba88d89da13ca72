"""Edge<->edge pipeline benchmark on the namespace test-bed (needs root).

1. decode tok/s of 1, 2 and 3 nodes (equal contiguous split) at several link rates, and the N-node / 1-node
   ratio. All nodes share this machine's cores (one thread each by default), so a pipeline cannot be faster
   than one node here: the ratio shows what the network and the RPC hops cost.
2. planner choice vs. the best measured partition of two nodes (every split point, and each node alone);
   with --sweep-memory-limit each node may hold only that much, so the planner has to split the model.
3. predicted vs. measured per-token latency for every configuration.

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

from edgeinfer.cluster.gateway import ClusterError, load_cluster
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import complete
from edgeinfer.engine.shard import layer_count
from edgeinfer.models.registry import resolve
from edgeinfer.testbed.cluster import start_nodes
from edgeinfer.testbed.netns import Testbed

PROMPT = "Write a short story about a robot who learns to paint."


def measure(cfg_path: Path, tokens: int) -> dict:
    t0 = time.monotonic()
    backend = load_cluster(cfg_path)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=tokens)
        complete(backend, backend.tokenize("Hello"), SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
        r = complete(backend, backend.tokenize(PROMPT), params)
        ms = statistics.median(r.token_times) * 1e3
        return {
            "plan": backend.plan.describe(),
            "predicted_ms": backend.plan.latency * 1e3,
            "measured_ms": ms,
            "tok_s": 1e3 / ms,
            "tokens": r.completion_tokens,
            "load1": os.getloadavg()[0],
            "seconds": time.monotonic() - t0,
        }
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--rates", default="1gbit,100mbit,10mbit")
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="threads per node")
    ap.add_argument("--partition-rate", default="1gbit", help="link rate of the partition sweep ('' to skip)")
    ap.add_argument("--sweep-step", type=int, default=4, help="layers between the split points of the sweep")
    ap.add_argument(
        "--sweep-memory-limit",
        default=None,
        help="per-node memory limit of the partition sweep, e.g. 300MB (layouts that do not fit are skipped)",
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    _, path = resolve(args.model)
    n_layers = layer_count(path)
    counts = [int(x) for x in args.nodes.split(",")]
    results: dict = {
        "model": args.model,
        "threads": args.threads,
        "load_before": os.getloadavg(),
        "scaling": [],
    }
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    with Testbed(max(counts), rate="1gbit") as tb:
        specs = start_nodes(tb, threads=args.threads, log_dir=work)
        names = [s.name for s in specs]
        for rate in args.rates.split(","):
            for i in range(len(specs)):
                tb.set_rate(i, rate)
            for n in counts:
                cfg = write_cfg(
                    work / f"{rate}-{n}.yaml", str(path), specs, equal_stages(names[:n], n_layers)
                )
                r = measure(cfg, args.tokens) | {"rate": rate, "nodes": n}
                results["scaling"].append(r)
                print(json.dumps(r), file=sys.stderr)
        if args.partition_rate:
            for i in range(len(specs)):
                tb.set_rate(i, args.partition_rate)
            two = specs[:2]
            sweep = []
            layouts = [[("n0", 0, n_layers)], [("n1", 0, n_layers)]]
            layouts += [
                [("n0", 0, c), ("n1", c, n_layers)] for c in range(args.sweep_step, n_layers, args.sweep_step)
            ]
            limit = args.sweep_memory_limit
            for stages in layouts:
                cfg = write_cfg(work / "sweep.yaml", str(path), two, stages, memory_limit=limit)
                try:
                    r = measure(cfg, args.tokens)
                except ClusterError as exc:  # a fixed layout beyond the memory limit
                    print(f"skipped {stages}: {exc}", file=sys.stderr)
                    continue
                sweep.append(r)
                print(json.dumps(r), file=sys.stderr)
            cfg = write_cfg(work / "auto.yaml", str(path), two, memory_limit=limit)
            chosen = measure(cfg, args.tokens)
            best = min(sweep, key=lambda r: r["measured_ms"])
            results["partition"] = {
                "rate": args.partition_rate,
                "memory_limit": limit,
                "sweep": sweep,
                "planner": chosen,
                "best": best,
                "ratio": chosen["measured_ms"] / best["measured_ms"],
            }
    results["load_after"] = os.getloadavg()
    print_tables(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def print_tables(res: dict) -> None:
    print(f"\nmodel {res['model']}, {res['threads']} thread(s) per node, load {res['load_before'][0]:.1f}")
    print("\n| link | nodes | plan | tok/s | vs 1 node | predicted ms/token | measured ms/token |")
    print("|---|---|---|---|---|---|---|")
    base = {r["rate"]: r["tok_s"] for r in res["scaling"] if r["nodes"] == 1}
    for r in res["scaling"]:
        ratio = r["tok_s"] / base[r["rate"]] if r["rate"] in base else float("nan")
        print(f"| {r['rate']} | {r['nodes']} | {r['plan']} | {r['tok_s']:.1f} | {ratio:.2f} | "
              f"{r['predicted_ms']:.1f} | {r['measured_ms']:.1f} |")  # fmt: skip
    if "partition" in res:
        p = res["partition"]
        limit = f", memory limit {p['memory_limit']} per node" if p.get("memory_limit") else ""
        print(f"\npartition sweep at {p['rate']} (two nodes{limit}):\n")
        print("| partition | predicted ms/token | measured ms/token |")
        print("|---|---|---|")
        for r in p["sweep"]:
            print(f"| {r['plan']} | {r['predicted_ms']:.1f} | {r['measured_ms']:.1f} |")
        chosen, best = p["planner"], p["best"]
        print(f"\nplanner chose {chosen['plan']}: {chosen['measured_ms']:.1f} ms measured; best measured")
        print(f"{best['plan']}: {best['measured_ms']:.1f} ms; ratio {p['ratio']:.3f}")


if __name__ == "__main__":
    main()
