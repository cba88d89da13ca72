"""Per-layer DNN profiles: measured latency and tensor bytes of every layer on one device, as JSON.

* ``DeviceSpec``: how a device is emulated on this host (threads, and either a CPU quota that the kernel
  enforces on the device's compute thread, ``testbed.cpuquota``, or a slowdown factor that stretches every
  compute interval by sleeping) plus its power model. Specs ship under ``edgeinfer/models/dnn/devices``.
* ``profile_model``: every layer of a ``BranchyModel`` on a real input, warm-up then repeats, median; output
  bytes raw and on the wire for every dtype+codec (measured by encoding real activations).
* ``Profile``: the JSON written by ``edgeinfer split profile``; a profile made on another device is imported
  with ``Profile.load`` and planned together with this one.

The Neurosurgeon-style regression predictor lives in ``split.predict``.
"""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path

import torch

from edgeinfer.models.dnn.zoo import BranchyModel
from edgeinfer.split.compress import CODECS, DTYPES, encode_state, wire_key
from edgeinfer.testbed import cpuquota

FORMAT = "edgeinfer-dnn-profile/1"
DEVICES_DIR = Path(__file__).resolve().parent.parent / "models" / "dnn" / "devices"


@dataclass(frozen=True)
class PowerModel:
    compute_w: float = 0.0  # device busy computing
    tx_w: float = 0.0  # device sending/receiving
    idle_w: float = 0.0  # device waiting for the edge


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    threads: int = 1
    slowdown: float = 1.0
    emulated: bool = False
    power: PowerModel = PowerModel()
    note: str = ""
    cpu_quota: float = 0.0  # fraction of one core for the compute thread (cgroup CFS quota); 0 = no quota
    cpu_period_us: int = 10_000  # the quota's CFS period

    @classmethod
    def from_dict(cls, d: dict) -> DeviceSpec:
        d = dict(d)
        d["power"] = PowerModel(**d.get("power", {}))
        if d.get("slowdown", 1.0) < 1.0 or d.get("threads", 1) < 1:
            raise ValueError(f"device {d.get('name')}: slowdown must be >= 1 and threads >= 1")
        if not 0.0 <= d.get("cpu_quota", 0.0) <= 1.0:
            raise ValueError(f"device {d.get('name')}: cpu_quota is a fraction of one core, in [0, 1]")
        if d.get("cpu_quota", 0.0) > 0 and d.get("slowdown", 1.0) != 1.0:
            raise ValueError(f"device {d.get('name')}: emulate with cpu_quota or with slowdown, not both")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def builtin_devices() -> dict[str, Path]:
    return {p.stem: p for p in sorted(DEVICES_DIR.glob("*.json"))}


def load_device(spec: str) -> DeviceSpec:
    """A built-in device name (``rpi4-like``, ``edge-host``) or a path to a device JSON."""
    path = builtin_devices().get(spec) or Path(spec)
    if not path.is_file():
        raise ValueError(
            f"unknown device {spec!r}: neither built in ({', '.join(builtin_devices())}) nor a file"
        )
    try:
        return DeviceSpec.from_dict(json.loads(path.read_text()))
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"bad device spec {path}: {exc}") from exc


def device_thread(spec: DeviceSpec) -> contextlib.AbstractContextManager:
    """Run the block's compute as the device: on a spec with ``cpu_quota``, the calling thread joins the
    process's cgroup for that quota (one budget for every client of the device in this process)."""
    if spec.cpu_quota <= 0:
        return contextlib.nullcontext()
    return cpuquota.shared(spec.cpu_quota, spec.cpu_period_us).thread()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def emulated_call(
    fn: Callable[[], object], slowdown: float = 1.0, sleep: bool = True
) -> tuple[object, float]:
    """Run ``fn`` as the device would: returns (result, seconds).

    With ``slowdown == 1`` the time is plain wall time. Otherwise it is this thread's CPU time x slowdown
    (immune to other processes taking the shared cores), and the call sleeps until that much wall time has
    passed, so that end-to-end latencies measured around it include the emulated device's speed. With
    ``sleep=False`` the caller sleeps later, once for several calls (``settle``).
    """
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    wall = time.perf_counter() - w0
    if slowdown <= 1.0:
        return out, wall
    target = (time.thread_time() - c0) * slowdown
    if sleep and target > wall:
        time.sleep(target - wall)
    return out, max(target, wall)


def settle(start: float, emulated_s: float) -> None:
    """Sleep until ``emulated_s`` seconds of wall time have passed since ``start`` (``time.perf_counter``).

    One sleep for a run of deferred ``emulated_call(..., sleep=False)``: on a loaded machine every sleep
    wakes up late (scheduler latency), so one sleep per request instead of one per layer group keeps the
    emulated device from getting slower than its profile by a per-call overhead the profile never sees.
    """
    left = emulated_s - (time.perf_counter() - start)
    if left > 0:
        time.sleep(left)


