"""Speculative decoding on one device (issue 14): decode tok/s speculative vs plain on the same backend.

Two built-in workloads: ``code`` (CODE_EDIT_PROMPTS: prompts that ask to change a given function and return
it, where the answer copies most of the prompt) and ``chat`` (CHAT_PROMPTS: free-form questions, where prompt
lookup finds little). Each backend is loaded once; every prompt is decoded greedily plain and speculative
(``SpeculativeDecoder`` around the same loaded model), the order alternating per prompt, in ``--rounds``
rounds (load drifts hit both alike). Reported per round: decode tok/s of each mode (tokens after the first /
their time, summed over the workload), the ratio speculative / plain (median and spread over rounds), the
acceptance rate, tokens per pass, and whether both produced the same tokens. With ``--roofline`` (a
``bench roofline`` run file) the single-token decode bound of the device is printed next to the speed.

    flock /tmp/edgeinfer-bench.lock .venv/bin/python benchmarks/bench_speculative.py -m qwen \\
        --backend llamacpp --backend shard -t 2 --rounds 3 --roofline docs/bench/roofline-t2.json \\
        --out docs/bench/speculative.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.chat import build_chat_prompt
from edgeinfer.engine.generate import complete
from edgeinfer.engine.load import LoadOptions, open_backend, speculative_backend
from edgeinfer.engine.speculative import SpeculativeDecoder

_FUNCS = {
    "mean": """def mean(values):
    total = 0
    count = 0
    for v in values:
        total += v
        count += 1
    if count == 0:
        return 0
    return total / count
""",
    "parse": """def parse_config(text):
    config = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        config[key.strip()] = value.strip()
    return config
