"""BranchyMobileNet on MNIST: real data from an installed package, exits, shrinking feature maps, DAG cuts."""

from __future__ import annotations

import gzip
import pickle

import pytest
import torch

from edgeinfer.models.dnn import zoo
from edgeinfer.models.dnn.data import DataError, _ArraysOnly, mnist
from edgeinfer.models.dnn.mobilenet import BranchyMobileNet, InvertedResidual, MobileNetConfig, fold_batchnorm

CFG = zoo.ZOO["mobilenet"].model


def _random_net(seed: int = 0) -> BranchyMobileNet:
    """An untrained network whose batch-norm statistics are far from identity (so folding them matters)."""
    torch.manual_seed(seed)
    net = MobileNetConfig().build().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.fixture(scope="module")
def trained() -> zoo.BranchyModel:
    return zoo.load("mobilenet")


def test_mnist_comes_from_the_installed_package_as_seeded_disjoint_subsets():
    a, b = mnist(64, 500, 100, 200, seed=0), mnist(64, 500, 100, 200, seed=0)
    assert [len(a[k]) for k in ("train", "val", "test")] == [500, 100, 200]
    assert torch.equal(a["train"].images, b["train"].images) and torch.equal(a["test"].y, b["test"].y)
    assert a["train"].images.shape[1:] == (1, 28, 28) and a["test"].x.shape[1:] == (1, 64, 64)
    assert float(a["train"].images.max()) == 1.0 and float(a["train"].images.min()) == 0.0
    assert sorted(a["train"].y.unique().tolist()) == list(range(10))  # all ten classes in a subset
    other = mnist(64, 500, 100, 200, seed=1)
    assert not torch.equal(other["train"].y, a["train"].y)
    with pytest.raises(DataError, match="asked for"):
        mnist(64, n_train=10**6)


def test_the_mnist_unpickler_refuses_anything_but_arrays(tmp_path):
    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(print, f)  # a global that is not a numpy array type
    with gzip.open(path, "rb") as f, pytest.raises(pickle.UnpicklingError, match="refusing"):
        _ArraysOnly(f, encoding="latin1").load()


def test_exits_shapes_and_feature_maps_that_shrink_below_the_input():
    net = fold_batchnorm(_random_net())
    model = zoo.from_net("mobilenet", net)
    assert [e.name for e in model.exits] == ["exit1", "exit2", "final"]
    x = torch.rand(2, 1, CFG.res, CFG.res)
    for e in model.exits:
        assert model.path(e.name).run(x).shape == (2, CFG.n_classes)
    bb = model.backbone
    assert bb.in_shape == (1, 128, 128) and bb.in_bytes == 4 * 128 * 128
    cut = [bb.cut_bytes(s) for s in range(len(bb) + 1)]
    # the stem makes the data bigger (as in real CNNs); by stride 16 it is a tenth of the input
    assert max(cut[1:5]) > bb.in_bytes
    e1 = model.exit("exit1").at
    assert cut[e1] * 10 < bb.in_bytes
    # ... after less than a fifth of the multiply-accumulates
    macs = [layer.macs for layer in bb.layers if layer.kind in ("conv", "linear")]
    before = sum(layer.macs for layer in bb.layers[:e1] if layer.kind in ("conv", "linear"))
    assert before < 0.2 * sum(macs)
    # the middle has cuts smaller than the input that are neither end
    assert min(cut[1:-1]) < bb.in_bytes // 8


def test_batchnorm_folding_keeps_every_exit():
    net = _random_net()
    x = torch.rand(3, 1, CFG.res, CFG.res)
    with torch.no_grad():
        want = net.forward_all(x)
        fold_batchnorm(net)
        got = net.forward_all(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-4), k


def test_residual_blocks_are_one_layer_by_default_and_cuttable_with_every_live_tensor_in_dag_mode():
    net = fold_batchnorm(_random_net())
    residual_blocks = sum(isinstance(m, InvertedResidual) and m.residual for m in net.backbone)
    assert residual_blocks == 6
    plain, dag = zoo.from_net("mobilenet", net), zoo.from_net("mobilenet", net, dag=True)
    assert all(len(layer.crossing) == 1 for layer in plain.backbone.layers)
    multi = [i for i, layer in enumerate(dag.backbone.layers) if len(layer.crossing) > 1]
    # inside each residual block: after expand, its activation, depthwise, its activation, projection
    assert len(multi) == 5 * residual_blocks
    first = dag.backbone.layers[multi[0]]
    assert first.name == "backbone.3.body_0"  # the first residual block's expansion conv
    assert first.crossing == ((16, 16, 16), (48, 16, 16))  # the block's input (the skip) and the branch
    assert first.out_bytes == 4 * (16 * 16 * 16 + 48 * 16 * 16)
    assert len(dag.backbone) == len(plain.backbone) + len(multi)
    # the exits sit where a single tensor crosses, in both chains
    for e in dag.exits:
        assert dag.backbone.cut_shapes(e.at) == plain.backbone.cut_shapes(plain.exit(e.name).at)
    x = torch.rand(2, 1, CFG.res, CFG.res)
    with torch.no_grad():
        want = net.forward_all(x)
    for e in dag.exits:
        path = dag.path(e.name)
        for s in range(len(path) + 1):
            head = path.run(x, 0, s)
            if s - 1 in multi:
                assert isinstance(head, tuple) and len(head) == 2
            assert torch.allclose(path.run(head, s), want[e.name], atol=1e-5), f"exit {e.name}, cut {s}"


@pytest.mark.slow
def test_trained_model_accuracy_on_held_out_mnist(trained):
    test = zoo.dataset("mobilenet")["test"]
    assert len(test) == CFG.n_test
    acc = {}
    for e in trained.exits:
        acc[e.name] = float((trained.path(e.name).run(test.x).argmax(-1) == test.y).float().mean())
        assert acc[e.name] == pytest.approx(e.accuracy, abs=1e-6)  # the recorded figure is this measurement
    assert acc["final"] > 0.97  # chance is 0.1
    assert acc["exit1"] > 0.9 and acc["exit2"] > 0.95
    assert trained.meta["n"] == {"train": CFG.n_train, "val": CFG.n_val, "test": CFG.n_test}
