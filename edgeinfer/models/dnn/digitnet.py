"""DigitNet: a small CNN with early-exit branches (BranchyNet-style) for scikit-learn's digits.

The backbone is one ``nn.Sequential`` so that every layer boundary is a split candidate; each exit head hangs
off a backbone position and is itself a small ``nn.Sequential``. The inputs are the 8x8 digits upsampled to
``R x R`` (a stand-in for a camera frame). A cheap patchify stem shrinks the frame early and a 1x1
bottleneck makes a small tensor to cut at (bottleneck injection, as in the split-computing literature),
while most of the compute comes after it, at low resolution:

    input 1 x R x R
    conv 4x4/4 (1->stem) relu                      -> stem x R/4
    conv 3x3 (stem->c1) relu pool                  -> c1 x R/8
    conv 1x1 (c1->neck) relu          [bottleneck] -> neck x R/8       exit1: flatten, linear
    conv 3x3 (neck->c2) relu conv 3x3 (c2->c2) relu pool -> c2 x R/16  exit2: flatten, linear
    conv 3x3 (c2->c3) relu flatten linear relu                          final: linear
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from edgeinfer.models.dnn.backbone import ExitNet
from edgeinfer.models.dnn.data import Split, digits


@dataclass(frozen=True)
class DigitNetConfig:
    res: int = 64  # input side; 8x8 digits are upsampled to this
    stem: int = 16
    c1: int = 32
    neck: int = 8
    c2: int = 64
    c3: int = 128
    hidden: int = 128
    n_classes: int = 10

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self) -> DigitNet:
        return DigitNet(self)

    def dataset(self, seed: int = 0) -> dict[str, Split]:
        return digits(self.res, seed=seed)


class DigitNet(ExitNet):
    """``forward`` returns the final exit's logits; ``forward_all`` every exit's (for training)."""

    def __init__(self, cfg: DigitNetConfig = DigitNetConfig()):
        super().__init__()
        if cfg.res % 16:
            raise ValueError(f"res must be a multiple of 16, got {cfg.res}")
        self.cfg = cfg
        s8, s16 = cfg.res // 8, cfg.res // 16
        self.backbone = nn.Sequential(
            nn.Conv2d(1, cfg.stem, 4, stride=4),
            nn.ReLU(),
            nn.Conv2d(cfg.stem, cfg.c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(cfg.c1, cfg.neck, 1),
            nn.ReLU(),  # 7: exit1
            nn.Conv2d(cfg.neck, cfg.c2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cfg.c2, cfg.c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 12: exit2
            nn.Conv2d(cfg.c2, cfg.c3, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(cfg.c3 * s16 * s16, cfg.hidden),
            nn.ReLU(),
        )
        self.exit_at = {"exit1": 7, "exit2": 12, "final": len(self.backbone)}
        self.exits = nn.ModuleDict(
            {
                "exit1": nn.Sequential(nn.Flatten(), nn.Linear(cfg.neck * s8 * s8, cfg.n_classes)),
                "exit2": nn.Sequential(nn.Flatten(), nn.Linear(cfg.c2 * s16 * s16, cfg.n_classes)),
                "final": nn.Sequential(nn.Linear(cfg.hidden, cfg.n_classes)),
            }
        )
