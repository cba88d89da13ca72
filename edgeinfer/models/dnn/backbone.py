"""What every zoo network with early exits shares: a sequential backbone, exit heads, where each exit taps."""

from __future__ import annotations

import torch
from torch import nn


class ExitNet(nn.Module):
    """Subclasses set ``backbone`` (nn.Sequential), ``exits`` (nn.ModuleDict with a "final" head) and
    ``exit_at`` (exit name -> number of backbone layers it reads after)."""

    backbone: nn.Sequential
    exits: nn.ModuleDict
    exit_at: dict[str, int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.exits["final"](self.backbone(x))

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every exit's output in one pass over the backbone."""
        out, pos = {}, 0
        for name, at in sorted(self.exit_at.items(), key=lambda kv: kv[1]):
            x = self.backbone[pos:at](x)
            pos = at
            out[name] = self.exits[name](x)
        return out
