"""The DNN model zoo: models with early exits, as a backbone chain plus exit heads.

A ``BranchyModel`` is what the profiler, the split planner and the runtime work on. Exit ``e`` defines a path
``backbone[:e.at] + e.head``; a split ``s`` of that path runs layers ``[0, s)`` on the device and ``[s, n)``
on the edge. Any plain model becomes a ``BranchyModel`` with one exit (``from_module``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeinfer.models.dnn.chain import Chain, to_chain
from edgeinfer.models.dnn.digitnet import DigitNet, DigitNetConfig
from edgeinfer.models.dnn.train import TrainConfig, load_or_train


@dataclass
class Exit:
    name: str
    at: int  # backbone cut where the head attaches
    head: Chain
    accuracy: float | None = None  # measured on the held-out test split
    val_accuracy: float | None = None


@dataclass
class BranchyModel:
    name: str
    backbone: Chain
    exits: list[Exit]  # ordered by position; the last one is the full model
    meta: dict = field(default_factory=dict)

    def exit(self, name: str) -> Exit:
        for e in self.exits:
            if e.name == name:
                return e
        raise KeyError(
            f"model {self.name} has no exit {name!r}; exits: {', '.join(e.name for e in self.exits)}"
        )

    def path(self, exit_name: str) -> Chain:
        """The chain from the input to exit ``exit_name``'s logits."""
        e = self.exit(exit_name)
        return Chain(self.backbone.layers[: e.at] + e.head.layers, self.backbone.in_shape)

    @property
    def final(self) -> Exit:
        return self.exits[-1]

    def layer_names(self) -> list[str]:
        names = list(self.backbone.names)
        for e in self.exits:
            names += e.head.names
        return names


@dataclass(frozen=True)
class ZooEntry:
    description: str
    model: DigitNetConfig
    train: TrainConfig


ZOO: dict[str, ZooEntry] = {
    "digitnet": ZooEntry(
        "CNN with 2 early exits and a bottleneck on scikit-learn digits upsampled to 64x64 (~5 M MACs)",
        DigitNetConfig(res=64),
        TrainConfig(epochs=10),
    ),
    "digitnet-small": ZooEntry(
        "DigitNet on 32x32 inputs with half the channels (fast to train; used by the tests)",
        DigitNetConfig(res=32, stem=8, c1=16, neck=4, c2=32, c3=64, hidden=64),
        TrainConfig(epochs=10),
    ),
}


def _exit_name_order(net: DigitNet) -> list[str]:
    return sorted(net.exit_at, key=lambda k: net.exit_at[k])


def from_digitnet(name: str, net: DigitNet, metrics: dict | None = None) -> BranchyModel:
    res = net.cfg.res
    example = torch.zeros(1, 1, res, res)
    backbone = to_chain(net.backbone, example, prefix="backbone.")
    exits = []
    for ename in _exit_name_order(net):
        at = net.exit_at[ename]
        feat = backbone.run(example, 0, at)
        head = to_chain(net.exits[ename], feat, prefix=f"{ename}.")
        m = metrics or {}
        exits.append(
            Exit(ename, at, head, m.get("test_accuracy", {}).get(ename), m.get("val_accuracy", {}).get(ename))
        )
    return BranchyModel(name, backbone, exits, dict(metrics or {}))


def from_module(
    name: str, model: nn.Module, example: torch.Tensor, accuracy: float | None = None
) -> BranchyModel:
    """Any fx-traceable model (or nn.Sequential) as a one-exit BranchyModel."""
    chain = to_chain(model, example)
    empty = Chain([], tuple(example.shape[1:]))
    return BranchyModel(name, chain, [Exit("final", len(chain), empty, accuracy)])


def load(
    name: str = "digitnet", progress: Callable[[int, int, float], None] | None = None, retrain: bool = False
) -> BranchyModel:
    """A zoo model, trained on first use and cached (see ``train.load_or_train``)."""
    entry = ZOO.get(name)
    if entry is None:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO)}")
    net, metrics, path = load_or_train(name, entry.model, entry.train, progress=progress, force=retrain)
    model = from_digitnet(name, net, metrics)
    model.meta["weights"] = str(path)
    return model
