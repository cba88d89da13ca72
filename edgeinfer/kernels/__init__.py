"""Native matrix products on GGUF blocks (``qmatmul.cpp``), compiled on first use.

``qmatmul(x, w, type_id)`` computes x W^T where W is a uint8 tensor of GGUF blocks, one matrix row per tensor
row, with llama.cpp's arithmetic (8-bit activation blocks and integer dot products for the quantized types;
activations rounded to the weight's type for F16 / BF16). The C++ source is built
once per machine with ``torch.utils.cpp_extension`` into ``~/.cache/edgeinfer/kernels`` (about 15 s; needs a
C++ compiler, which building llama-cpp-python needs too). On x86 CPUs with AVX2 it is built with the same
instruction set as the portable llama.cpp build (AVX2, FMA, F16C); elsewhere the portable C++ paths are used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("qmatmul.cpp")
HEADER = SOURCE.with_name("qmatmul_kernels.h")  # block formats and dot products, included by SOURCE
# GGUF storage types the kernel reads directly (name -> ggml type id)
TYPES = {"F16": 1, "Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}
# values and bytes per block (the 16-bit types: single values, so rows of any length)
BLOCK = {"F16": (1, 2), "Q4_0": (32, 18), "Q5_0": (32, 22), "Q8_0": (32, 34), "Q4_K": (256, 144),
         "Q5_K": (256, 176), "Q6_K": (256, 210), "BF16": (1, 2)}  # fmt: skip

_lock = threading.Lock()
_state: dict[str, object] = {}


class KernelUnavailable(RuntimeError):
    pass


def _cpu_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return all(f" {f}" in flags for f in ("avx2", "fma", "f16c"))


def _flags() -> list[str]:
    flags = ["-O3", "-fopenmp"]
    if _cpu_has_avx2():
        flags += ["-mavx2", "-mfma", "-mf16c"]
    elif platform.machine().lower() in ("aarch64", "arm64"):
        flags += ["-mcpu=native"]  # NEON and, on ARMv8.2+ (Pi 5, Orin), dot-product instructions
    return flags


def build_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeinfer" / "kernels"
    key = hashlib.sha256(
        SOURCE.read_bytes() + HEADER.read_bytes() + " ".join(_flags()).encode() + torch.__version__.encode()
    )
    return root / key.hexdigest()[:16]


def load() -> None:
    """Build (first time on this machine) and load the kernels; raises ``KernelUnavailable`` on failure."""
    with _lock:
        if "error" in _state:
            raise KernelUnavailable(_state["error"])
        if _state.get("loaded"):
            return
        from torch.utils import cpp_extension

        target = build_dir()
        target.mkdir(parents=True, exist_ok=True)
        # ninja comes with the package's dependencies, into the same bin directory as this interpreter
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        if not (target / "edgeinfer_qmatmul.so").exists():
            log.warning("building the native GGUF kernels once for this machine (about 15 s) in %s", target)
        try:
            cpp_extension.load(
                name="edgeinfer_qmatmul",
                sources=[str(SOURCE)],
                extra_cflags=_flags(),
                extra_ldflags=["-fopenmp"],
                build_directory=str(target),
                is_python_module=False,
                verbose=False,
            )
        except Exception as exc:  # no compiler, no ninja, a failed build: the caller falls back
            _state["error"] = f"could not build the native GGUF kernels: {exc}"
            raise KernelUnavailable(_state["error"]) from exc
        _state["loaded"] = True


def available() -> bool:
    """Whether the kernels are (or can be) loaded; the first failure is logged, later calls stay quiet."""
    if _state.get("loaded"):
        return True
    if "error" in _state:
        return False
    try:
        load()
    except KernelUnavailable as exc:
        log.warning("%s", exc)
        return False
    return True


def simd() -> bool:
    """Whether the loaded kernels use the AVX2 paths (else the portable C++ ones)."""
    load()
    return bool(torch.ops.edgeinfer.simd().numel())


def qmatmul(x: torch.Tensor, w: torch.Tensor, type_id: int, portable: bool = False) -> torch.Tensor:
    """x [n, k] float32 times W^T, W given as uint8 GGUF blocks [rows, bytes per row] -> [n, rows]; or a
    batch: x [B, n, k], w [B, rows, bytes] -> [B, n, rows]. Each row of W must be contiguous; rows may lie
    apart (a row stride larger than the row, e.g. a slice of the KV cache)."""
    if not _state.get("loaded"):
        load()
    op = torch.ops.edgeinfer.qmatmul_portable if portable else torch.ops.edgeinfer.qmatmul
    return op(x.contiguous(), w, type_id)
