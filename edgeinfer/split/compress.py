"""Wire format of an intermediate tensor: optional quantisation (f16 / int8) + lossless codec (lz4 / zstd).

Layout (little endian)::

    b"EIT1" | dtype u8 | codec u8 | ndim u8 | shape u32 * ndim | lo f32 | scale f32 | payload

int8 is per-tensor affine (``q = round((x - lo) / scale)``, stored unsigned); f32/f16 keep lo = scale = 0.
``encode`` and ``decode`` are pure functions of bytes; ``len(encode(...))`` is what goes on the wire.
"""

from __future__ import annotations

import struct

import numpy as np
import torch

MAGIC = b"EIT1"
DTYPES = ("f32", "f16", "int8")
CODECS = ("none", "lz4", "zstd")
_HEAD = struct.Struct("<4sBBB")
_QUANT = struct.Struct("<ff")


class WireError(ValueError):
    pass


def check(dtype: str, codec: str) -> None:
    if dtype not in DTYPES:
        raise WireError(f"unknown tensor dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if codec not in CODECS:
        raise WireError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


def _compress(codec: str, raw: bytes) -> bytes:
    if codec == "lz4":
        import lz4.frame

        return lz4.frame.compress(raw)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(raw)
    return raw


def _decompress(codec: str, data: bytes) -> bytes:
    try:
        if codec == "lz4":
            import lz4.frame

            return lz4.frame.decompress(data)
        if codec == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompress(data)
    except Exception as exc:  # both libraries raise their own error types
        raise WireError(f"corrupt {codec} payload: {exc}") from exc
    return data


def encode(t: torch.Tensor, dtype: str = "f32", codec: str = "none") -> bytes:
    check(dtype, codec)
    a = t.detach().to(torch.float32).contiguous().numpy()
    lo = scale = 0.0
    if dtype == "f16":
        raw = a.astype(np.float16).tobytes()
    elif dtype == "int8":
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        scale = (hi - lo) / 255.0 or 1.0
        raw = np.clip(np.rint((a - lo) / scale), 0, 255).astype(np.uint8).tobytes()
    else:
        raw = a.tobytes()
    head = _HEAD.pack(MAGIC, DTYPES.index(dtype), CODECS.index(codec), a.ndim)
    shape = struct.pack(f"<{a.ndim}I", *a.shape)
    return head + shape + _QUANT.pack(lo, scale) + _compress(codec, raw)


def decode(data: bytes) -> torch.Tensor:
    if len(data) < _HEAD.size or data[:4] != MAGIC:
        raise WireError("not an edgeinfer tensor (bad magic)")
    _, d, c, ndim = _HEAD.unpack_from(data)
    if d >= len(DTYPES) or c >= len(CODECS):
        raise WireError(f"unknown dtype/codec code {d}/{c}")
    off = _HEAD.size
    if len(data) < off + 4 * ndim + _QUANT.size:
        raise WireError("truncated tensor header")
    shape = struct.unpack_from(f"<{ndim}I", data, off)
    off += 4 * ndim
    lo, scale = _QUANT.unpack_from(data, off)
    raw = _decompress(CODECS[c], data[off + _QUANT.size :])
    n = int(np.prod(shape)) if ndim else 1
    width = {"f32": 4, "f16": 2, "int8": 1}[DTYPES[d]]
    if len(raw) != n * width:
        raise WireError(f"payload has {len(raw)} bytes, shape {tuple(shape)} needs {n * width}")
    if DTYPES[d] == "f16":
        a = np.frombuffer(raw, dtype=np.float16).astype(np.float32)
    elif DTYPES[d] == "int8":
        a = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) * scale + lo
    else:
        a = np.frombuffer(raw, dtype=np.float32).copy()
    return torch.from_numpy(a.reshape(shape))


def wire_key(dtype: str, codec: str) -> str:
    return f"{dtype}+{codec}"


# --- the state at a cut: one tensor, or several at a DAG cut ----------------------------------------------
# A cut inside a residual block carries every live tensor (the block's input and the branch so far; see
# models/dnn/chain.py, ``dag=True``). Such a state goes on the wire as
#
#     b"EIS1" | count u8 | (length u32 | one encoded tensor as above) * count
#
# every tensor quantised and compressed on its own (each has its own range). One tensor is sent exactly as
# ``encode`` sends it, so single-tensor peers are unaffected.
MAGIC_STATE = b"EIS1"
_COUNT = struct.Struct("<4sB")
_LEN = struct.Struct("<I")
MAX_TENSORS = 16


def encode_state(
    state: torch.Tensor | tuple[torch.Tensor, ...], dtype: str = "f32", codec: str = "none"
) -> bytes:
    """The state crossing a cut on the wire: ``encode(t)`` for one tensor, the framed list for several."""
    if isinstance(state, torch.Tensor):
        return encode(state, dtype, codec)
    tensors = tuple(state)
    if not 1 <= len(tensors) <= MAX_TENSORS or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise WireError(f"a cut's state is 1 to {MAX_TENSORS} tensors, got {len(tensors)} items")
    parts = [encode(t, dtype, codec) for t in tensors]
    return _COUNT.pack(MAGIC_STATE, len(parts)) + b"".join(_LEN.pack(len(p)) + p for p in parts)


def decode_state(data: bytes) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Inverse of ``encode_state``: a tensor, or a tuple of them (a DAG cut)."""
    if data[:4] != MAGIC_STATE:
        return decode(data)
    if len(data) < _COUNT.size:
        raise WireError("truncated state header")
    _, count = _COUNT.unpack_from(data)
    if not 1 <= count <= MAX_TENSORS:
        raise WireError(f"a cut's state is 1 to {MAX_TENSORS} tensors, got {count}")
    off, out = _COUNT.size, []
    for i in range(count):
        if len(data) < off + _LEN.size:
            raise WireError(f"truncated state: tensor {i + 1} of {count} is missing")
        (n,) = _LEN.unpack_from(data, off)
        off += _LEN.size
        if len(data) < off + n:
            raise WireError(f"truncated state: tensor {i + 1} of {count} needs {n} bytes")
        out.append(decode(data[off : off + n]))
        off += n
    if off != len(data):
        raise WireError(f"{len(data) - off} bytes after the last tensor of the state")
    return tuple(out)