def median_ms(
    fn: Callable[[], object], warmup: int, repeats: int, slowdown: float = 1.0, cpu: bool = False
) -> float:
    """Median of ``repeats`` timed calls after ``warmup`` untimed ones (emulated time if slowdown > 1; the
    thread's CPU time if ``cpu``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if slowdown > 1.0 or cpu:  # CPU time x slowdown, without sleeping: only the number is needed
            c0 = time.thread_time()
            fn()
            times.append((time.thread_time() - c0) * slowdown)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


@dataclass
class LayerProfile:
    kind: str
    macs: int
    in_bytes: int
    out_bytes: int
    ms: float  # on the profiled device (emulated: CPU time on this host x slowdown, or x the measured
    # wall/CPU ratio of whole passes under the device's CPU quota)
    ms_host: float  # wall time measured on the host that ran the profile
    wire: dict[str, int] = field(default_factory=dict)  # "f16+lz4" -> bytes of the encoded output


@dataclass
class Profile:
    model: str
    device: DeviceSpec
    layers: dict[str, LayerProfile]
    input_bytes: int
    input_wire: dict[str, int]
    exits: dict[str, dict]  # name -> {"at", "accuracy", "path": [layer names]}
    meta: dict = field(default_factory=dict)
    # under a CPU quota: per exit, the measured ms of the device's head [0, s) for s = 0..n, each run as one
    # request runs it (after an idle period): a short head runs at full speed on the quota left in a period,
    # which per-layer times cannot express (see ``head_ms``)
    heads: dict[str, list[float]] = field(default_factory=dict)

    # --- costs the planner needs ------------------------------------------------------------------------
    def path_ms(self, exit_name: str) -> list[float]:
        """Per-layer ms along the exit's path, summing to the head of every split: with measured heads (a
        quota device) the increments of their running maximum, else the layers' own times."""
        head = self.heads.get(exit_name)
        if head is None:
            return [self.layers[n].ms for n in self.exits[exit_name]["path"]]
        cum = list(accumulate(head, max))
        return [b - a for a, b in zip(cum, cum[1:], strict=False)]

    def cut_bytes(self, exit_name: str, wire: str = "f32+none") -> list[int]:
        """Bytes on the wire at every cut of the exit's path: index 0 is the input, the last the logits."""
        path = self.exits[exit_name]["path"]
        return [self.input_wire.get(wire, self.input_bytes)] + [
            self.layers[n].wire.get(wire, self.layers[n].out_bytes) for n in path
        ]

    # --- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model,
            "device": self.device.to_dict(),
            "input_bytes": self.input_bytes,
            "input_wire": self.input_wire,
            "exits": self.exits,
            "layers": {k: asdict(v) for k, v in self.layers.items()},
            "meta": self.meta,
            **({"heads": self.heads} if self.heads else {}),
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        if d.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} file (format: {d.get('format')!r})")
        layers = {k: LayerProfile(**v) for k, v in d["layers"].items()}
        for e, info in d["exits"].items():
            missing = [n for n in info["path"] if n not in layers]
            if missing:
                raise ValueError(f"profile exit {e}: layers {missing} have no measurement")
        heads = {k: [float(v) for v in h] for k, h in d.get("heads", {}).items()}
        for e, h in heads.items():
            if e not in d["exits"] or len(h) != len(d["exits"][e]["path"]) + 1:
                raise ValueError(f"profile heads of {e!r}: need one time per split of a profiled exit's path")
        return cls(
            d["model"],
            DeviceSpec.from_dict(d["device"]),
            layers,
            d["input_bytes"],
            d["input_wire"],
            d["exits"],
            d.get("meta", {}),
            heads,
        )

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read profile {path}: {exc}") from exc

    def check_model(self, model: BranchyModel) -> None:
        if self.model != model.name:
            raise ValueError(f"profile is for model {self.model!r}, not {model.name!r}")
        missing = [n for n in model.layer_names() if n not in self.layers]
        if missing:
            raise ValueError(f"profile of {self.model} lacks layers {missing[:5]}")


