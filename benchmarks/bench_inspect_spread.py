"""Honest services' own logprob spread against the substitutes', per ID and per position; false positives.

    flock /tmp/team/bench.lock .venv/bin/python benchmarks/bench_inspect_spread.py \\
        --only llamacpp-1t,llamacpp-2t --checks 200 --json docs/bench/inspect_spread.json

Each service -- `edgeinfer serve` with llama.cpp at 1 thread, 2 threads, continuous batching (4 requests at
a time, streamed and not), the shard engine, a 2-node loopback cluster (f32 wire), and the Q8_0 / Q2_K
substitutes served under Qwen's name -- is sent ``--checks`` IDs round-robin, in the inspector's own
request form (``Inspector.build_id_request``, logprobs with the top 5 alternatives). Every answer is
checked as the inspector checks it (``check_answer`` with the inspector's ``min_tolerance`` floor), and the
log probabilities it carries are kept per (ID, position, token): the chosen token and the alternatives the
reference also lists. Runs merge into ``--json`` (one stage at a time keeps each run short); ``--analyse``
prints, per (ID, position, token), the largest honest deviation from the reference against each
substitute's: what a per-ID tolerance could separate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inspect as bench  # noqa: E402

from edgeinfer.inspect.ids import IdSet, bundled_ids_path, check_answer, served_tolerances  # noqa: E402
from edgeinfer.inspect.inspector import (  # noqa: E402
    UNCALIBRATED_FLOOR,
    Inspector,
    InspectorConfig,
    first_k,
    parse_answer,
)
from edgeinfer.process import ServerProcess  # noqa: E402

HONEST = ("llamacpp-1t", "llamacpp-2t", "llamacpp-batched", "shard", "cluster")
SUBSTITUTES = ("quant:Q8_0", "quant:Q2_K")
TOP = 5


@contextmanager
def service(name: str, logs: Path) -> Iterator[str]:
    q = bench.REFERENCE
    args = {
        "llamacpp-1t": ["-m", q, "-t", "1", "--parallel", "1"],
        "llamacpp-2t": ["-m", q, "-t", "2", "--parallel", "1"],
        "llamacpp-batched": ["-m", q, "-t", "1"],
        "shard": ["-m", q, "--backend", "shard", "-t", "1"],
    }
    cm: AbstractContextManager[Any]
    if name in args:
        cm = ServerProcess(args[name], log=logs / f"{name}.log")
    elif name == "cluster":
        cm = bench.loopback_cluster(log_dir=logs)
    else:
        cm = bench.SubstituteServer(name, log=logs / f"{name.replace(':', '-')}.log")
    with cm as srv:
        yield srv.url


def _alternatives(raw: bytes, streamed: bool) -> list[dict[str, float]]:
    """Per generated token: {token text: logprob} of the top alternatives the answer lists."""
    docs = list(bench_sse(raw)) if streamed else [json.loads(raw)]
    out: list[dict[str, float]] = []
    for doc in docs:
        for choice in doc.get("choices") or ():
            lp = choice.get("logprobs") or {}
            for item in lp.get("content") or ():
                out.append({a["token"]: float(a["logprob"]) for a in item.get("top_logprobs") or ()})
    return out


def bench_sse(raw: bytes) -> Iterator[dict[str, Any]]:
    for line in raw.decode().splitlines():
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            yield json.loads(line[5:])


def probe(url: str, ids: IdSet, n: int, concurrency: int, stream_every: int = 0) -> dict[str, Any]:
    """``n`` ID checks (round-robin); every ``stream_every``-th streamed. Returns the tally and, per
    (ID, position, token), the logprobs seen."""
    inspector = Inspector(ids, InspectorConfig())
    endpoint = url.rstrip("/") + "/v1/chat/completions"
    client = httpx.Client(timeout=600)

    def one(i: int) -> tuple[int, Any, list[dict[str, float]]]:
        idx = i % len(ids.ids)
        chosen = ids.ids[idx]
        streamed = bool(stream_every) and i % stream_every == 0
        like = {"model": ids.model, "logprobs": True, "top_logprobs": TOP, "stream": streamed}
        req = inspector.build_id_request(chosen, endpoint, {}, like)
        resp = client.send(req)
        raw = resp.read()
        if resp.status_code != 200:
            return idx, None, []
        answer, _ = parse_answer(raw, streamed)
        result = check_answer(chosen, first_k(answer, chosen), inspector.min_tolerance)
        return idx, result, _alternatives(raw, streamed)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, range(n)))
    seconds = time.perf_counter() - t0
    client.close()
    inspector.close()
    seen: dict[str, list[float]] = {}
    for idx, _, alts in answers:
        for pos, (want, got) in enumerate(zip(ids.ids[idx].tokens, alts, strict=False)):
            for tok, _ in want.top:
                if tok in got:
                    seen.setdefault(f"{idx}/{pos}/{tok}", []).append(got[tok])
    checked = [r for _, r, _ in answers if r is not None]
    return {
        "checks": len(checked),
        "false_positives": sum(not r.passed for r in checked),
        "unanswered": len(answers) - len(checked),
        "max_logprob_gap": max((r.max_logprob_gap or 0.0 for r in checked), default=None),
        "failures": [r.reason for r in checked if not r.passed][:5],
        "seconds": round(seconds, 1),
        "logprobs": {k: [min(v), max(v)] for k, v in seen.items()},
    }


def analyse(ids: IdSet, doc: dict[str, Any]) -> dict[str, Any]:
    """Per (ID, position, token): the honest services' largest |logprob - reference| against each
    substitute's; how many of them a tolerance between the two could separate."""
    ref = {
        f"{i}/{p}/{tok}": lp
        for i, idn in enumerate(ids.ids)
        for p, t in enumerate(idn.tokens)
        for tok, lp in t.top
    }
    chosen = {f"{i}/{p}/{t.token}" for i, idn in enumerate(ids.ids) for p, t in enumerate(idn.tokens)}
    runs = doc.get("services", {})

    def dev(name: str, key: str) -> float | None:
        lo_hi = runs.get(name, {}).get("logprobs", {}).get(key)
        return None if lo_hi is None else max(abs(x - ref[key]) for x in lo_hi)

    out: dict[str, Any] = {"honest_services": [h for h in HONEST if h in runs]}
    for sub in SUBSTITUTES:
        if sub not in runs:
            continue
        rows = []
        for key in ref:
            honest = [d for h in HONEST if h in runs and (d := dev(h, key)) is not None]
            s = dev(sub, key)
            if s is None or len(honest) < len(out["honest_services"]):
                continue
            rows.append({"key": key, "chosen": key in chosen, "honest": max(honest), "sub": s})
        for label, sel in (("chosen", [r for r in rows if r["chosen"]]), ("all", rows)):
            ratios = sorted(r["sub"] / max(r["honest"], 1e-4) for r in sel)
            out[f"{sub} {label}"] = {
                "positions": len(sel),
                "honest_max_dev": _quantiles([r["honest"] for r in sel]),
                "substitute_dev": _quantiles([r["sub"] for r in sel]),
                "ratio_sub_over_honest": _quantiles(ratios),
                "separable_2x": sum(
                    r["sub"] > 2 * r["honest"] and r["sub"] - r["honest"] > 0.02 for r in sel
                ),
                "ids_with_a_separable_chosen_token": len(
                    {
                        r["key"].split("/")[0]
                        for r in sel
                        if r["chosen"] and r["sub"] > 2 * r["honest"] and r["sub"] - r["honest"] > 0.02
                    }
                ),
            }
    return out


