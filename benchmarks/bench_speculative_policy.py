"""Why speculative decoding gains what it gains: drafting policies replayed over plain greedy answers.

Greedy speculative decoding emits exactly the plain greedy tokens, so how many positions each pass verifies
and how many tokens it yields depend only on the drafter, the draft-length policy and those tokens, not on
the speed of the machine. This script decodes the workloads of ``bench_speculative.py`` plainly once, then
replays drafting policies over the answers (no model involved):

- ``before``: the draft length grows by one per fully accepted draft, the n-gram draft is as long as asked;
- ``now``: the shipped ``DraftLength`` (doubling) and ``NgramDrafter`` (draft no longer than the match's
  depth);
- ``oracle``: the n-gram draft cut to exactly what will be accepted (no position wasted): the bound of any
  draft-length policy with this drafter and draft max.

With ``--cost`` (a ``bench_speculative.py`` run file with ``verify_cost``) it turns passes into the speedup
they imply on that backend: tokens ÷ Σ cost(positions of each pass), cost(n) = the measured time of a pass of
n positions ÷ one position (interpolated between measured sizes). Decode tok/s of plain decoding cannot be
beaten by more than this, whatever the load.

    .venv/bin/python benchmarks/bench_speculative_policy.py -m qwen --draft-max 16 \\
        --cost docs/bench/speculative.json --answers docs/bench/speculative-answers.json \\
        --out docs/bench/speculative-policy.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from bench_speculative import WORKLOADS, chat_tokens

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.draft import Draft, DraftLength, NgramDrafter
from edgeinfer.engine.load import LoadOptions, open_backend


class LinearLength(DraftLength):
    """The earlier policy: one token more per fully accepted draft."""

    def update(self, drafted: int, accepted: int) -> None:
        k = self.k
        super().update(drafted, accepted)
        if drafted and accepted == drafted:
            self.k = min(self.k_max, k + 1)


class FullNgramDrafter(NgramDrafter):
    """The earlier drafter: the continuation of the match, as long as asked whatever the match's depth."""

    def propose(self, history: Sequence[int], k: int, sampler=None) -> Draft:  # type: ignore[no-untyped-def]
        if k <= 0 or len(history) < self.n_min:
            return Draft([])
        self._extend(history)
        for n in range(min(self.n_max, len(history)), self.n_min - 1, -1):
            start = self._index.get(tuple(history[len(history) - n :]))
            if start is not None:
                return Draft(list(history[start : start + k]))
        return Draft([])


def replay(
    prompt: list[int], answer: list[int], length: DraftLength, drafter: NgramDrafter, oracle: bool = False
) -> list[tuple[int, int]]:
    """(positions verified, tokens emitted) of every pass of greedy speculative decoding of ``answer``."""
    history, i, passes = list(prompt), 0, []
    while i < len(answer):
        k = min(length.next(), len(answer) - i)
        draft = drafter.propose(history, k).tokens if k > 0 else []
        accepted = 0
        while accepted < len(draft) and draft[accepted] == answer[i + accepted]:
            accepted += 1
        if oracle:
            draft = draft[:accepted]
        emitted = min(accepted + 1, len(answer) - i)
        length.update(len(draft), accepted)
        history.extend(answer[i : i + emitted])
        i += emitted
        passes.append((len(draft) + 1, emitted))
    return passes


def interpolate(pts: list[tuple[int, float]], n: int) -> float:
    for (n0, c0), (n1, c1) in zip(pts, pts[1:], strict=False):
        if n0 <= n <= n1:
            return c0 + (c1 - c0) * (n - n0) / (n1 - n0)
    (n0, c0), (n1, c1) = pts[-2], pts[-1]  # beyond the last size: its slope
    return c1 + (c1 - c0) * (n - n1) / (n1 - n0)


def cost_curve(path: Path, backend: str) -> Callable[[int], float] | None:
    """cost(n): a verification pass of n positions ÷ one position, from a bench_speculative.py run file."""
    for res in json.loads(path.read_text()).get("results", []):
        if res.get("backend") == backend and "verify_cost" in res:
            pts = sorted((int(n), r["median"]) for n, r in res["verify_cost"]["ratio"].items())
            return lambda n: interpolate(pts, n)
    return None


def decode_answers(args) -> dict[str, list[tuple[list[int], list[int]]]]:  # type: ignore[no-untyped-def]
    """(prompt, plain greedy answer) token ids of every prompt of every workload."""
    backend = open_backend(args.model, LoadOptions(args.backend, n_ctx=2048, threads=args.threads))
    answers: dict[str, list[tuple[list[int], list[int]]]] = {}
    try:
        for name, texts in WORKLOADS.items():
            answers[name] = []
            for text in texts:
                prompt = chat_tokens(backend, text)
                out: list[int] = []
                params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
                for t in backend.generate_tokens(prompt, params):
                    out.append(int(t))  # type: ignore[arg-type]
                    if backend.is_eog(int(t)) or len(out) >= args.max_tokens:  # type: ignore[arg-type]
                        break
                answers[name].append((prompt, out))
    finally:
        backend.close()
    return answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="qwen")
    ap.add_argument("--backend", default="llamacpp", help="backend that decodes the plain answers")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--draft-max", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--cost", type=Path, help="a bench_speculative.py run file with verify_cost")
    ap.add_argument("--answers", type=Path, help="JSON of the plain answers: read if it exists, else written")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.answers and args.answers.exists():
        answers = {k: [(p, a) for p, a in v] for k, v in json.loads(args.answers.read_text()).items()}
    else:
        answers = decode_answers(args)
        if args.answers:
            args.answers.write_text(json.dumps(answers))
    policies = {
        "before": lambda: (LinearLength(args.draft_max), FullNgramDrafter(), False),
        "now": lambda: (DraftLength(args.draft_max), NgramDrafter(), False),
        "oracle": lambda: (DraftLength(args.draft_max), FullNgramDrafter(), True),
    }
    costs = {b: cost_curve(args.cost, b) for b in ("shard", "llamacpp")} if args.cost else {}
    rows = []
    for name, pairs in answers.items():
        for policy, make in policies.items():
            passes: list[tuple[int, int]] = []
            for prompt, answer in pairs:
                length, drafter, oracle = make()
                passes += replay(prompt, answer, length, drafter, oracle)
            tokens = sum(e for _, e in passes)
            row = {
                "workload": name,
                "policy": policy,
                "answers": len(pairs),
                "tokens": tokens,
                "passes": len(passes),
                "tokens_per_pass": tokens / len(passes),
                "positions_per_pass": sum(p for p, _ in passes) / len(passes),
                "speedup_bound": {
                    b: tokens / sum(c(p) for p, _ in passes) for b, c in costs.items() if c is not None
                },
            }
            rows.append(row)
            bounds = ", ".join(f"{b} {v:.2f}x" for b, v in row["speedup_bound"].items())
            print(
                f"{name:5s} {policy:7s} tokens/pass {row['tokens_per_pass']:.2f}  "
                f"positions/pass {row['positions_per_pass']:.2f}  {bounds}",
                flush=True,
            )
    if args.out:
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.write_text(
            json.dumps({"kind": "speculative-policy", "config": config, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
