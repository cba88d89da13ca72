"""Read a GGUF file lazily: metadata, and only the tensors a caller asks for, dequantized to float32.

The file is memory-mapped by ``gguf.GGUFReader``; a tensor's bytes are touched only when it is loaded, so a
shard that needs layers [8, 16) never pages in the others. Dequantization is ``gguf.quants.dequantize``.
Embedding tables can be looked up row by row (``rows``) without dequantizing the whole table.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


class GGUFError(ValueError):
    pass


LONG_ARRAY = 4096  # string arrays longer than this (the tokenizer vocabulary) are skipped, not parsed


def _reader_class():
    """``gguf.GGUFReader`` that steps over long arrays instead of building one numpy view per element.

    The stock reader spends seconds on the ~150k-token vocabularies; the engine tokenizes with llama.cpp and
    never needs them. Skipped fields keep their element count (``GGUFFile.array_len``) and read as empty.
    """
    import struct

    import gguf

    class Reader(gguf.GGUFReader):
        def _get_field_parts(self, orig_offs, raw_type):
            if raw_type == gguf.GGUFValueType.ARRAY and self.byte_order == "I":
                itype = self._get(orig_offs, np.uint32)
                alen = self._get(orig_offs + 4, np.uint64)
                n, types = int(alen[0]), [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType(itype[0])]
                if n > LONG_ARRAY and itype[0] == gguf.GGUFValueType.STRING:
                    mm, offs = self.data._mmap, orig_offs + 12
                    for _ in range(n):
                        offs += 8 + struct.unpack_from("<Q", mm, offs)[0]
                    return offs - orig_offs, [itype, alen], [], types
                nptype = self.gguf_scalar_to_np.get(gguf.GGUFValueType(itype[0]))
                if n > LONG_ARRAY and nptype is not None:
                    values = self._get(orig_offs + 12, nptype, n)
                    return 12 + int(values.nbytes), [itype, alen, values], [], types
            return super()._get_field_parts(orig_offs, raw_type)

    return Reader


class GGUFFile:
    def __init__(self, path: str | Path):
        import gguf

        self._gguf = gguf
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {self.path}")
        try:
            self.reader = _reader_class()(str(self.path), "r")
        except Exception as exc:  # the reader raises ValueError/struct.error on non-GGUF input
            raise GGUFError(f"{self.path} is not a readable GGUF file: {exc}") from exc
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch: str = self.get("general.architecture")

    # ---- metadata -----------------------------------------------------------------------------------------
    def get(self, key: str, default: Any = ...) -> Any:
        """A metadata value (scalar, string or list); ``default`` if given and the key is absent."""
        field = self.reader.fields.get(key)
        if field is None:
            if default is ...:
                raise GGUFError(f"{self.path.name}: metadata key {key!r} is missing")
            return default
        return field.contents()

    def arch_get(self, key: str, default: Any = ...) -> Any:
        """``{arch}.{key}``, e.g. ``arch_get("block_count")``."""
        return self.get(f"{self.arch}.{key}", default)

    def array_len(self, key: str) -> int:
        field = self.reader.fields.get(key)
        if field is None:
            return 0
        return len(field.data) if field.data else int(field.parts[4][0])  # parts: klen, key, type, itype, n

    # ---- tensors ------------------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.tensors

    def _tensor(self, name: str):
        try:
            tensor = self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path.name}: tensor {name!r} is missing") from None
        if tensor.tensor_type.name not in SUPPORTED_TYPES:
            raise GGUFError(
                f"{self.path.name}: tensor {name!r} has type {tensor.tensor_type.name}; supported: "
                f"{', '.join(SUPPORTED_TYPES)}"
            )
        return tensor

    def shape(self, name: str) -> tuple[int, ...]:
        """Row-major (PyTorch) shape: GGUF lists dimensions fastest-first, so this is the reverse."""
        return tuple(int(d) for d in reversed(self._tensor(name).shape))

    def type_name(self, name: str) -> str:
        """Storage type, e.g. ``"Q4_K"``."""
        return self._tensor(name).tensor_type.name

    def nbytes(self, name: str) -> int:
        return int(self._tensor(name).n_bytes)

    def load(self, name: str) -> np.ndarray:
        """Dequantize one tensor to a new float32 array of its row-major shape."""
        tensor = self._tensor(name)
        data = self._dequantize(tensor.data, tensor.tensor_type)
        return data.reshape(self.shape(name))

    def blocks(self, name: str) -> np.ndarray:
        """The stored bytes of a 2-D tensor, one matrix row per array row ([rows, bytes per row], uint8,
        a copy): the form the native kernels compute on (``edgeinfer.kernels``)."""
        tensor = self._tensor(name)
        rows = self.shape(name)[0]
        return np.array(tensor.data, copy=True).view(np.uint8).reshape(rows, -1)

    def rows(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Dequantize selected rows of a 2-D tensor (an embedding lookup touching only those rows)."""
        tensor = self._tensor(name)
        n_rows = self.shape(name)[0]
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
            raise IndexError(f"token id out of range [0, {n_rows}) for {name}")
        data = tensor.data.reshape(n_rows, -1)[ids]
        return self._dequantize(data, tensor.tensor_type).reshape(len(ids), -1)

    def _dequantize(self, data: np.ndarray, qtype) -> np.ndarray:
        types = self._gguf.GGMLQuantizationType
        if qtype == types.F32:
            return np.array(data, dtype=np.float32)  # a copy: callers own the result, the map stays read-only
        if qtype == types.F16:
            return np.asarray(data).view(np.float16).astype(np.float32)
        if qtype == types.BF16:
            raw = np.ascontiguousarray(data).view(np.uint16).astype(np.uint32) << 16
            return raw.view(np.float32)
        return self._gguf.quants.dequantize(np.ascontiguousarray(data), qtype).astype(np.float32, copy=False)

    def close(self) -> None:
        mm = getattr(self.reader, "data", None)
        mmap_obj = getattr(mm, "_mmap", None)
        if mmap_obj is not None:
            # arrays may still reference the map; it is then released when they are collected
            with contextlib.suppress(BufferError):
                mmap_obj.close()
