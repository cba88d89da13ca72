"""Run part of an exit's path, as the device or the edge does: timed, optionally slowed down (device
emulation), checking early exits on the way and keeping the backbone activations at exit points (taps) so a
device can still answer from a local exit when the edge is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from edgeinfer.models.dnn.zoo import BranchyModel
from edgeinfer.split.exits import Thresholds
from edgeinfer.split.profile import emulated_call, settle


@dataclass
class Segment:
    out: torch.Tensor  # the tensor at ``end`` (or the logits of the exit that stopped early)
    end: int
    compute_s: float  # emulated compute time
    early_exit: str | None = None  # set when a confident early exit stopped the run
    taps: dict[int, torch.Tensor] = field(default_factory=dict)  # backbone position -> activation


@torch.no_grad()
def run_segment(
    model: BranchyModel,
    exit_name: str,
    x: torch.Tensor,
    start: int,
    end: int,
    slowdown: float = 1.0,
    thresholds: Thresholds | None = None,
    sleep: bool = True,
) -> Segment:
    """Layers ``[start, end)`` of exit ``exit_name``'s path on ``x``.

    With ``thresholds``, every other exit whose head attaches at a backbone position in ``(start, end]``
    (``[start, end]`` when ``start == 0``) is evaluated there and the run stops if it is confident.
    With ``slowdown > 1`` the emulated time is slept once at the end (``sleep``; else by the caller, e.g.
    after encoding the tensor: ``settle(t0, seg.compute_s + encode_s)``).
    """
    w0 = time.perf_counter()
    seg = _segment(model, exit_name, x, start, end, slowdown, thresholds)
    if sleep and slowdown > 1.0:
        settle(w0, seg.compute_s)
    return seg


def _segment(
    model: BranchyModel,
    exit_name: str,
    x: torch.Tensor,
    start: int,
    end: int,
    slowdown: float,
    thresholds: Thresholds | None,
) -> Segment:
    target = model.exit(exit_name)
    path = model.path(exit_name)
    if not 0 <= start <= end <= len(path):
        raise ValueError(f"bad segment [{start}, {end}) of exit {exit_name} ({len(path)} layers)")
    early = sorted(
        (e for e in model.exits if e.name != exit_name and e.at < target.at and start <= e.at <= end),
        key=lambda e: e.at,
    )
    if start > 0:
        early = [e for e in early if e.at > start]
    seg = Segment(x, start, 0.0)
    if start <= target.at:
        seg.taps[start] = x
    pos = start
    stops = {e.at for e in early} | {end} | ({target.at} if start < target.at < end else set())
    for stop in sorted(stops):
        seg.out, spent = _timed(lambda a=pos, b=stop, h=seg.out: path.run(h, a, b), slowdown)
        seg.compute_s += spent
        pos = seg.end = stop
        if stop <= target.at:
            seg.taps[stop] = seg.out
        for e in early:
            if e.at == stop and thresholds is not None and e.name in thresholds.values:
                logits, spent = _timed(lambda e=e, h=seg.out: e.head.run(h), slowdown)
                seg.compute_s += spent
                if thresholds.accept(e.name, logits):
                    seg.out, seg.early_exit = logits, e.name
                    return seg
    return seg


def _timed(fn, slowdown: float):
    return emulated_call(fn, slowdown, sleep=False)  # run_segment / local_answer sleep once at the end


@torch.no_grad()
def local_answer(
    model: BranchyModel, taps: dict[int, torch.Tensor], exit_name: str, slowdown: float = 1.0
) -> tuple[torch.Tensor, float]:
    """Logits of ``exit_name`` computed on the device from the deepest backbone tap at or before its head."""
    e = model.exit(exit_name)
    usable = [p for p in taps if p <= e.at]
    if not usable:
        raise ValueError(f"no activation before exit {exit_name}")
    p = max(usable)
    return emulated_call(lambda: e.head.run(model.backbone.run(taps[p], p, e.at)), slowdown)
