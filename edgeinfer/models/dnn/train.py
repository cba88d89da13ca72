"""Train DigitNet on the digits (all exits jointly, BranchyNet-style) and cache the weights.

The cache key is a hash of the model config, the training config and a format version, so a changed config
trains anew and an unchanged one loads in milliseconds: ``~/.cache/edgeinfer/dnn/<name>-<hash>.pt`` plus a
``.json`` with the measured accuracy of every exit on the held-out test split.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeinfer.models.dnn.data import digits
from edgeinfer.models.dnn.digitnet import DigitNet, DigitNetConfig

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


def config_hash(model_cfg: DigitNetConfig, train_cfg: TrainConfig) -> str:
    blob = json.dumps(
        {"format": FORMAT, "model": model_cfg.to_dict(), "train": asdict(train_cfg)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@torch.no_grad()
def exit_accuracy(model: DigitNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    return {k: float((v.argmax(1) == y).float().mean()) for k, v in model.forward_all(x).items()}


def train(
    model_cfg: DigitNetConfig,
    train_cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[DigitNet, dict]:
    """Train from scratch; ``progress(epoch, epochs, loss)`` after each epoch. Returns (model, metrics)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(train_cfg.threads)
    try:
        torch.manual_seed(train_cfg.seed)
        data = digits(model_cfg.res, seed=train_cfg.seed)
        model = DigitNet(model_cfg)
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
                outs = model.forward_all(tr.x[idx])
                loss = sum(F.cross_entropy(o, tr.y[idx]) for o in outs.values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            sched.step()
            if progress:
                progress(epoch + 1, train_cfg.epochs, total / len(tr))
        seconds = time.perf_counter() - t0
        metrics = {
            "format": FORMAT,
            "model": model_cfg.to_dict(),
            "train": asdict(train_cfg),
            "train_seconds": round(seconds, 2),
            "n": {k: len(v) for k, v in data.items()},
            "val_accuracy": exit_accuracy(model, data["val"].x, data["val"].y),
            "test_accuracy": exit_accuracy(model, data["test"].x, data["test"].y),
        }
        model.eval()
        return model, metrics
    finally:
        torch.set_num_threads(threads)


def load_or_train(
    name: str,
    model_cfg: DigitNetConfig,
    train_cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
    force: bool = False,
) -> tuple[DigitNet, dict, Path]:
    """The cached model if its config hash matches, else train and cache it: (model, metrics, path)."""
    path = cache_root() / f"{name}-{config_hash(model_cfg, train_cfg)}.pt"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and not force:
        model = DigitNet(model_cfg)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        return model, json.loads(meta.read_text()), path
    model, metrics = train(model_cfg, train_cfg, progress)
    tmp = meta.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(metrics, indent=1))
    tmp.replace(meta)
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic, and last: a concurrent reader never sees half a model
    return model, metrics, path
