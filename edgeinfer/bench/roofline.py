"""Roofline: the device's memory bandwidth and matmul throughput, and what they allow a model to reach.

Decode reads every weight once per token (plus the KV cache) and does ~2 FLOPs per weight, so its arithmetic
intensity is ~2 / bytes-per-weight FLOP/byte: far below the machine balance (peak FLOP/s / bandwidth) of a
CPU, which makes decode memory-bound. Prefill multiplies the same weights with many tokens at once and is
bound by FLOPs instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeinfer.bench.gguf_stats import ModelStats
from edgeinfer.bench.runs import Progress, Run, from_fields, load, load_warning, new_run
from edgeinfer.bench.table import Table, fmt_num


@dataclass(frozen=True)
class DeviceMeasure:
    bandwidth_gbs: float  # best of copy/triad, GB/s (1e9 bytes)
    copy_gbs: float
    triad_gbs: float
    matmul_gflops: float  # fp32 GEMM, GFLOP/s
    threads: int
    array_mib: int
    matmul_n: int


@dataclass
class DecodeBound:
    """Decode of one token: bytes read and FLOPs, the bound they allow, and what was achieved."""

    context: int
    bytes_per_token: float
    weight_bytes_per_token: float
    kv_bytes_per_token: float
    flops_per_token: float
    intensity_flop_per_byte: float
    memory_bound_tps: float
    compute_bound_tps: float
    bound_tps: float
    bound_by: str  # "memory" or "compute"
    achieved_tps: float | None = None
    achieved_over_bound: float | None = None
    achieved_bandwidth_gbs: float | None = None
    achieved_gflops: float | None = None


@dataclass
class PrefillBound:
    tokens: int
    flops_per_token: float
    bound_tps: float
    bound_by: str = "compute"
    achieved_tps: float | None = None
    achieved_over_bound: float | None = None
    achieved_gflops: float | None = None


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass
class RooflineResult:
    model: str
    bandwidth_gbs: float
    matmul_gflops: float
    machine_balance_flop_per_byte: float
    decode: DecodeBound
    prefill: PrefillBound

    def to_dict(self) -> dict[str, Any]:  # achieved figures only when measured, as in earlier run files
        d = asdict(self)
        d["decode"], d["prefill"] = _without_none(d["decode"]), _without_none(d["prefill"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RooflineResult:
        return from_fields(
            cls,
            d,
            decode=lambda v: from_fields(DecodeBound, v),
            prefill=lambda v: from_fields(PrefillBound, v),
        )


def _best(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_bandwidth(threads: int, array_mib: int = 256, repeats: int = 5) -> tuple[float, float]:
    """STREAM-like copy (a = b) and triad (a = b + s*c) over float32 arrays far larger than the caches.

    Returns (copy, triad) in GB/s, counting bytes read + bytes written, best of ``repeats``.
    """
    import torch

    if array_mib < 16:
        raise ValueError("array_mib must be >= 16 so that the arrays do not fit in the caches")
    torch.set_num_threads(threads)
    n = array_mib * (1 << 20) // 4
    a = torch.ones(n)
    b = torch.full((n,), 2.0)
    c = torch.full((n,), 3.0)
    a.copy_(b)  # touch all pages before timing
    torch.add(b, c, alpha=0.5, out=a)
    copy_s = _best(lambda: a.copy_(b), repeats)
    triad_s = _best(lambda: torch.add(b, c, alpha=0.5, out=a), repeats)
    if not torch.equal(a[:4], torch.full((4,), 3.5)):
        raise RuntimeError("triad produced a wrong result")
    return 2 * n * 4 / copy_s / 1e9, 3 * n * 4 / triad_s / 1e9


def measure_matmul(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """fp32 GEMM throughput (2 n^3 FLOPs per n x n product) in GFLOP/s, best of ``repeats``."""
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(n, n)
    y = torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(x, y, out=out)
    seconds = _best(lambda: torch.mm(x, y, out=out), repeats)
    return 2 * n**3 / seconds / 1e9


def measure_device(
    threads: int, array_mib: int = 256, matmul_n: int = 2048, repeats: int = 5
) -> DeviceMeasure:
    copy, triad = measure_bandwidth(threads, array_mib, repeats)
    gflops = measure_matmul(threads, matmul_n, repeats)
    return DeviceMeasure(max(copy, triad), copy, triad, gflops, threads, array_mib, matmul_n)


def analyse(
    stats: ModelStats,
    bandwidth_gbs: float,
    matmul_gflops: float,
    decode_tps: float | None = None,
    prefill_tps: float | None = None,
    decode_context: int = 64,
    prefill_tokens: int = 512,
) -> RooflineResult:
    """Bounds for decode and prefill, and achieved / bound when measured rates are given.

    ``decode_context`` is the mean number of positions in the KV cache while decoding (tg N from an empty
    context: N / 2); prefill of ``prefill_tokens`` attends over N / 2 positions on average and runs the output
    projection for its last position only.
    """
    if bandwidth_gbs <= 0 or matmul_gflops <= 0:
        raise ValueError("bandwidth and matmul throughput must be positive")
    bw = bandwidth_gbs * 1e9
    peak = matmul_gflops * 1e9
    d_bytes = stats.decode_bytes(decode_context)
    d_flops = stats.flops_per_token(decode_context)
    mem_tps = bw / d_bytes
    compute_tps = peak / d_flops
    decode_bound = min(mem_tps, compute_tps)
    p_flops = stats.prefill_flops_per_token(prefill_tokens)
    prefill_bound = peak / p_flops
    decode = DecodeBound(
        context=decode_context,
        bytes_per_token=d_bytes,
        weight_bytes_per_token=stats.decode_weight_bytes,
        kv_bytes_per_token=d_bytes - stats.decode_weight_bytes,
        flops_per_token=d_flops,
        intensity_flop_per_byte=d_flops / d_bytes,
        memory_bound_tps=mem_tps,
        compute_bound_tps=compute_tps,
        bound_tps=decode_bound,
        bound_by="memory" if mem_tps <= compute_tps else "compute",
    )
    prefill = PrefillBound(tokens=prefill_tokens, flops_per_token=p_flops, bound_tps=prefill_bound)
    if decode_tps is not None:
        decode.achieved_tps = decode_tps
        decode.achieved_over_bound = decode_tps / decode_bound
        decode.achieved_bandwidth_gbs = decode_tps * d_bytes / 1e9
        decode.achieved_gflops = decode_tps * d_flops / 1e9
    if prefill_tps is not None:
        prefill.achieved_tps = prefill_tps
        prefill.achieved_over_bound = prefill_tps / prefill_bound
        prefill.achieved_gflops = prefill_tps * p_flops / 1e9
    return RooflineResult(stats.name, bandwidth_gbs, matmul_gflops, peak / bw, decode, prefill)


def run(
    specs: Sequence[str],
    threads: int,
    model_run: Path | None = None,
    pp: int = 256,
    tg: int = 64,
    repeats: int = 3,
    array_mib: int = 256,
    label: str | None = None,
    progress: Progress | None = None,
) -> Run:
    """The `bench roofline` run: measure the device, then each model's bounds against its achieved tok/s
    (taken from ``model_run``, a `bench model` run at the same thread count, or measured now)."""
    from edgeinfer.bench.gguf_stats import read_stats
    from edgeinfer.bench.model import parse_tests, run_model_bench
    from edgeinfer.models.registry import resolve

    progress = progress or Progress()
    measured: dict[tuple[str, str], tuple[float, int]] = {}  # (model, "pp"/"tg") -> (tok/s, tokens)
    if model_run is not None:
        mr = load(model_run)
        if mr.kind != "model":
            raise ValueError(f"{model_run} is a {mr.kind} run; --model-run needs a `bench model` run")
        for r in mr.results:
            if r.threads == threads and r.backend == "llamacpp":
                measured[(r.model, r.kind)] = (r.tps_mean, r.n_tokens)  # the last of several sizes wins
    if note := load_warning():
        progress.note(note)
    bench = new_run(
        "roofline", {"models": list(specs), "threads": threads, "model_run": str(model_run or "")}, label
    )
    models = [resolve(spec) for spec in specs]  # a bad name fails before the measurements
    progress.start("measuring memory bandwidth and matmul throughput", None)
    dev = measure_device(threads, array_mib)
    bench.device = dev
    for name, path in models:
        stats = read_stats(path)
        got_pp, got_tg = measured.get((name, "pp")), measured.get((name, "tg"))
        if got_pp is None or got_tg is None:
            progress.start(f"measuring {name}: pp{pp} tg{tg}, {threads} threads", None)
            pp_row, tg_row = run_model_bench(
                path, ["llamacpp"], [threads], parse_tests([pp], [tg]), repeats, model_name=name
            )
            got_pp, got_tg = (pp_row.tps_mean, pp), (tg_row.tps_mean, tg)
        (pp_tps, pp_n), (tg_tps, tg_n) = got_pp, got_tg
        res = analyse(stats, dev.bandwidth_gbs, dev.matmul_gflops, tg_tps, pp_tps, max(1, tg_n // 2), pp_n)
        res.model = name
        bench.results.append(res)
    return bench


def rows(run: Run) -> Table:
    """Decode and prefill: the bound, what bounds it, and achieved / bound per model."""
    d = run.device
    notes = ()
    if d is not None:
        notes = (
            f"device: bandwidth {d.bandwidth_gbs:.1f} GB/s (copy {d.copy_gbs:.1f}, triad {d.triad_gbs:.1f}), "
            f"fp32 matmul {d.matmul_gflops:.0f} GFLOP/s, {d.threads} threads",
        )

    def ratio(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.0f} %"

    body = []
    for r in run.results:
        dec, pre = r.decode, r.prefill
        body.append(
            (
                r.model,
                f"{dec.bytes_per_token / 1e6:.0f}",
                f"{dec.intensity_flop_per_byte:.2f}",
                f"{r.machine_balance_flop_per_byte:.1f}",
                fmt_num(dec.bound_tps),
                dec.bound_by,
                fmt_num(dec.achieved_tps),
                ratio(dec.achieved_over_bound),
                fmt_num(pre.bound_tps, 0),
                fmt_num(pre.achieved_tps, 0),
                ratio(pre.achieved_over_bound),
            )
        )
    header = (
        "model",
        "decode MB/token",
        "decode FLOP/B",
        "machine FLOP/B",
        "decode bound tok/s",
        "bound by",
        "decode achieved",
        "achieved/bound",
        "prefill bound tok/s",
        "prefill achieved",
        "prefill achieved/bound",
    )
    right = frozenset(i for i in range(1, len(header)) if i != 5)
    return Table("Roofline", header, body, right=right, notes=notes)
