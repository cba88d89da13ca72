"""Early-exit confidence criteria and their thresholds, calibrated on validation data.

A sample leaves at an early exit when its confidence there is >= the exit's threshold. Confidence is
``top1`` (max softmax probability), ``margin`` (top-1 minus top-2 probability) or ``entropy`` (1 - normalised
entropy of the softmax), all in [0, 1], higher = surer. ``calibrate`` picks, for every early exit, the lowest
threshold whose accepted validation samples are still at least ``target`` accurate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

CRITERIA = ("entropy", "top1", "margin")


def confidence(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-row confidence of ``logits`` (N x C)."""
    p = torch.softmax(logits.float(), dim=-1)
    if criterion == "top1":
        return p.max(dim=-1).values
    if criterion == "margin":
        top = p.topk(2, dim=-1).values
        return top[:, 0] - top[:, 1]
    if criterion == "entropy":
        ent = -(p * p.clamp_min(1e-12).log()).sum(-1)
        return 1.0 - ent / math.log(p.shape[-1])
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


@dataclass
class Thresholds:
    criterion: str
    values: dict[str, float]  # exit name -> threshold; exits not listed never stop early
    target: float = 0.0
    stats: dict = field(default_factory=dict)

    def accept(self, exit_name: str, logits: torch.Tensor) -> bool:
        t = self.values.get(exit_name)
        return t is not None and float(confidence(logits, self.criterion)[0]) >= t

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Thresholds:
        if d.get("criterion") not in CRITERIA:
            raise ValueError(f"bad thresholds: criterion {d.get('criterion')!r}")
        return cls(
            d["criterion"],
            {k: float(v) for k, v in d["values"].items()},
            d.get("target", 0.0),
            d.get("stats", {}),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Thresholds:
        return cls.from_dict(json.loads(Path(path).read_text()))


def calibrate(
    exit_logits: dict[str, torch.Tensor], y: torch.Tensor, criterion: str, target: float, final: str
) -> Thresholds:
    """Thresholds for every exit but ``final``: accepted validation samples are >= ``target`` accurate."""
    values = {}
    for name, logits in exit_logits.items():
        if name == final:
            continue
        conf = confidence(logits, criterion)
        correct = (logits.argmax(-1) == y).float()
        order = conf.argsort(descending=True)
        acc = correct[order].cumsum(0) / torch.arange(1, len(order) + 1)
        ok = (acc >= target).nonzero()
        # the deepest prefix (most samples accepted) that is still accurate enough
        values[name] = float(conf[order[int(ok.max())]]) if len(ok) else math.inf
    return Thresholds(criterion, values, target)


def cascade(
    exit_logits: dict[str, torch.Tensor], order: list[str], thresholds: Thresholds
) -> tuple[torch.Tensor, list[str]]:
    """Predictions when each sample leaves at the first confident exit in ``order`` (the last accepts all)."""
    n = len(next(iter(exit_logits.values())))
    preds = torch.empty(n, dtype=torch.int64)
    taken = []
    for i in range(n):
        for name in order:
            row = exit_logits[name][i : i + 1]
            if name == order[-1] or thresholds.accept(name, row):
                preds[i] = int(row.argmax())
                taken.append(name)
                break
    return preds, taken


def exit_logits(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits of every exit of a ``BranchyModel`` on a batch."""
    return {e.name: model.path(e.name).run(x) for e in model.exits}


def calibrate_on_val(model, criterion: str, target: float | None = None) -> Thresholds:
    """Calibrate a zoo model on its validation split; default target: the final exit's val accuracy."""
    from edgeinfer.models.dnn import zoo

    val = zoo.dataset(model.name)["val"]
    logits = exit_logits(model, val.x)
    final = model.final.name
    if target is None:
        target = float((logits[final].argmax(-1) == val.y).float().mean())
    th = calibrate(logits, val.y, criterion, target, final)
    preds, taken = cascade(logits, [e.name for e in model.exits], th)
    th.stats = {
        "val_accuracy": float((preds == val.y).float().mean()),
        "val_exit_rate": {e.name: taken.count(e.name) / len(taken) for e in model.exits},
    }
    return th