def chosen_spread(ids: IdSet, doc: dict[str, Any], services: list[str]) -> dict[int, float]:
    """Per ID: the largest |served - reference| log probability of a chosen token over ``services``."""
    out: dict[int, float] = {}
    for n, idn in enumerate(ids.ids):
        for p, t in enumerate(idn.tokens):
            for name in services:
                lo_hi = doc["services"][name]["logprobs"].get(f"{n}/{p}/{t.token}")
                if lo_hi is not None:
                    out[n] = max(out.get(n, 0.0), *(abs(x - t.logprob) for x in lo_hi))
    return out


def held_out(ids: IdSet, doc: dict[str, Any], services: list[str], floor: float) -> dict[str, Any]:
    """Would any answer of ``services`` fail a check at ``ids``' tolerances (at least ``floor``)? From the
    per-token extremes: 0 when every chosen token stayed within its ID's tolerance."""
    out: dict[str, Any] = {}
    for name in services:
        spread = chosen_spread(ids, doc, [name])
        over = {
            n: round(spread[n], 4)
            for n, i in enumerate(ids.ids)
            if n in spread and spread[n] > max(i.tolerance, floor)
        }
        out[name] = {"checks": doc["services"][name]["checks"], "ids_over_tolerance": over}
    return out


def substitute_detection(ids: IdSet, doc: dict[str, Any], floor: float) -> dict[str, str]:
    """Per substitute: on how many IDs its (deterministic) logprobs leave the tolerance, as x/16."""
    out = {}
    for sub in SUBSTITUTES:
        if sub in doc["services"]:
            spread = chosen_spread(ids, doc, [sub])
            caught = sum(
                1
                for n, i in enumerate(ids.ids)
                if n not in spread or spread[n] > max(i.tolerance, floor) or i.caught_by.get(sub) == "text"
            )
            out[sub] = f"{caught}/{len(ids.ids)}"
    return out


