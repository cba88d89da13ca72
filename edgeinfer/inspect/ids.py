"""Identifying inputs (IDs) of an LLM service: ordinary-looking requests whose exact answer names the model.

Made offline, on a trusted machine that has the reference GGUF (``generate_ids``); carried by the device as a
small JSON file (``IdSet.save`` / ``IdSet.load``), which is all it needs -- never the model.

An ID is a chat request (one user message, temperature 0, ``max_tokens = k``) kept only if it is

* **stable**: at each of its k greedy steps the chosen token beats the runner-up by at least ``min_margin``
  (log probability). Benign nondeterminism -- thread counts, batch sizes, the shard engine's own kernels, a
  cluster's f16 wire -- moves logits by hundredths, so it can never flip such a choice;
* **discriminative**: every substitute it was tested against answers it differently -- other text, or (for
  services that return logprobs) the chosen tokens' log probabilities off by more than ``2 x tolerance``.

``check_answer`` compares a service's answer with an ID's expectation: the text must be equal; when the
answer carries logprobs, every token must be the expected one and its log probability within ``tolerance``.
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeinfer.engine.base import Backend, SamplingParams
from edgeinfer.engine.chat import build_chat_prompt
from edgeinfer.engine.generate import Delta, GenerationResult, stream

FORMAT_VERSION = 1
DEFAULT_K = 5
DEFAULT_MIN_MARGIN = 1.0  # nats: honest backends differ by < 0.1 (docs/inspect.md)
DEFAULT_TOLERANCE = 0.03  # nats, on each chosen token's log probability (raised per ID by ``benign``)
TOP = 5  # alternatives stored per position


class IdFileError(ValueError):
    pass


@dataclass(frozen=True)
class ExpectedToken:
    """One greedy step of the reference: the chosen token, its log probability and the runner-up's gap."""

    token: str
    bytes: tuple[int, ...]
    logprob: float
    margin: float  # chosen minus runner-up log probability
    top: tuple[tuple[str, float], ...] = ()  # the best alternatives (token text, log probability)


@dataclass(frozen=True)
class IdentifyingInput:
    prompt: str  # the user message
    max_tokens: int
    text: str  # the reference answer (what the API's message content / text is)
    finish_reason: str
    tokens: tuple[ExpectedToken, ...]
    tolerance: float = DEFAULT_TOLERANCE
    temperature: float = 0.0
    caught_by: dict[str, str] = field(default_factory=dict)  # substitute -> "text" | "logprobs"

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]

    @property
    def min_margin(self) -> float:
        return min((t.margin for t in self.tokens), default=0.0)


