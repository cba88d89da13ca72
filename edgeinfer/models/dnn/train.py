"""Train a zoo network on its data set (all exits jointly, BranchyNet-style) and cache the weights.

The cache key is a hash of the model config, the training config and a format version, so a changed config
trains anew and an unchanged one loads in milliseconds: ``~/.cache/edgeinfer/dnn/<name>-<hash>.pt`` plus a
``.json`` with the measured accuracy of every exit on the held-out test split.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from edgeinfer.models.dnn.data import Split
from edgeinfer.models.dnn.digitnet import DigitNetConfig
from edgeinfer.models.dnn.mobilenet import MobileNetConfig, fold_batchnorm

# a network config knows its data set (``dataset(seed)``) and builds its network (``build()``), a module with
# ``forward_all(x) -> {exit: logits}`` and ``exit_at`` (see digitnet.py, mobilenet.py)
NetConfig = DigitNetConfig | MobileNetConfig

FORMAT = 1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch: int = 64
    lr: float = 3e-3
    seed: int = 0
    threads: int = 1  # one thread: faster than two on a busy 2-core machine


def cache_root() -> Path:
    root = os.environ.get("EDGEINFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgeinfer"
    )
    path = Path(root) / "dnn"
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_hash(model_cfg: NetConfig, train_cfg: TrainConfig) -> str:
    blob = json.dumps(
        {"format": FORMAT, "model": model_cfg.to_dict(), "train": asdict(train_cfg)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@torch.no_grad()
def exit_accuracy(model: nn.Module, split: Split, chunk: int = 256) -> dict[str, float]:
    """Accuracy of every exit on ``split`` (evaluated in chunks: the upsampled frames can be large)."""
    model.eval()
    right: dict[str, int] = {}
    for i in range(0, len(split), chunk):
        for k, v in model.forward_all(split.batch(slice(i, i + chunk))).items():
            right[k] = right.get(k, 0) + int((v.argmax(1) == split.y[i : i + chunk]).sum())
    return {k: v / len(split) for k, v in right.items()}


def train(
    model_cfg: NetConfig,
    train_cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train from scratch; ``progress(epoch, epochs, loss)`` after each epoch. Returns (model, metrics)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(train_cfg.threads)
    try:
        torch.manual_seed(train_cfg.seed)
        data = model_cfg.dataset(seed=train_cfg.seed)
        model = model_cfg.build()
        opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=train_cfg.epochs)
        gen = torch.Generator().manual_seed(train_cfg.seed)
        tr = data["train"]
        t0 = time.perf_counter()
        for epoch in range(train_cfg.epochs):
            model.train()
            perm = torch.randperm(len(tr), generator=gen)
            total = 0.0
            for i in range(0, len(tr), train_cfg.batch):
                idx = perm[i : i + train_cfg.batch]
                outs = model.forward_all(tr.batch(idx))
                loss = sum(F.cross_entropy(o, tr.y[idx]) for o in outs.values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            if progress:
                progress(epoch + 1, train_cfg.epochs, total / len(tr))
        seconds = time.perf_counter() - t0
        model.eval()
        deployed = fold_batchnorm(copy.deepcopy(model))
        metrics = {
            "format": FORMAT,
            "model": model_cfg.to_dict(),
            "train": asdict(train_cfg),
            "train_seconds": round(seconds, 2),
            "n": {k: len(v) for k, v in data.items()},
            "val_accuracy": exit_accuracy(deployed, data["val"]),
            "test_accuracy": exit_accuracy(deployed, data["test"]),
        }
        return model, metrics
    finally:
        torch.set_num_threads(threads)


def load_or_train(
    name: str,
    model_cfg: NetConfig,
    train_cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
    force: bool = False,
) -> tuple[nn.Module, dict, Path]:
    """The cached model if its config hash matches, else train and cache it: (model, metrics, path).

    The model is returned as deployed: in eval mode, batch norm folded into the convolutions; the cache keeps
    the trained (unfolded) weights and the accuracies measured on the deployed model."""
    path = cache_root() / f"{name}-{config_hash(model_cfg, train_cfg)}.pt"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and not force:
        model = model_cfg.build()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return fold_batchnorm(model), json.loads(meta.read_text()), path
    model, metrics = train(model_cfg, train_cfg, progress)
    tmp = meta.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(meta)
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic, and last: a concurrent reader never sees half a model
    return fold_batchnorm(model), metrics, path
