"""Roofline: the device's memory bandwidth and matmul throughput, and what they allow a model to reach.

Decode reads every weight once per token (plus the KV cache) and does ~2 FLOPs per weight, so its arithmetic
intensity is ~2 / bytes-per-weight FLOP/byte: far below the machine balance (peak FLOP/s / bandwidth) of a
CPU, which makes decode memory-bound. Prefill multiplies the same weights with many tokens at once and is
bound by FLOPs instead.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from edgeinfer.bench.gguf_stats import ModelStats


@dataclass(frozen=True)
class DeviceMeasure:
    bandwidth_gbs: float  # best of copy/triad, GB/s (1e9 bytes)
    copy_gbs: float
    triad_gbs: float
    matmul_gflops: float  # fp32 GEMM, GFLOP/s
    threads: int
    array_mib: int
    matmul_n: int


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
) -> dict[str, Any]:
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
    out: dict[str, Any] = {
        "model": stats.name,
        "bandwidth_gbs": bandwidth_gbs,
        "matmul_gflops": matmul_gflops,
        "machine_balance_flop_per_byte": peak / bw,
        "decode": {
            "context": decode_context,
            "bytes_per_token": d_bytes,
            "weight_bytes_per_token": stats.decode_weight_bytes,
            "kv_bytes_per_token": d_bytes - stats.decode_weight_bytes,
            "flops_per_token": d_flops,
            "intensity_flop_per_byte": d_flops / d_bytes,
            "memory_bound_tps": mem_tps,
            "compute_bound_tps": compute_tps,
            "bound_tps": decode_bound,
            "bound_by": "memory" if mem_tps <= compute_tps else "compute",
        },
        "prefill": {
            "tokens": prefill_tokens,
            "flops_per_token": p_flops,
            "bound_tps": prefill_bound,
            "bound_by": "compute",
        },
    }
    if decode_tps is not None:
        out["decode"].update(
            achieved_tps=decode_tps,
            achieved_over_bound=decode_tps / decode_bound,
            achieved_bandwidth_gbs=decode_tps * d_bytes / 1e9,
            achieved_gflops=decode_tps * d_flops / 1e9,
        )
    if prefill_tps is not None:
        out["prefill"].update(
            achieved_tps=prefill_tps,
            achieved_over_bound=prefill_tps / prefill_bound,
            achieved_gflops=prefill_tps * p_flops / 1e9,
        )
    return out


def device_dict(m: DeviceMeasure) -> dict[str, Any]:
    return asdict(m)