@dataclass(frozen=True)
class IdSet:
    """IDs of one model, as a device carries them."""

    model: str  # the served name the IDs are sent to
    ids: tuple[IdentifyingInput, ...]
    min_margin: float = DEFAULT_MIN_MARGIN
    substitutes: tuple[str, ...] = ()  # what the IDs were tested against
    required: tuple[str, ...] = ()  # the substitutes every ID catches (the others: where ``caught_by`` says)
    created: str = ""
    # the served backends whose measured logprob spread the per-ID tolerances cover (``served_tolerances``);
    # empty: tolerances from the in-process generator only (the inspector then applies its floor)
    served_calibration: tuple[str, ...] = ()
    version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> IdSet:
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            got = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
            raise IdFileError(f"not an ID file of format version {FORMAT_VERSION} (version: {got!r})")
        try:
            ids = tuple(
                IdentifyingInput(
                    **{k: v for k, v in i.items() if k != "tokens"},
                    tokens=tuple(
                        ExpectedToken(
                            t["token"],
                            tuple(t["bytes"]),
                            t["logprob"],
                            t["margin"],
                            tuple((a, lp) for a, lp in t["top"]),
                        )
                        for t in i["tokens"]
                    ),
                )
                for i in doc["ids"]
            )
            return cls(
                model=doc["model"],
                ids=ids,
                min_margin=doc["min_margin"],
                substitutes=tuple(doc.get("substitutes", ())),
                required=tuple(doc.get("required", ())),
                created=doc.get("created", ""),
                served_calibration=tuple(doc.get("served_calibration", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IdFileError(f"malformed ID file: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = self.to_json()
        ids = doc.pop("ids")
        head = json.dumps(doc, indent=1, ensure_ascii=False)[:-2]  # one ID per line: small and diffable
        body = ",\n".join("  " + json.dumps(i, ensure_ascii=False) for i in ids)
        path.write_text(f'{head},\n "ids": [\n{body}\n ]\n}}\n')
        return path

    @classmethod
    def load(cls, path: str | Path) -> IdSet:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IdFileError(f"cannot read ID file {path}: {exc}") from exc
        if not doc.get("ids") if isinstance(doc, dict) else True:
            raise IdFileError(f"ID file {path} holds no IDs")
        return cls.from_json(doc)


def bundled_ids_path(model: str) -> Path:
    """Where the IDs shipped for a bundled model live (``edgeinfer inspect ids`` writes there by default)."""
    return Path(__file__).with_name(f"ids-{model}.json")


# ---- generation -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trace:
    """A greedy answer with the log probabilities of each step."""

    text: str
    finish_reason: str
    tokens: tuple[ExpectedToken, ...]


def _piece(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def greedy_trace(
    backend: Backend, prompt: str, k: int, stop_below: float | None = None, top: int = TOP
) -> Trace | None:
    """The greedy answer to one user message, as the API would give it, with per-token logprobs; None as
    soon as a step's margin falls below ``stop_below`` (not worth finishing)."""
    tokens = build_chat_prompt(backend, [{"role": "user", "content": prompt}]).tokens
    params = SamplingParams(temperature=0.0, max_tokens=k, logprobs=max(top, 2))
    text, steps, finish = [], [], "length"
    gen = stream(backend, tokens, params)
    try:
        for item in gen:
            if isinstance(item, GenerationResult):
                finish = item.finish_reason
                continue
            assert isinstance(item, Delta)
            text.append(item.text)
            for lp in item.logprobs or ():
                alts = [a for a in lp.top if a.token_id != lp.token_id]
                margin = lp.logprob - (alts[0].logprob if alts else float("-inf"))
                if stop_below is not None and margin < stop_below:
                    return None
                steps.append(
                    ExpectedToken(
                        _piece(lp.bytes),
                        tuple(lp.bytes),
                        round(lp.logprob, 5),
                        round(margin, 4),
                        tuple((_piece(a.bytes), round(a.logprob, 5)) for a in lp.top[:top]),
                    )
                )
    finally:
        gen.close()
    return Trace("".join(text), finish, tuple(steps))


def logprob_gap(a: Sequence[ExpectedToken], b: Sequence[ExpectedToken]) -> float:
    """The largest difference of the chosen tokens' log probabilities (inf when the tokens differ)."""
    if [t.bytes for t in a] != [t.bytes for t in b]:
        return float("inf")
    return max((abs(x.logprob - y.logprob) for x, y in zip(a, b, strict=True)), default=0.0)


def generate_ids(
    reference: Backend,
    substitutes: dict[str, Backend],
    pool: Iterable[str],
    n: int = 16,
    k: int = DEFAULT_K,
    min_margin: float = DEFAULT_MIN_MARGIN,
    tolerance: float = DEFAULT_TOLERANCE,
    benign: dict[str, Backend] | None = None,
    require: Sequence[str] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = lambda _: None,
) -> IdSet:
    """Search ``pool`` (in a shuffled order) for up to ``n`` stable IDs that the substitutes answer
    differently.

    ``benign``: other honest ways to run the reference (e.g. the shard engine); they must give the same text,
    and an ID's tolerance becomes ``max(tolerance, 2 x`` the largest logprob difference they show``)``.
    ``require``: the substitutes every ID must catch (default: all); the others are recorded in
    ``caught_by`` where an ID happens to catch them. A substitute is caught by text (any service) or by
    logprobs (services that return them) when its logprobs differ by more than ``2 x`` the ID's tolerance.
    """
    prompts = list(pool)
    random.Random(seed).shuffle(prompts)
    required = set(substitutes if require is None else require)
    kept: list[IdentifyingInput] = []
    for i, prompt in enumerate(prompts):
        if len(kept) >= n:
            break
        where = f"[{i + 1}/{len(prompts)}]"
        ref = greedy_trace(reference, prompt, k, stop_below=min_margin)
        if ref is None or not ref.text.strip() or "\ufffd" in ref.text:
            progress(f"{where} unstable: {prompt}")
            continue
        tol = tolerance
        for other in (greedy_trace(b, prompt, k) for b in (benign or {}).values()):
            assert other is not None
            tol = max(tol, 2 * logprob_gap(other.tokens, ref.tokens))
        if tol == float("inf"):
            progress(f"{where} an honest backend answers otherwise: {prompt}")
            continue
        caught: dict[str, str] = {}
        missed = ""
        # required substitutes first: the first one that is not told apart ends the candidate
        for name in sorted(substitutes, key=lambda s: s not in required):
            other = greedy_trace(substitutes[name], prompt, k)
            assert other is not None
            if other.text != ref.text or other.finish_reason != ref.finish_reason:
                caught[name] = "text"
            elif logprob_gap(other.tokens, ref.tokens) > 2 * tol:
                caught[name] = "logprobs"
            elif name in required:
                missed = name
                break
        if missed:
            progress(f"{where} {missed} answers the same: {prompt}")
            continue
        progress(f"{where} kept ({len(kept) + 1}/{n}): {prompt} -> {ref.text!r} caught by {caught}")
        kept.append(
            IdentifyingInput(
                prompt=prompt,
                max_tokens=k,
                text=ref.text,
                finish_reason=ref.finish_reason,
                tokens=ref.tokens,
                tolerance=round(tol, 4),
                caught_by=caught,
            )
        )
    return IdSet(
        model=reference.info.name,
        ids=tuple(kept),
        min_margin=min_margin,
        substitutes=tuple(substitutes),
        required=tuple(s for s in substitutes if s in required),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def served_tolerances(
    ids: IdSet, spread: dict[int, float], services: Sequence[str], factor: float = 2.0
) -> IdSet:
    """The IDs with tolerances that cover honest *served* backends: ``spread[i]`` is the largest
    difference between a chosen token's log probability served by any of ``services`` and ID ``i``'s
    reference value; ID ``i``'s tolerance becomes ``max(its own, factor x spread[i])``. Every ID must have
    been measured."""
    missing = [i for i in range(len(ids.ids)) if i not in spread]
    if missing:
        raise ValueError(f"no served spread measured for IDs {missing}")
    kept = tuple(
        replace(i, tolerance=round(max(i.tolerance, factor * spread[n]), 4)) for n, i in enumerate(ids.ids)
    )
    return replace(ids, ids=kept, served_calibration=tuple(services))


# ---- checking ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What a service answered to an ID: the text and, when it sent them, the chosen tokens' logprobs."""

    text: str
    finish_reason: str | None = None
    tokens: tuple[tuple[bytes, float], ...] | None = None  # (token bytes, logprob) per generated token


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    reason: str = ""  # why it failed
    max_logprob_gap: float | None = None  # None: the answer carried no logprobs


def check_answer(expected: IdentifyingInput, answer: Answer, min_tolerance: float = 0.0) -> CheckResult:
    """Does ``answer`` come from the reference model? Text first; logprobs (when sent) within the ID's
    tolerance, or ``min_tolerance`` if larger."""
    if answer.text != expected.text:
        return CheckResult(False, f"text {answer.text!r} != expected {expected.text!r}")
    if answer.tokens is None:
        return CheckResult(True)
    want = [(bytes(t.bytes), t.logprob) for t in expected.tokens]
    if [b for b, _ in answer.tokens] != [b for b, _ in want]:
        return CheckResult(False, "the answer's tokens differ from the expected tokens")
    gap = max((abs(a - b) for (_, a), (_, b) in zip(answer.tokens, want, strict=True)), default=0.0)
    tolerance = max(expected.tolerance, min_tolerance)
    if gap > tolerance:
        return CheckResult(False, f"a token's logprob is off by {gap:.3f} > {tolerance}", gap)
    return CheckResult(True, max_logprob_gap=gap)
