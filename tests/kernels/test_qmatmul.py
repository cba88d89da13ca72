"""The native GGUF kernels against an independent reference: gguf's dequantizers plus llama.cpp's rounding
of the activations (8-bit blocks, or the 16-bit type) written out in numpy, on random blocks of every type
the kernels read."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from edgeinfer import kernels

# byte offsets of the fp16 scales inside one block (random bytes elsewhere are valid values)
SCALE_OFFSETS = {"Q4_0": (0,), "Q5_0": (0,), "Q8_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


@pytest.fixture(scope="module", autouse=True)
def built():
    kernels.load()


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even (finite values)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << 16).view(np.float32)


def random_blocks(type_name: str, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    if type_name in ("F16", "BF16"):  # random bytes could be NaN: draw values instead
        values = rng.standard_normal((rows, k)).astype(np.float32)
        bits = values.astype(np.float16).view(np.uint16) if type_name == "F16" else to_bf16(values)
        return bits.view(np.uint8).reshape(rows, -1)
    block, nbytes = kernels.BLOCK[type_name]
    raw = rng.integers(0, 256, size=(rows, k // block, nbytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[type_name]:
        scales = rng.uniform(1e-3, 2e-2, size=(rows, k // block)).astype(np.float16)
        raw[:, :, off : off + 2] = scales.view(np.uint8).reshape(rows, k // block, 2)
    return raw.reshape(rows, -1)


def dense(w: np.ndarray, type_name: str, rows: int, k: int) -> np.ndarray:
    if type_name == "F16":
        return w.view(np.float16).astype(np.float64).reshape(rows, k)
    if type_name == "BF16":
        return from_bf16(w.view(np.uint16)).astype(np.float64).reshape(rows, k)
    return quants.dequantize(w, GGMLQuantizationType[type_name]).reshape(rows, k).astype(np.float64)


def rounded_activations(x: np.ndarray, type_name: str) -> np.ndarray:
    """x as llama.cpp rounds it before the product (ggml quantize_row_q8_0 / q8_K, or to the 16-bit type)."""
    x = x.astype(np.float32)
    if type_name == "F16":
        return x.astype(np.float16).astype(np.float64)
    if type_name == "BF16":
        return from_bf16(to_bf16(x)).astype(np.float64)
    if not type_name.endswith("_K"):  # blocks of 32, fp16 scale amax/127, values rint(x * 127/amax)
        b = x.reshape(len(x), -1, 32)
        amax = np.abs(b).max(-1, keepdims=True)
        d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
        return (np.rint(b * inv) * d).reshape(x.shape)
    b = x.reshape(len(x), -1, 256)  # blocks of 256, scale -max/127 of the largest-magnitude value
    big = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)
    iscale = (np.float32(-127) / big).astype(np.float32)
    q = np.minimum(np.rint(b * iscale), 127)
    return (q * (np.float32(1) / iscale).astype(np.float64)).reshape(x.shape)


@pytest.mark.parametrize("portable", [False, True], ids=["simd", "portable"])
@pytest.mark.parametrize("type_name", list(kernels.TYPES))
def test_qmatmul_equals_dequantized_reference(type_name, portable):
    rng = np.random.default_rng(kernels.TYPES[type_name])
    rows, k = 37, 512  # 37: not a multiple of the kernel's 16-row tiles
    w = random_blocks(type_name, rows, k, rng)
    w_dense = dense(w, type_name, rows, k)
    for n in (1, 2, 3, 4, 7):  # the one- to four-row paths and their mix (4 + 3)
        x = rng.standard_normal((n, k)).astype(np.float32)
        ref = rounded_activations(x, type_name) @ w_dense.T
        y = kernels.qmatmul(torch.from_numpy(x), torch.from_numpy(w), kernels.TYPES[type_name], portable)
        assert y.shape == (n, rows) and y.dtype == torch.float32
        np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("portable", [False, True], ids=["simd", "portable"])
@pytest.mark.parametrize("type_name", ["F16", "BF16"])
def test_16_bit_rows_of_any_length_lying_apart(type_name, portable):
    """The attention products: rows of a KV cache slice (length not a multiple of 8, stride > row)."""
    rng = np.random.default_rng(7)
    rows, k, capacity = 9, 61, 80
    store = random_blocks(type_name, rows, capacity, rng)  # [rows, 2 * capacity] bytes
    w = torch.from_numpy(store)[:, 3 * 2 : (3 + k) * 2]  # values 3 .. 3+k of each row
    assert not w.is_contiguous()
    x = rng.standard_normal((5, k)).astype(np.float32)
    ref = rounded_activations(x, type_name) @ dense(store, type_name, rows, capacity)[:, 3 : 3 + k].T
    y = kernels.qmatmul(torch.from_numpy(x), w, kernels.TYPES[type_name], portable)
    np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=2e-5 * np.abs(ref).max())


@pytest.mark.parametrize("type_name", list(kernels.TYPES))
def test_a_row_gets_the_same_bits_in_any_block_of_rows(type_name):
    """Speculative verification scores k+1 positions at once; each row must equal its one-row product exactly
    (the 4-, 3-, 2- and 1-row paths do the same arithmetic per row), or greedy tokens could differ."""
    rng = np.random.default_rng(3)
    rows, k = 21, 512
    w = torch.from_numpy(random_blocks(type_name, rows, k, rng))
    x = torch.from_numpy(rng.standard_normal((9, k)).astype(np.float32))
    alone = torch.cat([kernels.qmatmul(x[i : i + 1], w, kernels.TYPES[type_name]) for i in range(9)])
    for n in range(2, 10):
        assert torch.equal(kernels.qmatmul(x[:n], w, kernels.TYPES[type_name]), alone[:n]), n


def test_batched_products_each_use_their_own_matrix():
    """x [B, n, k] against w [B, rows, bytes] (the kv heads of a cache), rows lying apart."""
    rng = np.random.default_rng(11)
    heads, rows, k, capacity = 3, 6, 45, 64
    store = [random_blocks("F16", rows, capacity, rng) for _ in range(heads)]
    w = torch.from_numpy(np.stack(store))[:, :, : 2 * k]
    x = rng.standard_normal((heads, 7, k)).astype(np.float32)
    y = kernels.qmatmul(torch.from_numpy(x), w, kernels.TYPES["F16"])
    assert y.shape == (heads, 7, rows)
    for h in range(heads):
        ref = rounded_activations(x[h], "F16") @ dense(store[h], "F16", rows, capacity)[:, :k].T
        np.testing.assert_allclose(y[h].numpy(), ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    with pytest.raises(RuntimeError, match="2 input matrices but 3 weight matrices"):
        kernels.qmatmul(torch.from_numpy(x[:2]), w, kernels.TYPES["F16"])


def test_simd_paths_are_compiled_where_the_cpu_has_avx2():
    assert kernels.simd() == kernels._cpu_has_avx2()


def test_bad_shapes_and_types_are_clear_errors():
    w = torch.zeros(4, 22 * 2, dtype=torch.uint8)  # Q5_0 rows of 64 values
    with pytest.raises(RuntimeError, match="columns but the weight rows hold"):
        kernels.qmatmul(torch.zeros(1, 96), w, kernels.TYPES["Q5_0"])
    with pytest.raises(RuntimeError, match="unsupported GGUF type"):
        kernels.qmatmul(torch.zeros(1, 64), w, 3)  # Q4_1
    with pytest.raises(RuntimeError, match="x \\[n, k\\] with w"):
        kernels.qmatmul(torch.zeros(2, 1, 64), w, kernels.TYPES["Q5_0"])
    with pytest.raises(RuntimeError, match="float32"):
        kernels.qmatmul(torch.zeros(1, 64, dtype=torch.float64), w, kernels.TYPES["Q5_0"])
    assert kernels.qmatmul(torch.zeros(0, 64), w, kernels.TYPES["Q5_0"]).shape == (0, 4)


def test_without_a_compiler_the_engine_falls_back_to_int8(tmp_path):
    """A machine that cannot build the kernels still runs the shard engine (int8) and says why."""
    probe = (
        "from edgeinfer.engine.shard import default_weight_format\n"
        "from edgeinfer import kernels\n"
        "print(default_weight_format())\n"
        "try:\n    kernels.load()\nexcept kernels.KernelUnavailable as e:\n    print('unavailable:', e)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "CXX": "/bin/false"}  # a fresh cache, no compiler
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "int8"
    assert lines[1].startswith("unavailable: could not build the native GGUF kernels")
    assert "could not build the native GGUF kernels" in out.stderr  # logged once for the user
