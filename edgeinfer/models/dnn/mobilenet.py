"""BranchyMobileNet: a MobileNetV2-style CNN with early exits, for camera-sized frames on small devices.

The blocks are MobileNetV2's inverted residuals (1x1 expand, 3x3 depthwise, 1x1 linear projection, ReLU6,
batch norm folded into the convolutions for inference); a block whose stride is 1 and whose width does not
change adds its input back (a residual), which makes the graph a DAG: inside such a block two tensors are
live. As in the mobile networks of the split-computing papers, the frame is downsampled early by thin, cheap
stages (stride 16 after about a sixth of the multiply-accumulates), so the feature maps in the middle are
several times smaller than the input, and the wide, expensive stages run at low resolution::

    input 1 x R x R                                   (R = 128: MNIST's 28x28 digits upsampled)
    stem   conv 3x3/2 (1->8)                           -> 8 x R/2
    stage1 IR t=1 c=8  s=2                             -> 8 x R/4
    stage2 IR t=3 c=16 s=2, IR t=3 c=16 (residual)     -> 16 x R/8
    stage3 IR t=4 c=24 s=2, IR t=4 c=24 (residual)     -> 24 x R/16    exit1: flatten, linear
    stage4 IR t=6 c=48, 2 x IR t=6 c=48 (residual)     -> 48 x R/16    exit2: avgpool 2, flatten, linear
    stage5 IR t=6 c=96 s=2, 2 x IR t=6 c=96 (residual) -> 96 x R/32
    head   conv 1x1 (96->384), global average pool, flatten              final: linear

The backbone is one ``nn.Sequential`` (stem, blocks, head) so that ``exit_at`` indexes it like DigitNet's; the
chain extraction (``chain.to_chain``) opens every block into its individual layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from edgeinfer.models.dnn.backbone import ExitNet
from edgeinfer.models.dnn.data import Split, mnist


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: expand (1x1), depthwise (3x3, stride), project (1x1, linear); + input if same."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += list(conv_bn(cin, hidden, 1))
        layers += list(conv_bn(hidden, hidden, 3, stride, groups=hidden))
        layers += list(conv_bn(hidden, cout, 1, act=False))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return x + self.body(x)
        return self.body(x)


@dataclass(frozen=True)
class MobileNetConfig:
    res: int = 128  # input side; MNIST's 28x28 digits are upsampled to this
    stem: int = 8
    # (expansion t, channels c, repeats n, stride s) per stage, as in the MobileNetV2 paper's table
    stages: tuple[tuple[int, int, int, int], ...] = (
        (1, 8, 1, 2),
        (3, 16, 2, 2),
        (4, 24, 2, 2),
        (6, 48, 3, 1),
        (6, 96, 3, 2),
    )
    head: int = 384
    exit_stages: tuple[int, ...] = (2, 3)  # exit1 after stage 2 (0-based), exit2 after stage 3
    n_classes: int = 10
    # the data: seeded subsets of MNIST (train / validation / test), so that training stays CPU-cheap
    n_train: int = 6000
    n_val: int = 1000
    n_test: int = 2000

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self) -> BranchyMobileNet:
        return BranchyMobileNet(self)

    def dataset(self, seed: int = 0) -> dict[str, Split]:
        return mnist(self.res, self.n_train, self.n_val, self.n_test, seed=seed)


class BranchyMobileNet(ExitNet):
    """``forward`` returns the final exit's logits; ``forward_all`` every exit's (for training)."""

    def __init__(self, cfg: MobileNetConfig = MobileNetConfig()):
        super().__init__()
        stride = 2 * _prod(s for *_, s in cfg.stages)
        if cfg.res % stride:
            raise ValueError(f"res must be a multiple of {stride}, got {cfg.res}")
        self.cfg = cfg
        blocks: list[nn.Module] = [conv_bn(1, cfg.stem, 3, stride=2)]
        side, cin, ends = cfg.res // 2, cfg.stem, []
        shapes = []
        for t, c, n, s in cfg.stages:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
            side //= s
            ends.append(len(blocks))
            shapes.append((c, side))
        blocks += [conv_bn(cin, cfg.head, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.backbone = nn.Sequential(*blocks)
        if len(cfg.exit_stages) != 2:
            raise ValueError(f"exit_stages names the 2 early exits' stages, got {cfg.exit_stages}")
        (c1, s1), (c2, s2) = (shapes[i] for i in cfg.exit_stages)
        self.exit_at = {
            "exit1": ends[cfg.exit_stages[0]],
            "exit2": ends[cfg.exit_stages[1]],
            "final": len(self.backbone),
        }
        self.exits = nn.ModuleDict(
            {
                "exit1": nn.Sequential(nn.Flatten(), nn.Linear(c1 * s1 * s1, cfg.n_classes)),
                "exit2": nn.Sequential(
                    nn.AvgPool2d(2), nn.Flatten(), nn.Linear(c2 * (s2 // 2) ** 2, cfg.n_classes)
                ),
                "final": nn.Sequential(nn.Linear(cfg.head, cfg.n_classes)),
            }
        )


def _prod(xs) -> int:
    p = 1
    for x in xs:
        p *= x
    return p


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d into the Conv2d before it (in place, eval mode), as deployed models are."""
    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        kids = list(seq.children())
        if not any(isinstance(k, nn.BatchNorm2d) for k in kids):
            continue
        out: list[nn.Module] = []
        for k in kids:
            if isinstance(k, nn.BatchNorm2d) and out and isinstance(out[-1], nn.Conv2d):
                out[-1] = fuse_conv_bn_eval(out[-1], k)
            else:
                out.append(k)
        for name in list(seq._modules):
            del seq._modules[name]
        for i, k in enumerate(out):
            seq.add_module(str(i), k)
    return model
