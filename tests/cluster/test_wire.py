"""Hidden states cross the wire as compact raw bytes: f16/bf16 round trips, sizes, bad payloads."""

from __future__ import annotations

import pytest
import torch

from edgeinfer.cluster import wire


@pytest.mark.parametrize(("dtype", "tol", "width"), [("f16", 1e-3, 2), ("bf16", 1e-2, 2), ("f32", 0.0, 4)])
def test_round_trip(dtype, tol, width):
    x = torch.randn(7, 896)
    msg = wire.encode(x, dtype)
    assert len(msg.data) == 7 * 896 * width
    y = wire.decode(msg)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(x, y, rtol=tol, atol=tol)


def test_token_ids_are_exact():
    ids = torch.tensor([0, 151935, 42])
    assert wire.decode(wire.encode(ids, "i32")).tolist() == ids.tolist()


def test_hidden_state_is_two_bytes_per_value():
    assert len(wire.encode(torch.zeros(1, 896), "f16").SerializeToString()) < 896 * 2 + 32


def test_bad_payloads_are_refused():
    msg = wire.encode(torch.zeros(2, 3), "f16")
    msg.shape[:] = [2, 4]
    with pytest.raises(ValueError, match="payload has 12 bytes"):
        wire.decode(msg)
    with pytest.raises(ValueError, match="unknown wire dtype"):
        wire.encode(torch.zeros(1), "f8")


def test_f16_never_overflows():
    x = torch.tensor([[1.0, -98381.75, 0.5, 70000.0]])  # Gemma's residual stream exceeds the f16 range
    y = wire.decode(wire.encode(x, "f16"))
    assert torch.isfinite(y).all()
    assert torch.allclose(x, y, rtol=1e-3)
    assert wire.encode(torch.ones(2), "f16").scale == 1.0
