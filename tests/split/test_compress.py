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


def test_a_state_of_several_tensors_roundtrips_each_quantised_on_its_own():
    from edgeinfer.split.compress import decode_state, encode_state

    torch.manual_seed(1)
    block_input = torch.randn(1, 16, 8, 8)
    branch = 100 * torch.relu(torch.randn(1, 48, 8, 8))  # a much wider range than the block's input
    for dtype in DTYPES:
        back = decode_state(encode_state((block_input, branch), dtype, "zstd"))
        assert isinstance(back, tuple) and [t.shape for t in back] == [block_input.shape, branch.shape]
        for t, ref in zip(back, (block_input, branch), strict=True):
            tol = {
                "f32": 0.0,
                "f16": 2e-3 * float(ref.abs().max()),
                "int8": float(ref.max() - ref.min()) / 255,
            }
            assert float((t - ref).abs().max()) <= tol[dtype] + 1e-6
    one = torch.randn(1, 4)
    assert encode_state(one, "f16", "lz4") == encode(one, "f16", "lz4")  # one tensor: the plain format
    assert torch.equal(decode_state(encode(one)), one)


def test_a_bad_state_is_a_clear_wire_error():
    from edgeinfer.split.compress import decode_state, encode_state

    body = encode_state((torch.zeros(1, 2), torch.ones(1, 3)))
    for bad, match in ((body[:5], "truncated state"), (body[:-1], "needs"), (body + b"x", "after the last"),
                       (b"EIS1\x00", "1 to 16"), (b"EIS1\x02" + body[5:9], "tensor 1 of 2")):  # fmt: skip
        with pytest.raises(WireError, match=match):
            decode_state(bad)
    with pytest.raises(WireError, match="1 to 16"):
        encode_state(())
