"""`bench accuracy`: the project's small evaluation set run with modular prompt templates.

Items, checkers, few-shot examples and templates live in ``data/accuracy.yaml``. A template turns an item
into chat messages (instruction-tuned models) or into a plain ``Question: ... Answer:`` transcript (base
models); any ``Answerer`` (a local Backend or an HTTP server) produces the answer, greedily. Accuracy comes
with its Wilson 95 % interval.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Protocol

import yaml

from edgeinfer.bench.runs import Progress, Run, from_fields, new_run
from edgeinfer.bench.stats import wilson
from edgeinfer.bench.table import Table

CHECK_TYPES = ("number", "contains", "exact", "regex", "upper", "lower", "words", "lines", "starts", "ends",
               "json_keys")  # fmt: skip
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Item:
    id: str
    category: str
    question: str
    checks: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Template:
    name: str
    description: str = ""
    system: str | None = None
    shots: bool = False
    suffix: str = ""


@dataclass(frozen=True)
class ItemAnswer:
    id: str
    category: str
    answer: str
    correct: bool


@dataclass
class AccuracyResult:
    """One (model, template): accuracy with its Wilson 95 % interval, per category, and every answer."""

    model: str
    template: str
    mode: str  # "chat" or "completion"
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    by_category: dict[str, float]
    items: list[ItemAnswer] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AccuracyResult:
        return from_fields(
            cls,
            {"model": "?", **d},
            ci95=lambda v: (float(v[0]), float(v[1])),
            items=lambda v: [from_fields(ItemAnswer, i) for i in v],
        )


@dataclass
class EvalSet:
    items: list[Item]
    templates: dict[str, Template]
    shots: list[tuple[str, str]] = field(default_factory=list)


def load_eval_set(path: str | None = None) -> EvalSet:
    source = Path(path) if path else files("edgeinfer.bench").joinpath("data", "accuracy.yaml")
    text = source.read_text()
    raw = yaml.safe_load(text)
    items = []
    for it in raw["items"]:
        for check in it["checks"]:
            if check.get("type") not in CHECK_TYPES:
                raise ValueError(f"item {it['id']}: unknown check type {check.get('type')!r}")
        items.append(Item(it["id"], it["category"], it["question"], tuple(it["checks"])))
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    templates = {name: Template(name=name, **spec) for name, spec in raw["templates"].items()}
    shots = [(s["question"], s["answer"]) for s in raw.get("shots", [])]
    return EvalSet(items, templates, shots)


def _clean(answer: str) -> str:
    a = answer.strip()
    fence = re.match(r"^```[a-zA-Z]*\n(.*?)\n?```$", a, re.DOTALL)
    if fence:
        a = fence.group(1).strip()
    if len(a) >= 2 and a[0] == a[-1] and a[0] in "\"'`":
        a = a[1:-1].strip()
    return a


def check(answer: str, spec: dict[str, Any]) -> bool:
    """Apply one checker (see data/accuracy.yaml) to a model's answer."""
    a = _clean(answer)
    kind = spec["type"]
    if kind == "number":
        nums = _NUMBER.findall(a.replace(",", ""))
        return bool(nums) and float(nums[-1]) == float(spec["value"])
    if kind == "contains":
        return any(re.search(rf"(?<!\w){re.escape(str(v))}(?!\w)", a, re.IGNORECASE) for v in spec["values"])
    if kind == "exact":
        got, want = a.rstrip(".").strip(), str(spec["value"]).rstrip(".")
        return got == want if spec.get("case") else got.casefold() == want.casefold()
    if kind == "regex":
        return re.search(spec["pattern"], a) is not None
    if kind in ("upper", "lower"):
        letters = [c for c in a if c.isalpha()]
        return bool(letters) and all(c.isupper() if kind == "upper" else c.islower() for c in letters)
    if kind == "words":
        n = len(re.findall(r"[\w'-]+", a))
        return spec.get("min", 1) <= n <= spec.get("max", 10**9)
    if kind == "lines":
        return len([ln for ln in a.splitlines() if ln.strip()]) == spec["n"]
    if kind == "starts":
        return a.startswith(spec["value"])
    if kind == "ends":
        return a.endswith(spec["value"])
    if kind == "json_keys":
        m = re.search(r"\{.*\}", a, re.DOTALL)
        if not m:
            return False
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            return False
        return isinstance(obj, dict) and all(k in obj for k in spec["keys"])
    raise ValueError(f"unknown check type {kind!r}")