def _quantiles(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    xs = sorted(xs)
    q = lambda f: round(xs[min(len(xs) - 1, int(f * len(xs)))], 4)  # noqa: E731
    return {"min": round(xs[0], 4), "p50": q(0.5), "p90": q(0.9), "max": round(xs[-1], 4)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", type=Path, default=bundled_ids_path(bench.REFERENCE))
    ap.add_argument("--only", default=",".join(HONEST + SUBSTITUTES), help="comma-separated services")
    ap.add_argument("--checks", type=int, default=200, help="ID checks per honest service")
    ap.add_argument("--json", type=Path, required=True, help="results (merged into an existing file)")
    ap.add_argument("--analyse", action="store_true", help="only print the analysis of --json")
    ap.add_argument("--calibrate", type=Path, default=None, help="write IDs with served tolerances here")
    ap.add_argument("--on", default="llamacpp-batched,llamacpp-1t,shard", help="services to calibrate on")
    ap.add_argument("--factor", type=float, default=2.0, help="tolerance = factor x the served spread")
    args = ap.parse_args(argv)
    ids = IdSet.load(args.ids)
    doc = json.loads(args.json.read_text()) if args.json.exists() else {"services": {}}
    if not args.analyse:
        logs = Path(tempfile.mkdtemp(prefix="bench-inspect-spread-"))
        for name in args.only.split(","):
            n = len(ids.ids) * 2 if name in SUBSTITUTES else args.checks
            batched = name == "llamacpp-batched"
            with service(name, logs) as url:
                res = probe(url, ids, n, concurrency=4 if batched else 1, stream_every=2 if batched else 0)
            prev = doc["services"].get(name)
            if prev and name not in SUBSTITUTES:  # another run of the same service: add it up
                res = _merge(prev, res)
            doc["services"][name] = res
            print(name, {k: v for k, v in res.items() if k != "logprobs"}, flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=1) + "\n")
    doc["analysis"] = analyse(ids, doc)
    measured = [h for h in HONEST if h in doc["services"]]
    doc["analysis"]["uncalibrated"] = {
        "held_out": held_out(ids, doc, measured, UNCALIBRATED_FLOOR),
        "detection": substitute_detection(ids, doc, UNCALIBRATED_FLOOR),
    }
    if args.calibrate:
        on = args.on.split(",")
        cal = served_tolerances(ids, chosen_spread(ids, doc, on), on, factor=args.factor)
        cal.save(args.calibrate)
        doc["analysis"]["calibrated"] = {
            "on": on,
            "factor": args.factor,
            "tolerances": [i.tolerance for i in cal.ids],
            "held_out": held_out(cal, doc, [h for h in measured if h not in on], 0.0),
            "calibration_runs": held_out(cal, doc, on, 0.0),
            "detection": substitute_detection(cal, doc, 0.0),
        }
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["analysis"], indent=1))


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    lp = dict(a["logprobs"])
    for k, (lo, hi) in b["logprobs"].items():
        lp[k] = [min(lo, lp[k][0]), max(hi, lp[k][1])] if k in lp else [lo, hi]
    gaps = [g for g in (a["max_logprob_gap"], b["max_logprob_gap"]) if g is not None]
    return {
        "checks": a["checks"] + b["checks"],
        "false_positives": a["false_positives"] + b["false_positives"],
        "unanswered": a["unanswered"] + b["unanswered"],
        "max_logprob_gap": max(gaps, default=None),
        "failures": (a["failures"] + b["failures"])[:5],
        "seconds": round(a["seconds"] + b["seconds"], 1),
        "logprobs": lp,
    }


if __name__ == "__main__":
    main()
