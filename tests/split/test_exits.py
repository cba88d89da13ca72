"""Early-exit confidence and calibration."""

from __future__ import annotations

import math

import pytest
import torch

from edgeinfer.split.exits import CRITERIA, Thresholds, calibrate, cascade, confidence


def test_confidence_orders_sure_above_unsure():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 0.9, 0.8]])
    for c in CRITERIA:
        conf = confidence(logits, c)
        assert float(conf.min()) >= 0.0 and float(conf.max()) <= 1.0
        assert conf[0] > conf[1], c
    with pytest.raises(ValueError, match="criterion"):
        confidence(logits, "vibes")


def test_calibration_keeps_accepted_samples_accurate():
    torch.manual_seed(0)
    n = 400
    y = torch.randint(0, 5, (n,))
    sure = torch.rand(n) < 0.5  # half the samples: confident and right; the rest: unsure and often wrong
    early = torch.randn(n, 5) * 0.1
    early[sure, y[sure]] += 6.0
    wrong = (~sure).nonzero().squeeze(1)
    early[wrong, (y[wrong] + 1) % 5] += 0.5
    final = torch.zeros(n, 5)
    final[torch.arange(n), y] = 3.0
    logits = {"early": early, "final": final}
    for crit in CRITERIA:
        th = calibrate(logits, y, crit, target=0.99, final="final")
        accepted = confidence(early, crit) >= th.values["early"]
        assert 0.3 < float(accepted.float().mean()) <= 0.6
        assert float((early[accepted].argmax(-1) == y[accepted]).float().mean()) >= 0.99
        preds, taken = cascade(logits, ["early", "final"], th)
        assert float((preds == y).float().mean()) >= 0.99
        assert 0 < taken.count("early") < n


def test_unreachable_target_never_exits_early_and_roundtrips(tmp_path):
    y = torch.tensor([0, 1])
    logits = {"early": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "final": torch.eye(2)}
    th = calibrate(logits, y, "top1", target=1.0, final="final")
    assert th.values["early"] == math.inf
    th.save(tmp_path / "t.json")
    back = Thresholds.load(tmp_path / "t.json")
    assert back.values == th.values and not back.accept("early", torch.tensor([[0.0, 100.0]]))
