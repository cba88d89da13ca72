"""Quality inspection of a split-computing edge server (DNN IDs, docs/inspect.md "DNN IDs"), measured.

    .venv/bin/python benchmarks/bench_inspect_dnn.py --model digitnet --json docs/bench/inspect_dnn.json

1. ID generation: sensitive samples for the zoo model (time, file size, top-1 margins, ranking scores).
2. Per-ID detection probability of every substitute (int8, 30 % pruned, early exit, retrained): the fraction
   of requests to the final exit, over every cut the edge works at and every wire dtype, whose answer fails
   its check -- with the model at hand (a split device: local reference on the same bytes) and without it
   (stored logits, per wire dtype).
3. False positives: honest answers at 1 and 2 torch threads, every exit, cut and wire dtype, batches of 1 and
   of all IDs, judged both ways.
4. Requests to a "substituted" verdict when a fraction f of requests goes to the int8 substitute, for several
   inspection rates: the real ``DnnInspector`` over an in-process edge (``send`` runs the tail of the honest
   or the substitute model; answers are memoised by payload, so 10^5 requests cost seconds), median of
   ``--seeds`` runs; plus the measured overhead (extra requests and bytes) at the default rate.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from edgeinfer.bench.table import Output, Table
from edgeinfer.inspect import dnn
from edgeinfer.inspect.stats import model_test
from edgeinfer.split.compress import DTYPES, decode, encode
from edgeinfer.split.runner import run_segment


def false_positives(ids: dnn.DnnIdSet, honest) -> tuple[int, int]:
    checks = dnn.sweep(ids, honest, honest, threads=(1, 2), batched=True)
    return len(checks), sum(not c.passed for c in checks)


def stored_detection(ids: dnn.DnnIdSet, honest, sub) -> dict[str, float]:
    """Per wire dtype: the fraction of requests (every ID, every cut) a substitute fails against the stored
    logits (a client without the model)."""
    checks = [c for c in dnn.sweep(ids, honest, sub, batched=False) if c.reference == "stored"]
    return {
        d: sum(not c.passed for c in checks if c.dtype == d) / sum(c.dtype == d for c in checks)
        for d in DTYPES
    }


class MemoEdge:
    """An in-process edge answering like the edge app; a fraction ``f`` of requests go to ``sub``."""

    def __init__(self, honest, sub, f: float, seed: int):
        self.models = {"honest": honest, "sub": sub}
        self.f, self.rng, self.memo = f, random.Random(seed), {}

    def __call__(self, params: dict, payload: bytes) -> dict:
        which = "sub" if self.rng.random() < self.f else "honest"
        key = (which, params["exit"], int(params["cut"]), payload)
        if key not in self.memo:
            m = self.models[which]
            seg = run_segment(
                m, params["exit"], decode(payload), int(params["cut"]), len(m.path(params["exit"]))
            )
            self.memo[key] = {"exit": params["exit"], "logits": [round(float(v), 5) for v in seg.out[0]]}
        return self.memo[key]


def to_verdict(ids, honest, sub, f: float, rate: float, seed: int, limit: int, frames) -> dict:
    edge = MemoEdge(honest, sub, f, seed)
    inspector = dnn.DnnInspector(ids, None, rate=rate, model_test=model_test(q=0.01), seed=seed)
    params = {"model": ids.model, "exit": "final", "cut": 0}
    payloads = [encode(frames[i : i + 1], "f16", "lz4") for i in range(len(frames))]
    for k in range(limit):
        inspector.call(edge, params, payloads[k % len(payloads)])
        if inspector.model_test.verdict.decided:
            break
    r = inspector.report()
    return {"decision": r.model.decision.value, "requests": r.requests, "ids": r.id_requests}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digitnet")
    ap.add_argument("--n", type=int, default=8, help="IDs to keep")
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--fractions", default="1,0.1,0.01")
    ap.add_argument("--rates", default="0.005,0.05,0.5")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=200_000, help="requests per run at most")
    ap.add_argument("--ids-out", default=None, help="also save the ID file here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Output()
    doc: dict = {"model": args.model}

    t0 = time.perf_counter()
    ids = dnn.make_ids(args.model, dnn.IdConfig(n=args.n, candidates=args.candidates, steps=args.steps))
    gen_s = time.perf_counter() - t0
    size = len(json.dumps(ids.to_dict()))
    if args.ids_out:
        ids.save(args.ids_out)
    doc["generation"] = {"seconds": round(gen_s, 1), "bytes": size, "config": ids.to_dict()["config"]}
    rows = [
        (str(k), str(i.label), f"{i.margin:.2f}", f"{i.score:.1f}", f"{i.tolerance['f16']:.4f}",
         f"{i.tolerance['int8']:.4f}")
        for k, i in enumerate(ids.ids)
    ]  # fmt: skip
    out.table(
        Table(
            f"{args.model}: {len(ids.ids)} sensitive-sample IDs in {gen_s:.0f} s, {size} bytes of JSON",
            ("ID", "digit", "top-1 margin", "score", "tol f16", "tol int8"),
            rows,
            frozenset({2, 3, 4, 5}),
        )
    )

    net, honest = dnn.reference(args.model)
    subs = {k: dnn.substitute(net, k, args.model) for k in dnn.SUBSTITUTES}
    table = dnn.detection_table(ids, honest, subs)
    stored = {k: stored_detection(ids, honest, s) for k, s in subs.items()}
    doc["detection"] = {"local": table, "stored": stored}
    rows = [
        (k, f"{min(table[k].values()):.3f}", f"{statistics.mean(table[k].values()):.3f}",
         *(f"{stored[k][d]:.3f}" for d in DTYPES))
        for k in subs
    ]  # fmt: skip
    out.table(
        Table(
            "Per-ID detection probability of full substitution (one ID check)",
            (
                "substitute",
                "local ref: min over IDs",
                "local: mean",
                *(f"stored ref, {d}" for d in DTYPES),
            ),
            rows,
            frozenset(range(1, 3 + len(DTYPES))),
        )
    )

    checks, failed = false_positives(ids, honest)
    doc["false_positives"] = {"checks": checks, "failed": failed}
    out.table(
        Table(
            "Honest answers (threads 1/2, every cut and wire dtype, batch 1 and all IDs, both references)",
            ("checks", "false positives"),
            [(str(checks), str(failed))],
            frozenset({0, 1}),
        )
    )

    frames = dnn.zoo.dataset(args.model)["test"].x[:64]
    runs = []
    for f in (float(v) for v in args.fractions.split(",")):
        for rate in (float(v) for v in args.rates.split(",")):
            res = [
                to_verdict(ids, honest, subs["int8"], f, rate, s, args.limit, frames)
                for s in range(args.seeds)
            ]
            caught = sum(r["decision"] == "substituted" for r in res)
            runs.append(
                {"f": f, "rate": rate, "caught": caught, "runs": len(res),
                 "requests_median": statistics.median(r["requests"] for r in res),
                 "ids_median": statistics.median(r["ids"] for r in res)}
            )  # fmt: skip
    doc["to_verdict"] = runs
    out.table(
        Table(
            "Requests to a 'substituted' verdict (int8 substitute on a fraction f; SPRT q = 0.01, "
            f"median of {args.seeds} runs)",
            ("f", "rate", "caught", "requests", "ID checks"),
            [(f"{r['f']:g}", f"{r['rate']:g}", f"{r['caught']}/{r['runs']}", f"{r['requests_median']:.0f}",
              f"{r['ids_median']:.0f}") for r in runs],
            frozenset({0, 1, 3, 4}),
        )
    )  # fmt: skip

    edge = MemoEdge(honest, honest, 0.0, 0)
    inspector = dnn.DnnInspector(ids, honest, seed=0)  # the default rate
    sent = {
        (i, cut): encode(honest.path("final").run(frames[i : i + 1], 0, cut), "f16", "lz4")
        for i in range(len(frames))
        for cut in range(4)
    }
    for k in range(20_000):
        cut = k % 4
        inspector.call(edge, {"model": args.model, "exit": "final", "cut": cut}, sent[k % len(frames), cut])
    r = inspector.report()
    doc["overhead"] = {"rate": inspector.rate, **r.to_dict()}
    out.table(
        Table(
            f"Overhead at the default rate {inspector.rate:g} (20 000 requests, cuts 0-3, f16+lz4)",
            ("ID requests", "request overhead", "byte overhead", "model verdict", "after IDs"),
            [(str(r.id_requests), f"{100 * r.overhead:.2f} %", f"{100 * r.byte_overhead:.2f} %",
              r.model.decision.value, str(r.model.n))],
            frozenset({0, 1, 2, 4}),
        )
    )  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
