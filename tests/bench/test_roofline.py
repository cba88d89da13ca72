"""Roofline arithmetic on known inputs, GGUF byte accounting on the real bundled files, and the probes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgeinfer.bench.gguf_stats import ModelStats, read_stats
from edgeinfer.bench.roofline import analyse, measure_bandwidth, measure_matmul

# a made-up 1 GB model: 2 layers, 4 KV heads of 64 (K and V): 2 * 4 * 128 * 2 B = 2048 B per position
TOY = ModelStats(
    name="toy",
    architecture="llama",
    n_layer=2,
    n_embd=256,
    n_head=4,
    n_head_kv=4,
    head_dim_k=64,
    head_dim_v=64,
    n_vocab=1000,
    n_params=2_000_000_000,
    matmul_params=1_000_000_000,
    file_tensor_bytes=1_000_000_000,
    decode_weight_bytes=1_000_000_000,
    tied_embeddings=False,
)


def test_toy_byte_and_flop_accounting() -> None:
    assert TOY.kv_bytes_per_position() == 2048
    assert TOY.decode_bytes(1000) == 1_000_000_000 + 2_048_000
    # 2 FLOPs per weight + attention: 2 * layers * heads * (dk + dv) * context
    assert TOY.flops_per_token(100) == 2e9 + 2 * 2 * 4 * 128 * 100


def test_decode_is_memory_bound_with_a_cpu_like_balance() -> None:
    r = analyse(
        TOY, bandwidth_gbs=10.0, matmul_gflops=200.0, decode_tps=5.0, prefill_tps=50.0, decode_context=0
    )
    d = r.decode
    assert d.memory_bound_tps == pytest.approx(10.0)  # 10 GB/s / 1 GB per token
    assert d.compute_bound_tps == pytest.approx(100.0)  # 200 GFLOP/s / 2 GFLOP per token
    assert d.bound_by == "memory" and d.bound_tps == pytest.approx(10.0)
    assert d.achieved_over_bound == pytest.approx(0.5)
    assert d.achieved_bandwidth_gbs == pytest.approx(5.0)
    assert d.intensity_flop_per_byte == pytest.approx(2.0)
    assert r.machine_balance_flop_per_byte == pytest.approx(20.0)
    p = r.prefill
    assert p.bound_by == "compute"
    assert p.bound_tps == pytest.approx(200e9 / TOY.flops_per_token(256))  # no output projection in TOY
    assert p.achieved_over_bound == pytest.approx(50 / p.bound_tps)


def test_prefill_runs_the_output_projection_for_the_last_token_only() -> None:
    toy = replace(TOY, output_params=100_000_000)  # 0.1 G of the 1 G matmul weights are the output layer
    # 512 tokens: 0.9 G weights x 2 FLOPs for each token, the output layer's 0.2 GFLOP once in 512 tokens
    per_token = 2 * 0.9e9 + 2 * 0.1e9 / 512 + 2 * 2 * 4 * 128 * 256
    assert toy.prefill_flops_per_token(512) == pytest.approx(per_token)
    assert toy.prefill_flops_per_token(1) == pytest.approx(toy.flops_per_token(0))  # one token: all of it
    r = analyse(toy, 10.0, 200.0, prefill_tps=50.0, prefill_tokens=512)
    assert r.prefill.bound_tps == pytest.approx(200e9 / per_token)
    with pytest.raises(ValueError):
        toy.prefill_flops_per_token(0)


def test_decode_turns_compute_bound_when_bandwidth_is_huge() -> None:
    r = analyse(TOY, bandwidth_gbs=10_000.0, matmul_gflops=200.0, decode_context=0)
    assert r.decode.bound_by == "compute"
    assert r.decode.bound_tps == pytest.approx(100.0)
    assert r.decode.achieved_tps is None and "achieved_tps" not in r.to_dict()["decode"]


def test_kv_cache_reads_lower_the_decode_bound_with_context() -> None:
    big_kv = replace(TOY, n_head_kv=64)
    short = analyse(big_kv, 10.0, 200.0, decode_context=16).decode.bound_tps
    long = analyse(big_kv, 10.0, 200.0, decode_context=8192).decode.bound_tps
    assert long < short


def test_analyse_rejects_non_positive_device_figures() -> None:
    with pytest.raises(ValueError):
        analyse(TOY, 0.0, 100.0)


def test_gemma_ties_embeddings_so_decode_reads_every_byte(gemma_path: Path) -> None:
    s = read_stats(gemma_path)
    assert s.architecture == "gemma3" and s.n_layer == 18 and s.n_vocab == 262144
    assert s.tied_embeddings
    assert s.decode_weight_bytes == s.file_tensor_bytes
    assert 260e6 < s.n_params < 280e6  # "270M"
    assert s.kv_bytes_per_position() == 18 * 1 * (256 + 256) * 2
    assert s.output_params == 262144 * 640  # the tied embedding is the output projection


def test_qwen_reads_one_embedding_row_per_token(qwen_path: Path) -> None:
    s = read_stats(qwen_path)
    assert s.architecture == "qwen2" and not s.tied_embeddings
    assert s.n_head == 14 and s.n_head_kv == 2 and s.head_dim_k == 64
    assert s.decode_weight_bytes < s.file_tensor_bytes
    assert s.output_params == 151936 * 896
    # the skipped part is the embedding table minus one row: ~93.6 MB of Q5_0
    assert s.file_tensor_bytes - s.decode_weight_bytes == pytest.approx(93.6e6, rel=0.01)


def test_read_stats_rejects_a_non_gguf_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_stats(bad)


def test_probes_return_plausible_figures() -> None:
    copy, triad = measure_bandwidth(threads=1, array_mib=16, repeats=2)
    assert 0.1 < copy < 10_000 and 0.1 < triad < 10_000
    assert measure_matmul(threads=1, n=256, repeats=2) > 0.1
    with pytest.raises(ValueError):
        measure_bandwidth(threads=1, array_mib=1)
