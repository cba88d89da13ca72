"""Inspection of a split-computing edge server: sensitive-sample IDs for a zoo DNN and the inspector that
mixes them into a device's traffic.

**IDs** (offline, on a trusted machine with the reference weights): sensitive samples, as in sensitive-sample
fingerprinting (He, Zhang, Lee, CVPR 2019). Start from real digits of the model's own data set and move
their pixels by gradient ascent on the output's sensitivity to the weights, ``sum_k ||d logit_k / dW||^2``
(estimated with a random direction over the logits, so one double backward per step), staying in the valid
pixel range [0, 1], within ``eps`` of the original pixels (they still look like that digit) and at the data
set's own resolution (the frame is upsampled exactly as real frames are). Candidates are kept only if the
model still answers their digit with a clear top-1 margin, and ranked by how far their logits move under a
small random weight perturbation (a generic stand-in for tampering: the generator never sees the substitutes
it is tested against) relative to how far benign noise moves them: the wire's f16/int8 rounding of the
tensor at every cut. The file stores each ID's frame, expected logits of every exit, and per wire dtype the
tolerance an honest edge stays within.

**Checks**: an ID travels like real traffic: same endpoint and query (model, exit, cut, thresholds), the
device's head run on it up to the same cut, encoded with the same dtype and codec. The answer's logits must
agree with the reference within tolerance. With the model at hand (a split device holds it), the reference is
the honest tail run locally on the very bytes sent, so wire rounding cancels and the tolerance is
``EXACT_TOLERANCE`` (thread order and the server's 5-decimal rounding); without it (an edge-only client at cut
0) it is the stored logits with the stored per-dtype tolerance.

**Inspector**: ``DnnInspector.call(send, params, payload)`` wraps one device -> edge call (a plain function
API); ``DnnInspector.transport()`` does the same under the device client's HTTP connections
(``DeviceClient(..., transport=inspector.transport())``). Real calls feed the SLA test (an error or a latency
above the SLO is a violation); ID answers feed the model test (``edgeinfer.inspect.stats``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import torch
import torch.nn.functional as F
from torch import nn

from edgeinfer.inspect.stats import SPRT, Verdict, model_test, sla_test
from edgeinfer.models.dnn import zoo
from edgeinfer.models.dnn.backbone import ExitNet
from edgeinfer.models.dnn.data import resize
from edgeinfer.models.dnn.train import load_or_train
from edgeinfer.split.compress import CODECS, DTYPES, MAGIC, WireError, decode, encode
from edgeinfer.split.exits import Thresholds
from edgeinfer.split.profile import torch_threads
from edgeinfer.split.runner import run_segment

FORMAT = 1
KIND = "edgeinfer-dnn-ids"
EXACT_TOLERANCE = 2e-3  # |logit| deviation allowed against a local reference on the same bytes
TOLERANCE_FLOOR = 2e-3  # the smallest stored tolerance (thread order, 5-decimal rounding by the server)
TOLERANCE_FACTOR = 2.0  # stored tolerance = factor x the worst benign deviation measured


class DnnIdError(ValueError):
    pass


# --- the ID file -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DnnId:
    image: list[float]  # C*h*w pixels in [0, 1] at the data set's own resolution (upsampled like real frames)
    label: int  # the digit it started from; the reference model still answers it
    expected: dict[str, list[float]]  # exit -> reference logits
    tolerance: dict[str, float]  # wire dtype -> largest |logit - expected| an honest edge may show
    margin: float  # top-1 minus top-2 logit of the final exit
    score: float  # deviation under a random 1 % weight perturbation / worst benign deviation (f16)


@dataclass(frozen=True)
class IdConfig:
    n: int = 8  # IDs kept
    candidates: int = 24  # real digits searched (the best n are kept)
    steps: int = 30  # gradient-ascent steps
    lr: float = 0.02
    eps: float = 0.1  # largest change of any source pixel
    min_margin: float = 1.0  # top-1 margin an ID must keep (stable top-1 under benign noise)
    perturb: float = 0.01  # relative weight noise used to rank candidates
    seed: int = 0


@dataclass
class DnnIdSet:
    model: str
    res: int  # frame side the model sees
    shape: tuple[int, int, int]  # C, h, w of ``DnnId.image``
    ids: list[DnnId]
    config: IdConfig = field(default_factory=IdConfig)
    weights: str = ""  # the reference weights file the IDs were made from (informational)

    def frames(self) -> torch.Tensor:
        """Every ID as a frame (N x C x res x res), upsampled exactly as real frames are."""
        src = torch.tensor([i.image for i in self.ids], dtype=torch.float32).reshape(-1, *self.shape)
        return resize(src, self.res)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "kind": KIND,
            "model": self.model,
            "res": self.res,
            "shape": list(self.shape),
            "weights": self.weights,
            "config": asdict(self.config),
            "ids": [asdict(i) for i in self.ids],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def from_dict(cls, d: dict) -> DnnIdSet:
        if d.get("kind") != KIND or d.get("format") != FORMAT:
            raise DnnIdError(f"not a DNN ID file of format {FORMAT} (kind {d.get('kind')!r})")
        try:
            ids = [DnnId(**i) for i in d["ids"]]
            shape = tuple(int(v) for v in d["shape"])
            if len(shape) != 3 or any(len(i.image) != math.prod(shape) for i in ids):
                raise DnnIdError(f"ID images do not match the shape {shape}")
            return cls(d["model"], int(d["res"]), shape, ids, IdConfig(**d["config"]), d.get("weights", ""))
        except (KeyError, TypeError) as exc:
            raise DnnIdError(f"malformed DNN ID file: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> DnnIdSet:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as exc:
            raise DnnIdError(f"{path}: not JSON ({exc})") from exc


# --- reference model and substitutes ------------------------------------------------------------------------
def reference(name: str = "digitnet") -> tuple[ExitNet, zoo.BranchyModel]:
    """The zoo network (trained or cached, as deployed) and the same weights as a ``BranchyModel``."""
    entry = zoo.ZOO.get(name)
    if entry is None:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {', '.join(zoo.ZOO)}")
    net, metrics, path = load_or_train(name, entry.model, entry.train)
    model = zoo.from_net(name, net, metrics)
    model.meta["weights"] = str(path)
    return net, model


SUBSTITUTES = ("int8", "pruned", "early-exit", "retrained")


def _weighted(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def substitute(net: ExitNet, kind: str, name: str | None = None, seed: int = 1) -> zoo.BranchyModel:
    """A cheaper or different model a dishonest edge could serve under ``net``'s name (tests, benchmarks).

    ``int8``: weights quantized per output channel to int8, the linear layers run by torch's dynamic int8
    quantization; ``pruned``: 30 % of each layer's weights (smallest magnitude) zeroed; ``early-exit``: the
    ``final`` exit answered by the last early exit's path; ``retrained``: one more epoch of training on the
    same data (a model that looks the same and scores the same).
    """
    name = name or type(net).__name__.lower()
    sub = copy.deepcopy(net).eval()
    if kind == "int8":
        with torch.no_grad():
            for m in _weighted(sub):
                w = m.weight
                scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127.0
                scale = scale.view(-1, *[1] * (w.dim() - 1))
                w.copy_((w / scale).round().clamp(-127, 127) * scale)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
            sub = torch.ao.quantization.quantize_dynamic(sub, {nn.Linear}, dtype=torch.qint8)
        return zoo.from_net(name, sub)
    if kind == "pruned":
        from torch.nn.utils import prune

        for m in _weighted(sub):
            prune.l1_unstructured(m, "weight", amount=0.3)
            prune.remove(m, "weight")
        return zoo.from_net(name, sub)
    if kind == "early-exit":
        model = zoo.from_net(name, sub)
        early = model.exits[-2]
        model.exits[-1] = zoo.Exit("final", early.at, early.head, early.accuracy)
        return model
    if kind == "retrained":
        return zoo.from_net(name, _retrain(sub, seed))
    raise KeyError(f"unknown substitute {kind!r}; choose one of {', '.join(SUBSTITUTES)}")


def _retrain(net: ExitNet, seed: int) -> ExitNet:
    torch.manual_seed(seed)
    data = net.cfg.dataset(seed=0)["train"]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    net.train()
    for i in range(0, len(data), 64):
        idx = perm[i : i + 64]
        loss = sum(F.cross_entropy(o, data.y[idx]) for o in net.forward_all(data.batch(idx)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


# --- generation ---------------------------------------------------------------------------------------------
def _final_params(net: ExitNet) -> list[nn.Parameter]:
    """The weights the final exit's answer depends on (the backbone and the final head)."""
    return [
        p for n, p in net.named_parameters() if not n.startswith("exits.") or n.startswith("exits.final.")
    ]


