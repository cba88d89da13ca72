"""Fit analysis on known model sizes and the shipped device profiles."""

from __future__ import annotations

import pytest

from edgeinfer.bench.fit import fit_one, fit_table, load_devices, load_models, parse_params, shape_for


@pytest.fixture(scope="module")
def devices():
    return {d.id: d for d in load_devices()[0]}


def test_profiles_carry_sources_and_sane_figures(devices) -> None:
    assert {"rpi4-4gb", "rpi5-8gb", "jetson-orin-nano-8gb"} <= set(devices)
    for d in devices.values():
        assert d.sources, d.id
        assert 0 < d.reserved_gb < d.memory_gb
        assert d.peak_bandwidth_gbs and d.peak_bandwidth_gbs > 0
        assert d.stream_gbs is None or d.stream_gbs < d.peak_bandwidth_gbs


def test_parse_params() -> None:
    assert parse_params("7B") == 7e9
    assert parse_params("270m") == 270e6
    assert parse_params("1.5B") == 1.5e9
    with pytest.raises(ValueError, match="parameter count"):
        parse_params("seven")


def test_llama2_7b_int4_on_pi5_and_pi4(devices) -> None:
    models, bits = load_models()
    llama = shape_for("llama-2-7b", models)
    ctx = 4096
    on_pi5 = fit_one(llama, "int4", bits["int4"], devices["rpi5-8gb"], ctx, efficiency=0.5, overhead_gb=0.3)
    # 6.74e9 weights x 4.5 bits = 3.79 GB; KV: 2 x 32 layers x 32 heads x 128 x 4096 x 2 B = 2.147 GB
    assert on_pi5.weights_gb == pytest.approx(6.74e9 * 4.5 / 8 / 1e9)
    assert on_pi5.kv_cache_gb == pytest.approx(2 * 32 * 32 * 128 * 4096 * 2 / 1e9)
    assert on_pi5.needed_gb == pytest.approx(3.79125 + 2.147483648 + 0.3)
    assert on_pi5.fits
    # decode reads the weights and half the context's KV: 17.1 GB/s x 0.5 / (3.79 + 1.07) GB
    assert on_pi5.projected_decode_tps == pytest.approx(8.55e9 / (3.79125e9 + 1.073741824e9))
    on_pi4 = fit_one(llama, "int4", bits["int4"], devices["rpi4-4gb"], ctx, efficiency=0.5)
    assert not on_pi4.fits
    assert on_pi4.bandwidth_source == "STREAM"  # the Pi 4 profile has a measured figure
    # a shorter context makes it fit on 4 GB only if the weights alone fit: 3.79 + 0.3 > 3.5 usable
    assert not fit_one(llama, "int4", 4.5, devices["rpi4-4gb"], 256, 0.5).fits


def test_fp16_7b_fits_nowhere_small_but_int4_1_5b_fits_everywhere(devices) -> None:
    rows = fit_table(["7B", "1.5B"], ["f16", "int4"], list(devices.values()), 2048, 0.5)
    by = {(r.model, r.quant, r.device): r for r in rows}
    assert not any(by[("7B", "f16", d)].fits for d in devices)
    assert all(by[("1.5B", "int4", d)].fits for d in devices)
    assert by[("7B", "f16", "rpi4-4gb")].kv_shape_from == "llama-2-7b"


def test_bad_inputs_are_named() -> None:
    devs = load_devices()[0]
    with pytest.raises(ValueError, match="unknown quantization q9"):
        fit_table(["7B"], ["q9"], devs, 1024, 0.5)
    with pytest.raises(ValueError, match="unknown model"):
        fit_table(["gpt-5"], ["int4"], devs, 1024, 0.5)
    with pytest.raises(ValueError, match="context"):
        fit_table(["7B"], ["int4"], devs, 0, 0.5)
