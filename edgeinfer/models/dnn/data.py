"""scikit-learn's digits (1797 8x8 images, shipped inside the package: no download), as tensors.

Deterministic stratified split 60/20/20 into train/val/test; images scaled to [0, 1] and upsampled to
``res x res`` with bilinear interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Split:
    x: torch.Tensor  # N x 1 x res x res, float32
    y: torch.Tensor  # N, int64

    def __len__(self) -> int:
        return len(self.y)


def digits(res: int = 64, seed: int = 0) -> dict[str, Split]:
    """{'train', 'val', 'test'} splits of the digits data set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if res != 8:
        x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)
    y = torch.tensor(ds.target, dtype=torch.int64)
    idx = list(range(len(y)))
    train, rest = train_test_split(idx, test_size=0.4, random_state=seed, stratify=ds.target)
    val, test = train_test_split(rest, test_size=0.5, random_state=seed, stratify=ds.target[rest])
    return {k: Split(x[v].contiguous(), y[v]) for k, v in (("train", train), ("val", val), ("test", test))}
