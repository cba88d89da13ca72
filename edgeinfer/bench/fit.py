"""`bench fit`: which models (parameters x quantization) fit in which device's memory with a given context,
and the decode speed each device's memory bandwidth allows.

memory needed = weights (params x bits / 8) + KV cache (2 x layers x kv_heads x head_dim x context x 2 B)
                + runtime overhead (compute buffers, tokenizer, process; ``overhead_gb``)
fits         <=> memory needed <= installed memory - reserved for the OS
projected decode tok/s = sustained bandwidth / (weights + KV cache read at half the context)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.resources import files
from typing import Any

import yaml

from edgeinfer.bench.runs import Progress, Run, from_fields, new_run
from edgeinfer.bench.table import Table


@dataclass(frozen=True)
class Device:
    id: str
    name: str
    memory_gb: float
    reserved_gb: float
    peak_bandwidth_gbs: float | None
    stream_gbs: float | None = None
    sources: tuple[str, ...] = ()
    measured: bool = False

    def sustained_gbs(self, efficiency: float) -> float:
        if self.stream_gbs:
            return self.stream_gbs
        if not self.peak_bandwidth_gbs:
            raise ValueError(f"device {self.id} has neither a STREAM figure nor a peak bandwidth")
        return self.peak_bandwidth_gbs * efficiency

    @property
    def usable_gb(self) -> float:
        return self.memory_gb - self.reserved_gb


@dataclass(frozen=True)
class ModelShape:
    id: str
    params: float
    layers: int
    kv_heads: int
    head_dim: int
    kv_like: str | None = None  # for a bare size: the reference model whose KV-cache shape is assumed

    def kv_bytes(self, context: int, kv_elem_bytes: float = 2.0) -> float:
        return 2.0 * self.layers * self.kv_heads * self.head_dim * context * kv_elem_bytes


@dataclass(frozen=True)
class FitResult:
    """One (model, quantization, device): memory needed against usable, and the projected decode speed."""

    model: str
    kv_shape_from: str
    params: float
    quant: str
    bits_per_weight: float
    device: str
    device_name: str
    context: int
    weights_gb: float
    kv_cache_gb: float
    overhead_gb: float
    needed_gb: float
    usable_gb: float
    fits: bool
    headroom_gb: float
    bandwidth_gbs: float
    bandwidth_source: str
    projected_decode_tps: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitResult:
        return from_fields(cls, d)


def _data(name: str) -> dict[str, Any]:
    return yaml.safe_load(files("edgeinfer.bench").joinpath("data", name).read_text())


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def load_devices() -> tuple[list[Device], float]:
    raw = _data("devices.yaml")
    devices = [
        Device(
            id=d["id"],
            name=d["name"],
            memory_gb=float(d["memory_gb"]),
            reserved_gb=float(d.get("reserved_gb", 0.0)),
            peak_bandwidth_gbs=_float_or_none(d.get("peak_bandwidth_gbs")),
            stream_gbs=_float_or_none(d.get("stream_gbs")),
            sources=tuple(d.get("sources", ())),
        )
        for d in raw["devices"]
    ]
    return devices, float(raw.get("default_efficiency", 0.5))


def load_models() -> tuple[list[ModelShape], dict[str, float]]:
    raw = _data("models.yaml")
    models = [
        ModelShape(str(m["id"]), float(m["params"]), int(m["layers"]), int(m["kv_heads"]), int(m["head_dim"]))
        for m in raw["models"]
    ]
    return models, {k: float(v) for k, v in raw["quant_bits"].items()}


def this_machine(bandwidth_gbs: float, reserved_gb: float = 1.0) -> Device:
    """The machine we run on: installed memory from psutil, bandwidth as measured."""
    import platform

    import psutil

    return Device(
        id="this-machine",
        name=f"this machine ({platform.node()})",
        memory_gb=psutil.virtual_memory().total / 1e9,
        reserved_gb=reserved_gb,
        peak_bandwidth_gbs=None,
        stream_gbs=bandwidth_gbs,
        sources=("measured live by `edgeinfer bench roofline`'s copy/triad",),
        measured=True,
    )


_PARAMS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt]?)\s*$", re.IGNORECASE)


def parse_params(text: str) -> float:
    """'7B' -> 7e9, '270M' -> 2.7e8, '1.5b' -> 1.5e9, '123456' -> 123456."""
    m = _PARAMS.match(text)
    if not m:
        raise ValueError(f"cannot read a parameter count from {text!r}; write e.g. 7B, 1.5B or 270M")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
    return float(m.group(1)) * scale


def shape_for(spec: str, models: list[ModelShape]) -> ModelShape:
    """A reference model by id, or a size like '7B' with a KV cache shaped like the nearest reference."""
    for m in models:
        if m.id == spec.lower():
            return m
    try:
        params = parse_params(spec)
    except ValueError:
        known = ", ".join(m.id for m in models)
        raise ValueError(f"unknown model {spec!r}: give a size (7B, 270M) or one of: {known}") from None
    nearest = min(models, key=lambda m: abs(m.params - params) / m.params)
    return ModelShape(spec, params, nearest.layers, nearest.kv_heads, nearest.head_dim, kv_like=nearest.id)


def _bw_source(device: Device, efficiency: float) -> str:
    if device.measured:
        return "measured"
    return "STREAM" if device.stream_gbs else f"{efficiency:.0%} peak"


def fit_one(
    model: ModelShape,
    quant: str,
    bits: float,
    device: Device,
    context: int,
    efficiency: float,
    overhead_gb: float = 0.3,
) -> FitResult:
    weights = model.params * bits / 8
    kv = model.kv_bytes(context)
    need = weights + kv + overhead_gb * 1e9
    bw = device.sustained_gbs(efficiency) * 1e9
    read_per_token = weights + model.kv_bytes(context // 2)
    return FitResult(
        model=model.id,
        kv_shape_from=model.kv_like or model.id,
        params=model.params,
        quant=quant,
        bits_per_weight=bits,
        device=device.id,
        device_name=device.name,
        context=context,
        weights_gb=weights / 1e9,
        kv_cache_gb=kv / 1e9,
        overhead_gb=overhead_gb,
        needed_gb=need / 1e9,
        usable_gb=device.usable_gb,
        fits=need <= device.usable_gb * 1e9,
        headroom_gb=device.usable_gb - need / 1e9,
        bandwidth_gbs=bw / 1e9,
        bandwidth_source=_bw_source(device, efficiency),
        projected_decode_tps=bw / read_per_token,
    )


def fit_table(
    model_specs: Sequence[str],
    quants: Sequence[str],
    devices: Sequence[Device],
    context: int,
    efficiency: float,
    overhead_gb: float = 0.3,
) -> list[FitResult]:
    if context < 1:
        raise ValueError("context must be >= 1")
    models, bits = load_models()
    unknown = [q for q in quants if q.lower() not in bits]
    if unknown:
        raise ValueError(f"unknown quantization {', '.join(unknown)}; one of: {', '.join(bits)}")
    rows = []
    for spec in model_specs:
        shape = shape_for(spec, models)
        for q in quants:
            for d in devices:
                rows.append(fit_one(shape, q.lower(), bits[q.lower()], d, context, efficiency, overhead_gb))
    return rows


DEFAULT_MODELS = ("qwen2.5-0.5b", "1.5B", "3B", "7B", "8B")
DEFAULT_QUANTS = ("int4", "int8")


def run(
    specs: Sequence[str] = DEFAULT_MODELS,
    quants: Sequence[str] = DEFAULT_QUANTS,
    context: int = 4096,
    device_ids: Sequence[str] = (),
    measure: bool = True,
    efficiency: float | None = None,
    overhead_gb: float = 0.3,
    label: str | None = None,
    progress: Progress | None = None,
) -> Run:
    """The `bench fit` run over the shipped device profiles (``device_ids``: a subset; ``this-machine``
    measured live when ``measure``)."""
    progress = progress or Progress()
    devices, default_eff = load_devices()
    if device_ids:
        known = {d.id for d in devices} | {"this-machine"}
        bad = [d for d in device_ids if d not in known]
        if bad:
            raise ValueError(f"unknown device {', '.join(bad)}; one of: {', '.join(sorted(known))}")
        devices = [d for d in devices if d.id in device_ids]
    if measure and (not device_ids or "this-machine" in device_ids):
        from edgeinfer.bench.roofline import measure_bandwidth
        from edgeinfer.engine.threads import default_threads

        progress.start("measuring this machine's memory bandwidth", None)
        copy, triad = measure_bandwidth(default_threads(), 256, 3)
        devices.append(this_machine(max(copy, triad)))
    eff = efficiency or default_eff
    results = fit_table(specs, quants, devices, context, eff, overhead_gb)
    config = {
        "models": list(specs),
        "quants": list(quants),
        "context": context,
        "efficiency": eff,
        "overhead_gb": overhead_gb,
    }
    bench = new_run("fit", config, label)
    bench.results = results
    return bench


def rows(run: Run) -> Table:
    """Memory needed against usable, and the decode speed the bandwidth allows, per model x quant x device."""
    body = [
        (
            r.model,
            r.quant,
            r.device,
            str(r.context),
            f"{r.needed_gb:.2f}",
            f"{r.usable_gb:.1f}",
            "yes" if r.fits else "no",
            f"{r.bandwidth_gbs:.1f} ({r.bandwidth_source})",
            f"{r.projected_decode_tps:.1f}",
        )
        for r in run.results
    ]
    header = (
        "model",
        "quant",
        "device",
        "context",
        "needs GB",
        "usable GB",
        "fits",
        "bandwidth GB/s",
        "projected decode tok/s",
    )
    return Table("Fit (memory and projected decode speed)", header, body, right=frozenset({3, 4, 5, 7, 8}))