def sensitive_samples(
    net: ExitNet, images: torch.Tensor, res: int, cfg: IdConfig = IdConfig()
) -> torch.Tensor:
    """Gradient ascent on ``sum_k ||d logit_k / dW||^2`` from ``images`` (N x C x h x w in [0, 1]).

    Each step draws a random sign per (sample, logit) ``u`` and maximises ``||d (u . logits) / dW||^2``,
    an unbiased estimate of the sum over samples of the Jacobian's squared norm (the cross terms between
    samples and logits have mean zero), at the cost of one double backward for the whole batch.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    params = _final_params(net)
    start = images.detach().clone()
    src = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([src], lr=cfg.lr)
    for _ in range(cfg.steps):
        logits = net(resize(src, res))
        u = torch.randint(0, 2, logits.shape, generator=gen).float() * 2 - 1
        grads = torch.autograd.grad((u * logits).sum(), params, create_graph=True)
        loss = -sum((g**2).sum() for g in grads)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            src.copy_(torch.minimum(torch.maximum(src, start - cfg.eps), start + cfg.eps).clamp(0.0, 1.0))
    return src.detach()


def _path_logits(model: zoo.BranchyModel, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    return {e.name: model.path(e.name).run(frames) for e in model.exits}


def benign_deviation(model: zoo.BranchyModel, frames: torch.Tensor, dtype: str) -> torch.Tensor:
    """Per frame, the largest |logit| change of any exit when the tensor at any cut crosses the wire as
    ``dtype``, one frame per request as the device sends them (f32 and f16 round each value on its own, so
    a whole batch is encoded at once; int8 scales per tensor, so per frame)."""
    worst = torch.zeros(len(frames))
    for e in model.exits:
        path = model.path(e.name)
        ref = path.run(frames)
        for cut in range(len(path)):
            head = path.run(frames, 0, cut)
            if dtype == "int8":
                sent = torch.cat([decode(encode(head[i : i + 1], dtype)) for i in range(len(frames))])
            else:
                sent = decode(encode(head, dtype))
            worst = torch.maximum(worst, (path.run(sent, cut) - ref).abs().amax(1))
    return worst


def _perturbation_deviation(net: ExitNet, frames: torch.Tensor, rel: float, seed: int, draws: int = 3):
    """Mean over a few draws of the largest |final logit| change under relative Gaussian weight noise."""
    gen = torch.Generator().manual_seed(seed)
    ref = net(frames).detach()
    total = torch.zeros(len(frames))
    for _ in range(draws):
        noisy = copy.deepcopy(net)
        with torch.no_grad():
            for p in noisy.parameters():
                p.mul_(1 + rel * torch.randn(p.shape, generator=gen))
            total += (noisy(frames) - ref).abs().amax(1)
    return total / draws


def make_ids(
    name: str = "digitnet",
    cfg: IdConfig = IdConfig(),
    progress: Callable[[str], None] | None = None,
) -> DnnIdSet:
    """Generate ``cfg.n`` sensitive-sample IDs for the zoo model ``name`` (see the module docstring)."""
    say = progress or (lambda _msg: None)
    net, model = reference(name)
    net.eval()
    val = zoo.dataset(name)["val"]
    res = val.res
    # candidates: real digits the model answers right, spread over the classes
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(val), generator=gen)
    with torch.no_grad():
        right = net(val.batch(order)).argmax(1) == val.y[order]
    picked: list[int] = []
    per_class: dict[int, int] = {}
    cap = max(1, math.ceil(cfg.candidates / 10))
    for j in order[right].tolist():
        y = int(val.y[j])
        if per_class.get(y, 0) < cap and len(picked) < cfg.candidates:
            picked.append(j)
            per_class[y] = per_class.get(y, 0) + 1
    idx = torch.tensor(picked)
    say(f"searching {len(idx)} sensitive samples ({cfg.steps} steps)")
    src = sensitive_samples(net, val.images[idx], res, cfg)
    labels = val.y[idx]
    frames = resize(src, res)
    with torch.no_grad():
        logits = _path_logits(model, frames)
        top2 = logits["final"].topk(2, 1).values
        margin = top2[:, 0] - top2[:, 1]
        keep = (logits["final"].argmax(1) == labels) & (margin >= cfg.min_margin)
        say("measuring benign wire noise and weight sensitivity")
        moved = _perturbation_deviation(net, frames, cfg.perturb, cfg.seed)
        score = moved / benign_deviation(model, frames, "f16").clamp_min(1e-6)
        ranked = sorted((j for j in range(len(idx)) if keep[j]), key=lambda j: -float(score[j]))[: cfg.n]
        if len(ranked) < cfg.n:
            raise DnnIdError(
                f"only {len(ranked)} of {len(idx)} candidates kept a top-1 margin >= {cfg.min_margin}"
            )
        # the tolerances of the IDs kept (int8 is measured frame by frame: only for these)
        benign = {d: benign_deviation(model, frames[ranked], d).tolist() for d in DTYPES}
    ids = [
        DnnId(
            image=[round(float(v), 6) for v in src[j].flatten()],
            label=int(labels[j]),
            expected={k: [round(float(v), 6) for v in t[j]] for k, t in logits.items()},
            tolerance={d: max(TOLERANCE_FLOOR, TOLERANCE_FACTOR * b[k]) for d, b in benign.items()},
            margin=float(margin[j]),
            score=float(score[j]),
        )
        for k, j in enumerate(ranked)
    ]
    shape = tuple(int(v) for v in val.images.shape[1:])
    return DnnIdSet(name, res, shape, ids, cfg, model.meta.get("weights", ""))


# --- checking -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdCheck:
    id: int  # index into the ID set
    exit: str  # the exit the edge answered from
    dtype: str  # wire dtype of the request
    cut: int
    deviation: float  # largest |logit - reference|
    tolerance: float
    top1_ok: bool
    passed: bool
    reference: str  # "local" (the tail run on the same bytes) or "stored"


def wire_format(payload: bytes) -> tuple[str, str]:
    """(dtype, codec) of an encoded tensor, read from its header (see ``edgeinfer.split.compress``)."""
    if len(payload) < 6 or payload[:4] != MAGIC or payload[4] >= len(DTYPES) or payload[5] >= len(CODECS):
        raise WireError("not an edgeinfer tensor (bad header)")
    return DTYPES[payload[4]], CODECS[payload[5]]


def _thresholds(params: dict) -> Thresholds | None:
    if not params.get("thresholds"):
        return None
    return Thresholds.from_dict(
        {"criterion": params.get("criterion"), "values": json.loads(params["thresholds"])}
    )


def check_answer(
    ids: DnnIdSet,
    i: int,
    answer: dict,
    dtype: str,
    cut: int,
    local: tuple[str, torch.Tensor] | None = None,
) -> IdCheck:
    """Judge the edge's ``answer`` ({"exit", "logits", ...}) to ID ``i``.

    ``local``: (exit, logits) of the honest tail run on the same payload (exact reference); else the stored
    expected logits of the answered exit with the stored tolerance of ``dtype``.
    """
    got = torch.tensor(answer["logits"], dtype=torch.float32).flatten()
    exit_name = str(answer.get("exit", "final"))
    if local is not None:
        want_exit, want = local[0], local[1].flatten()
        tol, how = EXACT_TOLERANCE, "local"
    else:
        want_exit = exit_name
        if exit_name not in ids.ids[i].expected:
            return IdCheck(i, exit_name, dtype, cut, math.inf, 0.0, False, False, "stored")
        want = torch.tensor(ids.ids[i].expected[exit_name])
        tol, how = ids.ids[i].tolerance[dtype], "stored"
    if got.shape != want.shape or want_exit != exit_name:
        return IdCheck(i, exit_name, dtype, cut, math.inf, tol, False, False, how)
    dev = float((got - want).abs().max())
    top1 = int(got.argmax()) == int(want.argmax())
    return IdCheck(i, exit_name, dtype, cut, dev, tol, top1, top1 and dev <= tol, how)


# --- inspection ---------------------------------------------------------------------------------------------
Send = Callable[[dict, bytes], dict]  # (query params, payload) -> the edge's JSON answer; raises on failure


@dataclass
class DnnReport:
    requests: int  # real requests seen
    id_requests: int  # ID requests inserted
    id_bytes: int
    real_bytes: int
    checks: list[IdCheck]
    skipped: int  # ID chances skipped (cut > 0 without a model at hand, or a malformed real request)
    errors: int  # real requests that failed
    latencies_ms: list[float]
    model: Verdict
    sla: Verdict

    @property
    def overhead(self) -> float:
        """Extra requests / all requests."""
        total = self.requests + self.id_requests
        return self.id_requests / total if total else 0.0

    @property
    def byte_overhead(self) -> float:
        total = self.real_bytes + self.id_bytes
        return self.id_bytes / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "requests": self.requests,
            "id_requests": self.id_requests,
            "overhead": self.overhead,
            "byte_overhead": self.byte_overhead,
            "failed_checks": sum(not c.passed for c in self.checks),
            "skipped": self.skipped,
            "errors": self.errors,
            "model": self.model.to_dict(),
            "sla": self.sla.to_dict(),
        }


class DnnInspector:
    """Mixes ID requests into a device's calls to its edge server and judges the answers and the latency.

    ``model``: the device's copy of the reference model (a split device holds it): IDs then follow real
    traffic at any cut and are judged against the honest tail run on the same bytes. Without it, IDs ride
    along only with cut-0 requests (the raw frame) and are judged against the stored logits.
    ``rate``: the chance that a real request is followed by one ID request; ``slo_ms``: the latency of one
    edge call that counts as a violation (None: only errors do). Thread-safe.
    """

    def __init__(
        self,
        ids: DnnIdSet,
        model: zoo.BranchyModel | None = None,
        *,
        rate: float = 0.005,
        slo_ms: float | None = None,
        model_test: SPRT | None = None,
        sla_test: SPRT | None = None,
        seed: int | None = None,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], got {rate}")
        if not ids.ids:
            raise DnnIdError("the ID set is empty")
        if model is not None and model.name != ids.model:
            raise DnnIdError(f"the IDs are for {ids.model!r}, the model is {model.name!r}")
        self.ids, self.model, self.rate, self.slo_ms = ids, model, rate, slo_ms
        self.model_test = model_test or _default_model_test()
        self.sla_test = sla_test or _default_sla_test()
        self.rng = random.Random(seed)
        self.frames = ids.frames()
        self.lock = threading.Lock()
        self.requests = self.id_requests = self.id_bytes = self.real_bytes = 0
        self.skipped = self.errors = 0
        self.checks: list[IdCheck] = []
        self.latencies_ms: list[float] = []

    # -- the plain function API
    def call(self, send: Send, params: dict, payload: bytes) -> dict:
        """Send one real request through ``send``, record it, and maybe follow it with an ID request."""
        t0 = time.perf_counter()
        try:
            answer = send(params, payload)
        except Exception:
            self._record_real(len(payload), None)
            raise
        self._record_real(len(payload), 1000 * (time.perf_counter() - t0))
        if self._draw():
            self.inspect(send, params, payload)
        return answer

    def inspect(self, send: Send, params: dict, like: bytes) -> IdCheck | None:
        """Send one ID shaped like the request (``params``, ``like``) and judge the answer now."""
        try:
            built = self._id_request(params, like)
        except (KeyError, ValueError):  # a request the edge will refuse too (bad exit, cut, tensor)
            built = None
        if built is None:
            with self.lock:
                self.skipped += 1
            return None
        i, payload, local = built
        dtype, _ = wire_format(payload)
        cut = int(params.get("cut", 0))
        with self.lock:
            self.id_requests += 1
            self.id_bytes += len(payload)
        try:
            answer = send(dict(params), payload)
        except Exception:
            return None  # unavailability is the SLA test's business, seen on real requests
        result = check_answer(self.ids, i, answer, dtype, cut, local)
        with self.lock:
            self.checks.append(result)
            self.model_test.update(not result.passed)
        return result

    def _draw(self) -> bool:
        with self.lock:
            return self.rng.random() < self.rate

    def _record_real(self, nbytes: int, ms: float | None) -> None:
        with self.lock:
            self.requests += 1
            self.real_bytes += nbytes
            if ms is None:
                self.errors += 1
                self.sla_test.update(True)
                return
            self.latencies_ms.append(ms)
            self.sla_test.update(self.slo_ms is not None and ms > self.slo_ms)

    def _id_request(
        self, params: dict, like: bytes
    ) -> tuple[int, bytes, tuple[str, torch.Tensor] | None] | None:
        dtype, codec = wire_format(like)
        cut = int(params.get("cut", 0))
        exit_name = str(params.get("exit", "final"))
        with self.lock:
            i = self.rng.randrange(len(self.ids.ids))
        frame = self.frames[i : i + 1]
        if self.model is None:
            if cut != 0:
                return None
            return i, encode(frame, dtype, codec), None
        path = self.model.path(exit_name)
        head = path.run(frame, 0, cut)
        payload = encode(head, dtype, codec)
        seg = run_segment(
            self.model, exit_name, decode(payload), cut, len(path), thresholds=_thresholds(params)
        )
        return i, payload, (seg.early_exit or exit_name, seg.out)

    # -- httpx: under the device client's own HTTP client
    def transport(self, inner: httpx.BaseTransport | None = None) -> httpx.BaseTransport:
        """An httpx transport that inspects every ``POST /v1/split/tail`` passing through it, e.g.
        ``DeviceClient(model, device, edge, url, cfg, transport=inspector.transport())``."""
        return _InspectingTransport(self, inner or httpx.HTTPTransport())

    def report(self) -> DnnReport:
        with self.lock:
            return DnnReport(
                self.requests,
                self.id_requests,
                self.id_bytes,
                self.real_bytes,
                list(self.checks),
                self.skipped,
                self.errors,
                list(self.latencies_ms),
                self.model_test.verdict,
                self.sla_test.verdict,
            )


def _default_model_test() -> SPRT:
    return model_test(q=0.01, eps=1e-4)


def _default_sla_test() -> SPRT:
    return sla_test(level=0.999, violated=0.01)


_BODY_HEADERS = ("content-length", "transfer-encoding")  # set anew for each body


class _InspectingTransport(httpx.BaseTransport):
    """Passes every request on; POSTs to ``/v1/split/tail`` go through ``DnnInspector.call``."""

    def __init__(self, inspector: DnnInspector, inner: httpx.BaseTransport):
        self.inspector, self.inner = inspector, inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path != "/v1/split/tail":
            return self.inner.handle_request(request)
        payload = request.read()
        params = dict(request.url.params)
        kept: dict[str, httpx.Response] = {}

        def send(query: dict, body: bytes) -> dict:
            url = request.url.copy_with(params=query)
            headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in _BODY_HEADERS]
            req = httpx.Request("POST", url, headers=headers, content=body, extensions=request.extensions)
            resp = self.inner.handle_request(req)
            resp.request = req
            resp.read()
            if "real" not in kept:
                kept["real"] = resp
            resp.raise_for_status()
            return resp.json()

        with contextlib.suppress(httpx.HTTPStatusError):  # the device client gets the same error response
            self.inspector.call(send, params, payload)
        return kept["real"]

    def close(self) -> None:
        self.inner.close()


def sweep(
    ids: DnnIdSet,
    reference: zoo.BranchyModel,
    served: zoo.BranchyModel,
    *,
    dtypes: Iterable[str] = DTYPES,
    threads: Iterable[int] = (1,),
    batched: bool = True,
) -> list[IdCheck]:
    """Every ID sent to ``served``'s final exit at every cut the edge works at (and ``served`` takes the same
    tensor) and every wire dtype, answered one request at a time and (``batched``) all IDs in one batch, at
    each of ``threads`` torch threads; each answer judged both ways: against the local reference (the
    ``reference`` tail on the same bytes, as a split device judges) and against the stored logits."""
    frames = ids.frames()
    ref_path, srv_path = reference.path("final"), served.path("final")
    cuts = _shared_cuts(ref_path, srv_path)
    checks: list[IdCheck] = []
    for t in threads:
        with torch_threads(t):
            for dtype in dtypes:
                for cut in cuts:
                    head = ref_path.run(frames, 0, cut)
                    sent = torch.cat([decode(encode(head[i : i + 1], dtype)) for i in range(len(frames))])
                    want = ref_path.run(sent, cut)
                    answers = [torch.cat([srv_path.run(sent[i : i + 1], cut) for i in range(len(frames))])]
                    if batched:
                        answers.append(srv_path.run(sent, cut))
                    for got in answers:
                        for i in range(len(frames)):
                            answer = {"exit": "final", "logits": got[i].tolist()}
                            checks.append(check_answer(ids, i, answer, dtype, cut, ("final", want[i])))
                            checks.append(check_answer(ids, i, answer, dtype, cut))
    return checks


def detection_table(
    ids: DnnIdSet,
    honest: zoo.BranchyModel,
    subs: dict[str, zoo.BranchyModel],
    dtypes: Iterable[str] = DTYPES,
    reference: str = "local",
) -> dict[str, dict[str, float]]:
    """Per substitute, per ID: the fraction of requests (every cut the edge works at, every wire dtype) whose
    answer fails its check against the ``reference`` ("local" or "stored"), computed in-process."""
    table: dict[str, dict[str, float]] = {}
    for name, sub in subs.items():
        checks = [
            c for c in sweep(ids, honest, sub, dtypes=dtypes, batched=False) if c.reference == reference
        ]
        table[name] = {
            str(i): sum(not c.passed for c in checks if c.id == i) / max(1, sum(c.id == i for c in checks))
            for i in range(len(ids.ids))
        }
    return table


def _shared_cuts(honest, sub) -> list[int]:
    """The cuts at which the edge has work to do (not the last) and both paths take the same tensor (an
    early-exit substitute's path leaves the backbone early)."""
    same = [0]
    for k in range(1, min(len(honest), len(sub))):
        if honest.layers[k - 1].out_shape != sub.layers[k - 1].out_shape:
            break
        same.append(k)
    return same