""",
    "fetch": """def fetch_user(db, user_id):
    row = db.execute("SELECT id, name, email FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        return None
    user = {"id": row[0], "name": row[1], "email": row[2]}
    return user
""",
    "stack": """class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

    def peek(self):
        return self.items[-1]
""",
    "binsearch": """def binary_search(items, target):
    lo = 0
    hi = len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
""",
}


def _edit(instruction: str, func: str) -> str:
    return f"{instruction} Return the whole changed code only.\n\n```python\n{_FUNCS[func]}```"


CODE_EDIT_PROMPTS = [
    _edit("Rename the function mean to average.", "mean"),
    _edit("Add type hints to this function (values: list[float], returns float).", "mean"),
    _edit("Make parse_config ignore lines without an '=' sign instead of failing.", "parse"),
    _edit("Add a docstring to parse_config.", "parse"),
    _edit("Rename the parameter db to conn everywhere in this function.", "fetch"),
    _edit("Make fetch_user raise KeyError instead of returning None when the user does not exist.", "fetch"),
    _edit("Add an is_empty method to this class.", "stack"),
    _edit("Make pop and peek raise IndexError('empty stack') when the stack is empty.", "stack"),
    _edit("Rename the variables lo and hi to low and high.", "binsearch"),
    _edit("Add a comment above each line of the loop body explaining it.", "binsearch"),
]

CHAT_PROMPTS = [
    "Explain in a few sentences why the sky is blue.",
    "Give me three ideas for a weekend trip with children.",
    "What is the difference between a process and a thread?",
    "Write a short poem about autumn leaves.",
    "How do I make a good cup of tea?",
    "Summarise the plot of a detective story you invent, in one paragraph.",
]

WORKLOADS = {"code": CODE_EDIT_PROMPTS, "chat": CHAT_PROMPTS}


@dataclass
class Tally:
    tokens: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class Round:
    plain: Tally = field(default_factory=Tally)
    spec: Tally = field(default_factory=Tally)
    same: int = 0  # prompts whose speculative tokens equal the plain ones
    prompts: int = 0

    @property
    def ratio(self) -> float:
        return self.spec.tps / self.plain.tps if self.plain.tps else 0.0


def decode(backend, prompt: list[int], max_tokens: int) -> tuple[int, float, str]:
    """(tokens after the first, their seconds, the text) of one greedy generation."""
    r = complete(backend, prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    assert r.ttft is not None
    return r.completion_tokens - 1, r.total - r.ttft, r.text


COST_SIZES = (1, 2, 3, 4, 5, 8, 9, 16, 17)


def verify_cost(backend, prompt: list[int], repeats: int) -> dict:
    """What a verification pass costs: seconds of one pass of n positions (logits for all, as speculative
    decoding asks) after ``prompt``, rolled back after each; per repeat every size is timed in turn and
    divided by that repeat's one-position pass, so load drifts hit the ratio less than the absolute times."""
    seq = backend.open_sequence()
    try:
        seq.feed(prompt)
        base = seq.length
        times: dict[int, list[float]] = {n: [] for n in COST_SIZES}
        seq.feed(prompt[:4], all_logits=True)  # warm-up (allocations for several rows)
        seq.truncate(base)
        for _ in range(repeats):
            for n in COST_SIZES:
                ids = (prompt * (n // len(prompt) + 1))[:n]
                t = time.perf_counter()
                seq.feed(ids, all_logits=True)
                times[n].append(time.perf_counter() - t)
                seq.truncate(base)
    finally:
        seq.close()
    ratios = {n: [t / t1 for t, t1 in zip(times[n], times[1], strict=True)] for n in COST_SIZES}
    return {
        "one_position_ms_median": 1000 * statistics.median(times[1]),
        "ratio": {
            str(n): {"median": statistics.median(r), "min": min(r), "max": max(r)} for n, r in ratios.items()
        },
    }


def chat_tokens(backend, text: str) -> list[int]:
    if backend.info.chat_template:
        return build_chat_prompt(backend, [{"role": "user", "content": text}]).tokens
    return backend.tokenize(text)


def run_backend(args, kind: str, save, out: dict) -> dict:
    """Every round of every workload on one backend, into ``out`` (saved after each round)."""
    options = LoadOptions(kind, n_ctx=args.ctx_size, threads=args.threads)
    plain = open_backend(args.model, options)
    spec = speculative_backend(
        plain, replace(options, speculative=args.speculative, draft_max=args.draft_max)
    )
    assert isinstance(spec, SpeculativeDecoder)
    try:
        if args.cost_repeats:
            out["verify_cost"] = cost = verify_cost(
                plain, chat_tokens(plain, CODE_EDIT_PROMPTS[0]), args.cost_repeats
            )
            save()
            print(
                f"{kind} verify cost, n positions / 1 ({cost['one_position_ms_median']:.0f} ms), "
                "median [min, max]: "
                + ", ".join(
                    f"{n}: {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]"
                    for n, r in cost["ratio"].items()
                ),
                flush=True,
            )
        for name in args.workload:
            prompts = [chat_tokens(plain, p) for p in WORKLOADS[name][: args.prompts]]
            decode(plain, prompts[0], 8)  # warm-up (first-call allocations, kernel builds)
            rounds: list[Round] = []
            before = spec.spec_stats.snapshot()
            for r in range(args.rounds):
                rd = Round()
                for i, prompt in enumerate(prompts):
                    order = [("plain", plain), ("spec", spec)]
                    if (i + r) % 2:
                        order.reverse()
                    texts = {}
                    for mode, b in order:
                        n, secs, texts[mode] = decode(b, prompt, args.max_tokens)
                        getattr(rd, mode).add(n, secs)
                    rd.prompts += 1
                    rd.same += texts["plain"] == texts["spec"]
                rounds.append(rd)
                out["workloads"][name] = summary(rounds, spec.spec_stats.since(before))
                save()
                print(
                    f"{kind} {name} round {r + 1}: plain {rd.plain.tps:.1f} tok/s, "
                    f"speculative {rd.spec.tps:.1f} tok/s, ratio {rd.ratio:.2f}, "
                    f"same text {rd.same}/{rd.prompts}",
                    flush=True,
                )
    finally:
        plain.close()
    return out


def summary(rounds: list[Round], stats) -> dict:  # type: ignore[no-untyped-def]
    ratios = [rd.ratio for rd in rounds]
    return {
        "rounds": [
            {
                "plain_tps": rd.plain.tps,
                "spec_tps": rd.spec.tps,
                "ratio": rd.ratio,
                "plain_tokens": rd.plain.tokens,
                "spec_tokens": rd.spec.tokens,
                "same_text": rd.same,
                "prompts": rd.prompts,
            }
            for rd in rounds
        ],
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "plain_tps_median": statistics.median(rd.plain.tps for rd in rounds),
        "spec_tps_median": statistics.median(rd.spec.tps for rd in rounds),
        "acceptance_rate": stats.acceptance_rate,
        "tokens_per_pass": stats.tokens_per_pass,
        "positions_per_pass": (stats.drafted + stats.passes) / stats.passes if stats.passes else 0.0,
        "drafted": stats.drafted,
        "accepted": stats.accepted,
        "passes": stats.passes,
    }


def roofline_bound(path: Path | None, model_name: str) -> float | None:
    if path is None:
        return None
    doc = json.loads(path.read_text())
    for row in doc.get("results", []):
        if row.get("model") == model_name:
            return float(row["decode"]["bound_tps"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="qwen")
    ap.add_argument("--backend", action="append", choices=["llamacpp", "shard"])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--ctx-size", type=int, default=2048)
    ap.add_argument("--speculative", default="ngram", help="ngram or exit:K")
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=100, help="at most this many prompts per workload")
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS))
    ap.add_argument("--roofline", type=Path, help="a `bench roofline` run file: print the decode bound")
    ap.add_argument(
        "--cost-repeats",
        type=int,
        default=5,
        help="time verification passes of 1..17 positions this many times per backend first (0: skip)",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.backend = args.backend or ["llamacpp"]
    args.workload = args.workload or ["code", "chat"]
    from edgeinfer.models.registry import served_name

    bound = roofline_bound(args.roofline, served_name(args.model))
    load0 = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: list[dict] = []

    def save() -> None:
        if args.out:
            doc = {
                "kind": "speculative",
                "created": started,
                "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "host": {"loadavg_1m": load0, "loadavg_1m_end": os.getloadavg()[0], "cpus": os.cpu_count()},
                "roofline_bound_tps": bound,
                "results": results,
            }
            args.out.write_text(json.dumps(doc, indent=2))

    for kind in args.backend:
        results.append({"backend": kind, "workloads": {}})
        results[-1] = run_backend(args, kind, save, results[-1])
        save()
    load1 = os.getloadavg()[0]
    print(
        f"\nSummary ({args.speculative}, draft max {args.draft_max}, {args.threads} threads, "
        f"load {load0:.1f} -> {load1:.1f}):"
    )
    print(
        "| backend | workload | plain tok/s | speculative tok/s | ratio median [min, max] | acceptance | "
        "tokens/pass | positions/pass | same text |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for res in results:
        for name, w in res["workloads"].items():
            same = sum(r["same_text"] for r in w["rounds"])
            total = sum(r["prompts"] for r in w["rounds"])
            print(
                f"| {res['backend']} | {name} | {w['plain_tps_median']:.1f} | {w['spec_tps_median']:.1f} | "
                f"{w['ratio_median']:.2f} [{w['ratio_min']:.2f}, {w['ratio_max']:.2f}] | "
                f"{100 * w['acceptance_rate']:.0f} % | {w['tokens_per_pass']:.2f} | "
                f"{w['positions_per_pass']:.2f} | {same}/{total} |"
            )
    if bound is not None:
        print(f"single-token decode roofline bound ({args.roofline}): {bound:.1f} tok/s")


if __name__ == "__main__":
    main()
