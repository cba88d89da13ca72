"""Wire format: exact for f32, bounded error for f16/int8, fewer bytes, clear errors on garbage."""

from __future__ import annotations

import pytest
import torch

from edgeinfer.split.compress import CODECS, DTYPES, WireError, decode, encode


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_roundtrip(dtype, codec):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(1, 8, 6, 6))  # sparse like a real activation
    y = decode(encode(x, dtype, codec))
    assert y.shape == x.shape and y.dtype == torch.float32
    tol = {"f32": 0.0, "f16": 2e-3, "int8": float(x.max() - x.min()) / 255 / 2 + 1e-6}[dtype]
    assert float((y - x).abs().max()) <= tol


def test_compression_shrinks_sparse_tensors():
    x = torch.relu(torch.randn(1, 16, 16, 16))
    raw = len(encode(x))
    assert len(encode(x, "f16")) < raw * 0.51
    assert len(encode(x, "int8", "zstd")) < len(encode(x, "int8")) < raw * 0.26


def test_bad_input_is_refused():
    with pytest.raises(WireError, match="dtype"):
        encode(torch.zeros(2), "bf16")
    with pytest.raises(WireError, match="codec"):
        encode(torch.zeros(2), "f32", "gzip")
    with pytest.raises(WireError, match="magic"):
        decode(b"hello world")
    good = encode(torch.ones(4, 4), "f16", "lz4")
    with pytest.raises(WireError):
        decode(good[:-3])