def passes(item: Item, answer: str) -> bool:
    return all(check(answer, c) for c in item.checks)


def chat_messages(item: Item, tpl: Template, shots: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    if tpl.system:
        msgs.append({"role": "system", "content": tpl.system})
    if tpl.shots:
        for q, a in shots:
            msgs += [{"role": "user", "content": q + tpl.suffix}, {"role": "assistant", "content": a}]
    msgs.append({"role": "user", "content": item.question + tpl.suffix})
    return msgs


COMPLETION_STOPS = ("\nQuestion:", "\n\n")


def completion_prompt(item: Item, tpl: Template, shots: Sequence[tuple[str, str]]) -> str:
    parts = [tpl.system + "\n\n"] if tpl.system else []
    if tpl.shots:
        parts += [f"Question: {q}{tpl.suffix}\nAnswer: {a}\n\n" for q, a in shots]
    parts.append(f"Question: {item.question}{tpl.suffix}\nAnswer:")
    return "".join(parts)


class Answerer(Protocol):
    chat: bool  # True: send chat messages; False: a plain completion prompt

    def answer(self, messages: list[dict[str, str]], prompt: str) -> str: ...


class BackendAnswerer:
    """Answers with a local, loaded ``engine.base.Backend`` (greedy)."""

    def __init__(self, backend: Any, max_tokens: int = 48):
        from edgeinfer.engine.base import SamplingParams
        from edgeinfer.engine.chat import ChatFormatter

        self.backend = backend
        self.chat = bool(backend.info.chat_template)
        info = backend.info
        self.formatter = ChatFormatter.for_model(info)
        self.params = SamplingParams(temperature=0.0, max_tokens=max_tokens)

    def answer(self, messages: list[dict[str, str]], prompt: str) -> str:
        from dataclasses import replace

        from edgeinfer.engine.chat import build_chat_prompt
        from edgeinfer.engine.generate import complete

        if self.chat:
            chat = build_chat_prompt(self.backend, messages, self.formatter)
            tokens, params = chat.tokens, replace(self.params, stop=chat.stops)
        else:
            tokens = self.backend.tokenize(prompt)
            params = replace(self.params, stop=COMPLETION_STOPS)
        return complete(self.backend, tokens, params).text


class HTTPAnswerer:
    """Answers through an OpenAI-compatible server: /v1/chat/completions or /v1/completions."""

    def __init__(
        self,
        url: str,
        model: str | None,
        chat: bool,
        max_tokens: int = 48,
        timeout: float = 120.0,
        api_key: str | None = None,
    ):
        import httpx

        self.url, self.model, self.chat, self.max_tokens = url.rstrip("/"), model, chat, max_tokens
        self.client = httpx.Client(timeout=timeout, headers=auth_headers(api_key))

    def answer(self, messages: list[dict[str, str]], prompt: str) -> str:
        body: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": 0}
        if self.model:
            body["model"] = self.model
        if self.chat:
            body["messages"] = messages
            r = self.client.post(self.url + "/v1/chat/completions", json=body)
        else:
            body.update(prompt=prompt, stop=list(COMPLETION_STOPS))
            r = self.client.post(self.url + "/v1/completions", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{r.request.url}: HTTP {r.status_code}: {r.text[:300]}")
        choice = r.json()["choices"][0]
        return choice["message"]["content"] if self.chat else choice["text"]

    def close(self) -> None:
        self.client.close()


def evaluate(
    answerer: Answerer,
    evalset: EvalSet,
    template_names: Sequence[str],
    limit: int | None = None,
    on_item: Callable[[str, Item, bool], None] = lambda *_: None,
    model: str = "?",
) -> list[AccuracyResult]:
    """One result per template: accuracy, Wilson 95 % interval, per-category accuracy and every answer."""
    unknown = [t for t in template_names if t not in evalset.templates]
    if unknown:
        raise ValueError(f"unknown template {', '.join(unknown)}; one of: {', '.join(evalset.templates)}")
    items = evalset.items[:limit] if limit else evalset.items
    if not items:
        raise ValueError("no items to evaluate")
    results = []
    for name in template_names:
        tpl = evalset.templates[name]
        details = []
        for item in items:
            ans = answerer.answer(
                chat_messages(item, tpl, evalset.shots), completion_prompt(item, tpl, evalset.shots)
            )
            ok = passes(item, ans)
            details.append(ItemAnswer(item.id, item.category, ans, ok))
            on_item(name, item, ok)
        correct = sum(d.correct for d in details)
        cats: dict[str, list[bool]] = {}
        for d in details:
            cats.setdefault(d.category, []).append(d.correct)
        results.append(
            AccuracyResult(
                model=model,
                template=name,
                mode="chat" if answerer.chat else "completion",
                n=len(details),
                correct=correct,
                accuracy=correct / len(details),
                ci95=wilson(correct, len(details)),
                by_category={c: sum(v) / len(v) for c, v in cats.items()},
                items=details,
            )
        )
    return results


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def server_model(
    url: str, model: str | None, mode: str | None, api_key: str | None = None
) -> tuple[str | None, bool]:
    """The model to ask a server for and whether to chat, from its /v1/models when not given."""
    import httpx

    try:
        reply = httpx.get(url.rstrip("/") + "/v1/models", timeout=10, headers=auth_headers(api_key))
        if reply.status_code == 401:
            raise ValueError("the server wants an API key: pass --api-key or set EDGEINFER_API_KEY")
        data = reply.json()["data"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise ValueError(f"cannot list models at {url}/v1/models: {exc}") from exc
    entry = next((d for d in data if d.get("id") == model), None) if model else (data[0] if data else None)
    if model and entry is None:
        served = ", ".join(d.get("id", "?") for d in data)
        raise ValueError(f"the server does not serve {model!r}; it serves {served}")
    if mode is not None:
        return model, mode == "chat"
    return model, bool(((entry or {}).get("meta") or {}).get("chat_template", True))


def run(
    evalset: EvalSet,
    templates: Sequence[str],
    models: Sequence[str] | None = None,
    url: str | None = None,
    mode: str | None = None,
    limit: int | None = None,
    max_tokens: int = 48,
    backend: str = "llamacpp",
    threads: int | None = None,
    label: str | None = None,
    progress: Progress | None = None,
    api_key: str | None = None,
) -> Run:
    """The `bench accuracy` run: every template on every local model, or through the server at ``url``."""
    from edgeinfer.bench.model import BUNDLED_BOTH
    from edgeinfer.models.registry import resolve

    progress = progress or Progress()
    config = {
        "url": url,
        "models": list(models) if models else None,
        "templates": list(templates),
        "limit": limit,
        "max_tokens": max_tokens,
    }
    bench = new_run("accuracy", config, label)
    n_items = min(limit or len(evalset.items), len(evalset.items))
    targets: list[str | None] = [None] if url else list(models or BUNDLED_BOTH)
    progress.start("accuracy", len(targets) * len(templates) * n_items)
    for spec in targets:
        answerer: Any
        if url:
            name, chat = server_model(url, models[0] if models else None, mode, api_key)
            answerer = HTTPAnswerer(url, name, chat, max_tokens, api_key=api_key)
            close = answerer.close
        else:
            from edgeinfer.engine.load import LoadOptions, open_backend

            assert spec is not None
            name, _ = resolve(spec)
            progress.step(f"loading {name}", 0)
            answerer = BackendAnswerer(
                open_backend(spec, LoadOptions(backend, n_ctx=2048, threads=threads)), max_tokens
            )
            close = answerer.backend.close

        def on_item(tpl: str, item: Item, ok: bool, name: str | None = name) -> None:
            progress.step(f"{name} {tpl} {item.id}")

        try:
            bench.results += evaluate(answerer, evalset, templates, limit, on_item, model=name or "?")
        finally:
            close()
    return bench


def rows(run: Run) -> Table:
    """Accuracy per model and template, with its interval and the per-category split."""
    body = []
    for r in run.results:
        cats = ", ".join(f"{c} {100 * v:.0f} %" for c, v in r.by_category.items())
        lo, hi = r.ci95
        acc = f"{100 * r.accuracy:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"
        body.append((r.model or "?", r.template, r.mode, f"{r.correct}/{r.n}", acc, cats))
    header = ("model", "template", "mode", "correct", "accuracy [95 % CI]", "by category")
    return Table("Accuracy (Wilson 95 % interval)", header, body, right=frozenset({3, 4}))