def wire_sizes(t: torch.Tensor | tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Encoded bytes of the state at a cut (one tensor, or every live tensor of a DAG cut)."""
    return {wire_key(d, c): len(encode_state(t, d, c)) for d in DTYPES for c in CODECS}


def _samples(xs) -> list:
    """The batch-1 states of a batch (a tensor, or a tuple of tensors at a DAG cut)."""
    if isinstance(xs, tuple):
        return [tuple(t[i : i + 1] for t in xs) for i in range(len(xs[0]))]
    return [xs[i : i + 1] for i in range(len(xs))]


def _median_wire(samples: list) -> dict[str, int]:
    sizes = [wire_sizes(s) for s in samples]
    return {k: int(statistics.median(s[k] for s in sizes)) for k in sizes[0]}


def _timed_ms(
    fn: Callable[[], torch.Tensor], slowdown: float, cpu: bool = False
) -> tuple[torch.Tensor, float]:
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn()
    if slowdown > 1.0 or cpu:  # emulated device: this thread's CPU time x slowdown (no sleeping needed here)
        return out, 1000 * (time.thread_time() - c0) * slowdown
    return out, 1000 * (time.perf_counter() - w0)


@torch.no_grad()
def profile_model(
    model: BranchyModel,
    device: DeviceSpec,
    inputs: torch.Tensor,
    warmup: int = 5,
    repeats: int = 30,
    progress: Callable[[int, int], None] | None = None,
) -> Profile:
    """Time every layer of ``model`` (batch 1) inside whole passes over the chain, so caches are as cold or
    warm as in real use: ``warmup`` passes, then ``repeats`` timed passes cycling through ``inputs``; the
    median per layer. Wire bytes are medians over all of ``inputs``.

    Under a CPU quota (``device.cpu_quota``) the passes run throttled, and a layer's time is its median CPU
    time x the wall/CPU ratio of the timed passes (the quota's effective slowdown, measured): a layer shorter
    than the quota left in a period runs at full speed, so its own wall times would not add up to a pass."""
    if warmup < 0 or repeats < 1 or len(inputs) < 1:
        raise ValueError("warmup must be >= 0, repeats >= 1 and inputs non-empty")
    layers: dict[str, LayerProfile] = {}
    todo = [(model.backbone, None)] + [(e.head, e) for e in model.exits]
    total, done = warmup + repeats, 0
    quota = device.cpu_quota > 0
    pass_wall = pass_cpu = 0.0
    with torch_threads(device.threads), device_thread(device):
        starts = {None: inputs} | {e.name: model.backbone.run(inputs, 0, e.at) for e in model.exits}
        times: dict[str, list[float]] = {}
        host: dict[str, list[float]] = {}
        for r in range(total):
            pw, pc = time.perf_counter(), time.thread_time()
            for chain, ex in todo:
                x = starts[None if ex is None else ex.name][r % len(inputs)].unsqueeze(0)
                for layer in chain.layers:
                    w0 = time.perf_counter()
                    x, ms = _timed_ms(lambda layer=layer, x=x: layer.run(x), device.slowdown, quota)
                    if r >= warmup:
                        times.setdefault(layer.name, []).append(ms)
                        host.setdefault(layer.name, []).append(1000 * (time.perf_counter() - w0))
            if r >= warmup:
                pass_wall += time.perf_counter() - pw
                pass_cpu += time.thread_time() - pc
            done += 1
            if progress:
                progress(done, total)
    scale = pass_wall / max(pass_cpu, 1e-9) if quota else 1.0
    with torch_threads(device.threads):
        for chain, ex in todo:
            xs = starts[None if ex is None else ex.name]
            for layer in chain.layers:
                in_bytes = 4 * sum(t[0].numel() for t in (xs if isinstance(xs, tuple) else (xs,)))
                xs = layer.run(xs)
                layers[layer.name] = LayerProfile(
                    layer.kind,
                    layer.macs,
                    in_bytes,
                    layer.out_bytes,
                    statistics.median(times[layer.name]) * scale,
                    statistics.median(host[layer.name]),
                    _median_wire(_samples(xs)),
                )
    exits = {
        e.name: {"at": e.at, "accuracy": e.accuracy, "path": model.path(e.name).names} for e in model.exits
    }
    meta = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "warmup": warmup,
        "repeats": repeats,
        "batch": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    heads = {}
    if quota:
        meta["cpu_quota_effective_slowdown"] = round(scale, 3)
        heads = head_ms(model, device, inputs, max(3, min(repeats, 7)))
        meta["head_repeats"] = max(3, min(repeats, 7))
    return Profile(
        model.name,
        device,
        layers,
        model.backbone.in_bytes,
        _median_wire([inputs[i : i + 1] for i in range(len(inputs))]),
        exits,
        meta,
        heads,
    )


@torch.no_grad()
def head_ms(
    model: BranchyModel, device: DeviceSpec, inputs: torch.Tensor, repeats: int
) -> dict[str, list[float]]:
    """Per exit, the median wall ms of the head ``[0, s)`` for every split ``s`` of its path, each run under
    the device's CPU quota as a request runs it: after an idle CFS period (the quota refilled), once.

    Under a quota a head shorter than the budget left in the period runs at full speed and a long one at
    the quota's rate, so a head's time is not the sum of its layers' pass-averaged times (a short head ran
    1.4-3.6x faster than that on ``mobilenet``); a planner with one scale factor per side oscillates
    between short heads and device-only (BENCHMARKS.md). Measured heads make the cost of every split
    what a request sees."""
    idle = 1.5 * device.cpu_period_us / 1e6
    out: dict[str, list[float]] = {}
    with torch_threads(device.threads), device_thread(device):
        for e in model.exits:
            chain = model.path(e.name)
            times: list[list[float]] = [[0.0] for _ in range(len(chain) + 1)]
            for r in range(repeats):
                x = inputs[r % len(inputs)].unsqueeze(0)
                for s in range(1, len(chain) + 1):
                    time.sleep(idle)
                    t0 = time.perf_counter()
                    chain.run(x, 0, s)
                    times[s].append(1000 * (time.perf_counter() - t0))
            out[e.name] = [statistics.median(t[1:]) if s else 0.0 for s, t in enumerate(times)]
    return out
