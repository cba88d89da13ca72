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
from edgeinfer.models.dnn.data import Split
from edgeinfer.models.dnn.digitnet import DigitNetConfig
from edgeinfer.models.dnn.mobilenet import MobileNetConfig
from edgeinfer.models.dnn.train import NetConfig, TrainConfig, load_or_train


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
    model: NetConfig
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
    "mobilenet": ZooEntry(
        "MobileNetV2-style CNN (inverted residuals) with 2 early exits on MNIST upsampled to 128x128 "
        "(~12 M MACs; the feature maps shrink to 1/10 of the input by stride 16)",
        MobileNetConfig(),
        TrainConfig(epochs=4),
    ),
}


def from_net(name: str, net: nn.Module, metrics: dict | None = None, dag: bool = False) -> BranchyModel:
    """A zoo network (``backbone``: nn.Sequential, ``exit_at``: exit -> backbone index, ``exits``: heads).

    The backbone's chain is built segment by segment between exits, so every exit sits on a cut of the chain
    even where a block of the backbone opens into several layers. ``dag``: offer cuts inside residual blocks
    too, each carrying every live tensor (see ``chain``); exits always sit where one tensor crosses."""
    res = net.cfg.res
    example = torch.zeros(1, 1, res, res)
    layers, exits, pos, feat = [], [], 0, example
    m = metrics or {}
    for ename in sorted(net.exit_at, key=lambda k: net.exit_at[k]):
        at = net.exit_at[ename]
        if at > pos:
            seg = to_chain(net.backbone[pos:at], feat, prefix="backbone.", dag=dag)
            layers += seg.layers
            feat = seg.run(feat)
            pos = at
        head = to_chain(net.exits[ename], feat, prefix=f"{ename}.")
        exits.append(
            Exit(
                ename,
                len(layers),
                head,
                m.get("test_accuracy", {}).get(ename),
                m.get("val_accuracy", {}).get(ename),
            )
        )
    return BranchyModel(name, Chain(layers, tuple(example.shape[1:])), exits, dict(m))


def from_module(
    name: str, model: nn.Module, example: torch.Tensor, accuracy: float | None = None
) -> BranchyModel:
    """Any fx-traceable model (or nn.Sequential) as a one-exit BranchyModel."""
    chain = to_chain(model, example)
    empty = Chain([], tuple(example.shape[1:]))
    return BranchyModel(name, chain, [Exit("final", len(chain), empty, accuracy)])


def load(
    name: str = "digitnet",
    progress: Callable[[int, int, float], None] | None = None,
    retrain: bool = False,
    dag: bool = False,
) -> BranchyModel:
    """A zoo model, trained on first use and cached (see ``train.load_or_train``); ``dag``: see from_net."""
    entry = ZOO.get(name)
    if entry is None:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO)}")
    net, metrics, path = load_or_train(name, entry.model, entry.train, progress=progress, force=retrain)
    model = from_net(name, net, metrics, dag=dag)
    model.meta["weights"] = str(path)
    return model


def dataset(name: str) -> dict[str, Split]:
    """The data a zoo model was trained and measured on ({'train', 'val', 'test'}), at its input size."""
    entry = ZOO.get(name)
    if entry is None:
        raise KeyError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO)}")
    return entry.model.dataset(seed=entry.train.seed)
