"""Tensors <-> protobuf ``Tensor`` messages: raw little-endian bytes + shape + dtype (never JSON)."""

from __future__ import annotations

import math
from typing import Literal, get_args

from edgeinfer.cluster.proto import node_pb2

WireDtype = Literal["f16", "bf16", "f32"]  # hidden states and logits; token ids always travel as i32
WIRE_DTYPES: tuple[str, ...] = get_args(WireDtype)
F16_SAFE = 32768.0  # largest magnitude sent unscaled as f16 (max finite is 65504)
MAX_DIMS = 4


def _torch_dtypes():
    import torch

    return {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "i32": torch.int32}


def encode(x, dtype: str) -> node_pb2.Tensor:
    """Encode a torch tensor as ``dtype`` ('f16', 'bf16', 'f32' or 'i32')."""
    import torch

    types = _torch_dtypes()
    if dtype not in types:
        raise ValueError(f"unknown wire dtype {dtype!r}; use one of {', '.join(types)}")
    x = x.detach()
    scale = 1.0
    if dtype == "f16" and x.numel():
        # f16 overflows above 65504 (Gemma's residual stream reaches ~1e5): divide by a power of two, which
        # keeps every mantissa exact
        peak = float(x.abs().max())
        if peak > F16_SAFE:
            scale = 2.0 ** math.ceil(math.log2(peak / F16_SAFE))
            x = x / scale
    t = x.to(types[dtype]).contiguous().cpu()
    raw = t.view(torch.int16) if dtype == "bf16" else t  # numpy has no bfloat16
    return node_pb2.Tensor(data=raw.numpy().tobytes(), shape=list(t.shape), dtype=dtype, scale=scale)


def decode(msg: node_pb2.Tensor):
    """Decode into a torch tensor (floats widened to float32)."""
    import numpy as np
    import torch

    types = _torch_dtypes()
    if msg.dtype not in types:
        raise ValueError(f"unknown wire dtype {msg.dtype!r}")
    shape = tuple(msg.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise ValueError(f"bad tensor shape {shape}: at most {MAX_DIMS} non-negative dimensions")
    if not math.isfinite(msg.scale):
        raise ValueError(f"tensor scale must be finite, got {msg.scale}")
    n = math.prod(shape)  # exact (no int64 overflow): compared with the payload's real length below
    np_dtype = {"f16": np.float16, "bf16": np.int16, "f32": np.float32, "i32": np.int32}[msg.dtype]
    itemsize = np.dtype(np_dtype).itemsize
    if len(msg.data) != n * itemsize:
        raise ValueError(
            f"tensor payload has {len(msg.data)} bytes, shape {shape} {msg.dtype} needs {n * itemsize}"
        )
    arr = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape)
    t = torch.from_numpy(arr.copy())
    if msg.dtype == "bf16":
        t = t.view(torch.bfloat16)
    if msg.dtype in ("f16", "bf16"):
        t = t.float()
    if msg.scale not in (0.0, 1.0):
        t = t.float() * msg.scale
    return t
