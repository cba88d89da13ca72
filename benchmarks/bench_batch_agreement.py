"""How often llama.cpp's greedy output in a batch differs from the same sequence's output alone, and
whether every difference starts at a near-tie (issue 12, item 5).

    .venv/bin/python benchmarks/bench_batch_agreement.py --model qwen --model gemma --tokens 48

Per model: one ``LlamaCppBatchBackend`` with ``--slots`` slots; each of the ``bench serve`` prompts is
decoded greedily alone, then the prompts are decoded ``--slots`` at a time, the last of each group joining
the running batch a few steps late (so it is prefilled next to decoding rows). For every sequence the first
position where the two token streams differ is reported with the top-2 logit margin there (on the alone
run). Timing is not measured (no bench lock needed); results are deterministic for a given build.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeinfer.bench.agreement import Recorder, decode_together
from edgeinfer.bench.serve import PROMPTS
from edgeinfer.engine.llamacpp_batch import LlamaCppBatchBackend
from edgeinfer.models.registry import resolve


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--join-after", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    report = []
    for spec in args.model or ["qwen", "gemma"]:
        name, path = resolve(spec, progress=False)
        b = LlamaCppBatchBackend(path, n_ctx=512, n_slots=args.slots, threads=args.threads)
        try:
            prompts = [b.tokenize(p) for p in PROMPTS]
            alone = [decode_together(b, [p], args.tokens, 0)[0] for p in prompts]
            batched: list[Recorder] = []
            for g in range(0, len(prompts), args.slots):
                batched += decode_together(b, prompts[g : g + args.slots], args.tokens, args.join_after)
        finally:
            b.close()
        diffs = []
        for i, (a, t) in enumerate(zip(alone, batched, strict=True)):
            pos = next((k for k, (x, y) in enumerate(zip(a.tokens, t.tokens, strict=True)) if x != y), None)
            if pos is not None:
                diffs.append({"prompt": i, "position": pos, "margin_alone": a.margins[pos]})
        row = {"model": name, "sequences": len(prompts), "tokens": args.tokens, "differ": diffs}
        report.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
