"""A Neurosurgeon-style latency predictor: one linear regression per layer type.

``ms = a + b * macs + c * in_bytes + d * out_bytes``, fitted by least squares on layers measured on the
device (random conv/linear/pool/act/norm layers, or the model's own). ``evaluate`` reports the error on
held-out layers, so the predictor can stand in for a device that was not profiled layer by layer.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from edgeinfer.models.dnn.chain import to_chain
from edgeinfer.split.profile import DeviceSpec, LayerProfile, device_thread, median_ms, torch_threads


@dataclass
class Sample:
    kind: str
    macs: int
    in_bytes: int
    out_bytes: int
    ms: float

    def features(self) -> list[float]:
        return [1.0, self.macs / 1e6, self.in_bytes / 1e6, self.out_bytes / 1e6]


def from_profile(layers: dict[str, LayerProfile]) -> list[Sample]:
    return [Sample(p.kind, p.macs, p.in_bytes, p.out_bytes, p.ms) for p in layers.values()]


def random_layer(rng: random.Random) -> tuple[nn.Module, torch.Tensor]:
    """One random layer of a common type with an input that fits it."""
    kind = rng.choice(["conv", "conv", "linear", "pool", "act", "norm"])
    c, side = rng.choice([1, 4, 8, 16, 32, 64]), rng.choice([4, 8, 16, 32, 64])
    if kind == "conv":
        k = rng.choice([1, 3, 5])
        return nn.Conv2d(c, rng.choice([4, 8, 16, 32, 64]), k, padding=k // 2), torch.randn(1, c, side, side)
    if kind == "linear":
        n = rng.choice([16, 64, 256, 1024, 4096])
        return nn.Linear(n, rng.choice([10, 32, 128, 512])), torch.randn(1, n)
    if kind == "pool":
        return nn.MaxPool2d(2), torch.randn(1, c, max(side, 2), max(side, 2))
    if kind == "norm":
        return nn.BatchNorm2d(c).eval(), torch.randn(1, c, side, side)
    return nn.ReLU(), torch.randn(1, c, side, side)


@torch.no_grad()
def measure_bank(
    device: DeviceSpec, n: int = 120, seed: int = 0, warmup: int = 3, repeats: int = 15
) -> list[Sample]:
    """Measure ``n`` random layers on this host, as ``device`` (threads, slowdown or CPU quota: under a quota
    a layer's time is its CPU time x the wall/CPU ratio of the whole measurement, as in ``profile_model``)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    out = []
    quota = device.cpu_quota > 0
    with torch_threads(device.threads), device_thread(device):
        w0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(n):
            module, x = random_layer(rng)
            layer = to_chain(nn.Sequential(module), x).layers[0]
            ms = median_ms(lambda module=module, x=x: module(x), warmup, repeats, device.slowdown, quota)
            out.append(Sample(layer.kind, layer.macs, 4 * x[0].numel(), layer.out_bytes, ms))
        scale = (time.perf_counter() - w0) / max(time.thread_time() - c0, 1e-9) if quota else 1.0
    return [replace(s, ms=s.ms * scale) for s in out]


class Predictor:
    """Per-kind least-squares fit; kinds never seen fall back to a fit over all samples."""

    def __init__(self, samples: list[Sample]):
        if not samples:
            raise ValueError("the predictor needs at least one measured layer")
        self.coef: dict[str, np.ndarray] = {}
        by_kind: dict[str, list[Sample]] = {}
        for s in samples:
            by_kind.setdefault(s.kind, []).append(s)
        self.coef["*"] = self._fit(samples)
        for kind, ss in by_kind.items():
            if len(ss) >= 4:
                self.coef[kind] = self._fit(ss)
        self.floor = min(s.ms for s in samples)

    @staticmethod
    def _fit(samples: list[Sample]) -> np.ndarray:
        x = np.array([s.features() for s in samples])
        y = np.array([s.ms for s in samples])
        # relative error matters (layers span 4 orders of magnitude): weight each row by 1/ms
        w = 1.0 / np.maximum(y, 1e-4)
        coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
        return coef

    def predict(self, kind: str, macs: int, in_bytes: int, out_bytes: int) -> float:
        coef = self.coef.get(kind, self.coef["*"])
        ms = float(np.dot(coef, Sample(kind, macs, in_bytes, out_bytes, 0.0).features()))
        return max(ms, self.floor)

    def evaluate(self, samples: list[Sample]) -> dict:
        """Absolute percentage errors on ``samples`` (held out from the fit): overall and per kind."""
        errs: dict[str, list[float]] = {}
        for s in samples:
            p = self.predict(s.kind, s.macs, s.in_bytes, s.out_bytes)
            errs.setdefault(s.kind, []).append(abs(p - s.ms) / max(s.ms, 1e-6))
        every = [e for v in errs.values() for e in v]

        def stats(v: list[float]) -> dict:
            return {"n": len(v), "median_ape": float(np.median(v)), "mean_ape": float(np.mean(v))}

        return {"all": stats(every), **{k: stats(v) for k, v in sorted(errs.items())}} if every else {}


def split_holdout(
    samples: list[Sample], frac: float = 0.25, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    idx = list(range(len(samples)))
    random.Random(seed).shuffle(idx)
    k = max(1, int(len(idx) * frac))
    return [samples[i] for i in idx[k:]], [samples[i] for i in idx[:k]]
