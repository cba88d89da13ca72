"""Chains of split candidates: nn.Sequential children, torch.fx cut points (single tensor crossing)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeinfer.models.dnn.chain import ChainError, to_chain


class Residual(nn.Module):
    """conv -> [conv + skip] -> pool -> linear: no cut may fall inside the residual block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.b(torch.relu(self.a(x)))
        x = torch.relu(x + y)
        return self.fc(torch.flatten(self.pool(x), 1))


def _check_every_cut(model: nn.Module, chain, x: torch.Tensor) -> None:
    full = model(x)
    for s in range(len(chain) + 1):
        head = chain.run(x, 0, s)
        assert torch.allclose(chain.run(head, s), full, atol=1e-6), f"cut {s} changes the output"


def test_sequential_chain_every_cut_equals_full_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 5)
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    chain = to_chain(model, x)
    assert [layer.kind for layer in chain.layers] == ["conv", "act", "pool", "reshape", "linear"]
    assert chain.layers[0].macs == 3 * 6 * 6 * 9
    assert chain.cut_bytes(0) == 4 * 64 and chain.cut_bytes(3) == 4 * 27
    _check_every_cut(model, chain, x)


def test_fx_dag_cuts_only_where_one_tensor_crosses():
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(2, 1, 6, 6)
    chain = to_chain(model, x)
    # stem, relu: 2 layers; a, relu, b, add (the skip tensor is live): 1 layer; relu, pool, flatten, fc: 4
    assert len(chain) == 7
    residual = chain.layers[2]
    assert residual.kind == "conv" and residual.out_shape == (4, 6, 6)
    assert residual.macs == 2 * (4 * 36 * 4 * 9) + 2 * 4 * 36  # both convs, the relu and the add
    _check_every_cut(model, chain, x)


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return -x


class TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


def test_untraceable_and_multi_input_models_are_refused():
    with pytest.raises(ChainError, match="cannot trace"):
        to_chain(Branchy(), torch.randn(1, 3))
    with pytest.raises(ChainError, match="exactly one tensor input"):
        to_chain(TwoInputs(), torch.randn(1, 3))
