"""The DNN zoo: training is a cached artifact with measured accuracy; every exit and cut matches the model."""

from __future__ import annotations

import os
import time

import pytest
import torch

from edgeinfer.models.dnn import zoo
from edgeinfer.models.dnn.data import digits
from edgeinfer.models.dnn.train import config_hash


@pytest.fixture(scope="module")
def small() -> zoo.BranchyModel:
    return zoo.load("digitnet-small")


def test_digits_split_is_deterministic_and_disjoint():
    a, b = digits(16), digits(16)
    assert [len(a[k]) for k in ("train", "val", "test")] == [1078, 359, 360]
    assert torch.equal(a["test"].x, b["test"].x)
    assert a["train"].x.shape[1:] == (1, 16, 16) and float(a["train"].x.max()) <= 1.0


@pytest.mark.slow
def test_training_is_cached_by_config_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    entry = zoo.ZOO["digitnet-small"]
    first = zoo.load("digitnet-small")
    path = tmp_path / "dnn" / f"digitnet-small-{config_hash(entry.model, entry.train)}.pt"
    assert path.is_file() and first.meta["weights"] == str(path)
    mtime = os.path.getmtime(path)
    t0 = time.perf_counter()
    again = zoo.load("digitnet-small")
    assert time.perf_counter() - t0 < 5  # loaded, not retrained
    assert os.path.getmtime(path) == mtime
    x = digits(32)["test"].x[:4]
    assert torch.equal(first.path("final").run(x), again.path("final").run(x))


def test_exit_accuracies_are_measured_on_the_test_split(small):
    test = digits(small.backbone.in_shape[-1])["test"]
    for e in small.exits:
        acc = float((small.path(e.name).run(test.x).argmax(-1) == test.y).float().mean())
        assert acc == pytest.approx(e.accuracy, abs=1e-6)
    assert small.final.accuracy > 0.8  # far above chance (0.1)


def test_every_exit_and_cut_equals_the_unsplit_model(small):
    from edgeinfer.models.dnn.digitnet import DigitNet

    net = DigitNet(zoo.ZOO["digitnet-small"].model)
    net.load_state_dict(torch.load(small.meta["weights"], weights_only=True))
    net.eval()
    x = digits(32)["val"].x[:8]
    with torch.no_grad():
        want = net.forward_all(x)
    for e in small.exits:
        path = small.path(e.name)
        assert len(path) == e.at + len(e.head)
        for s in range(len(path) + 1):
            got = path.run(path.run(x, 0, s), s)
            assert torch.allclose(got, want[e.name], atol=1e-5), f"exit {e.name}, cut {s}"


def test_from_module_wraps_any_model():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    bm = zoo.from_module("tiny", model, torch.randn(1, 2, 2))
    assert [e.name for e in bm.exits] == ["final"] and len(bm.path("final")) == 2


def test_unknown_model_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo.load("resnet-9000")
