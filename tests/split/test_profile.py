"""Per-layer profiles (measured, JSON, imported from another device) and the latency predictor."""

from __future__ import annotations

import json
import time

import pytest

from edgeinfer.models.dnn import zoo
from edgeinfer.models.dnn.data import digits
from edgeinfer.split.planner import LinkEstimate, all_paths, plan_split
from edgeinfer.split.predict import Predictor, Sample, from_profile, measure_bank, split_holdout
from edgeinfer.split.profile import (
    DeviceSpec,
    Profile,
    builtin_devices,
    emulated_call,
    load_device,
    profile_model,
    settle,
)


@pytest.fixture(scope="module")
def model() -> zoo.BranchyModel:
    return zoo.load("digitnet-small")


@pytest.fixture(scope="module")
def profiles(model):
    x = digits(32)["val"].x[:6]
    dev = profile_model(model, load_device("rpi4-like"), x, warmup=1, repeats=5)
    edge = profile_model(model, load_device("edge-host"), x, warmup=1, repeats=5)
    return dev, edge


def test_deferred_emulation_settles_once_for_the_whole_run():
    """emulated_call(sleep=False) only accounts; settle then waits out the sum (a sleep never ends early)."""
    t0 = time.perf_counter()
    total = 0.0
    for _ in range(3):
        out, s = emulated_call(lambda: sum(range(20_000)), slowdown=40.0, sleep=False)
        assert out == sum(range(20_000)) and s > 0
        total += s
    settle(t0, total)
    assert time.perf_counter() - t0 >= total


def test_builtin_devices_are_labelled():
    assert {"rpi4-like", "edge-host"} <= set(builtin_devices())
    pi = load_device("rpi4-like")
    assert pi.emulated and pi.slowdown > 1 and "NOT a measurement" in pi.note
    with pytest.raises(ValueError, match="unknown device"):
        load_device("cray-1")


def test_profile_covers_every_layer_with_bytes_and_time(model, profiles):
    dev, _ = profiles
    assert set(dev.layers) == set(model.layer_names())
    for name, lp in dev.layers.items():
        assert lp.ms > 0 and lp.ms_host > 0, name
        assert lp.wire["f32+none"] > lp.out_bytes  # raw bytes plus the header
        assert lp.wire["int8+none"] < lp.wire["f32+none"]
    path = dev.exits["final"]["path"]
    assert len(dev.cut_bytes("final")) == len(path) + 1
    assert dev.cut_bytes("final", "f32+none")[0] == dev.input_wire["f32+none"]


def test_profile_json_roundtrip_and_import(tmp_path, model, profiles):
    dev, edge = profiles
    dev.save(tmp_path / "pi.json")
    imported = Profile.load(tmp_path / "pi.json")
    imported.check_model(model)
    assert imported.device.name == "rpi4-like" and imported.layers == dev.layers
    # an imported device profile and a local edge profile are planned together
    best = plan_split(all_paths(imported, edge, "f16+lz4"), LinkEstimate(1e9, 0.0))
    most_accurate = max(model.exits, key=lambda e: e.accuracy).name
    assert best.exit == most_accurate and 0 <= best.split <= best.n
    bad = json.loads((tmp_path / "pi.json").read_text()) | {"format": "something-else"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="not an edgeinfer-dnn-profile"):
        Profile.load(tmp_path / "bad.json")
    other = Profile.from_dict(dev.to_dict() | {"model": "digitnet"})
    with pytest.raises(ValueError, match="is for model"):
        other.check_model(model)


def test_predictor_fits_a_linear_device_exactly():
    samples = [
        Sample("conv", m, b, b // 2, 0.05 + 2e-6 * m + 1e-6 * b) for m in (1e4, 1e5, 1e6) for b in (1e3, 4e4)
    ]
    pred = Predictor(samples)
    assert pred.evaluate(samples)["all"]["mean_ape"] < 1e-6
    assert pred.predict("conv", 5e5, 2e4, 1e4) == pytest.approx(0.05 + 1.0 + 0.02, rel=1e-6)


@pytest.mark.slow
def test_predictor_error_on_held_out_measured_layers(profiles):
    bank = measure_bank(DeviceSpec("host", threads=1), n=48, repeats=5)
    fit, held = split_holdout(bank)
    ev = Predictor(fit).evaluate(held)
    assert ev["all"]["n"] == len(held) == 12
    assert 0 <= ev["all"]["median_ape"] < 10  # reported, not a speed goal: it must only be a sane number
    assert Predictor(bank).evaluate(from_profile(profiles[1].layers))["all"]["n"] == len(profiles[1].layers)
