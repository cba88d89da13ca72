"""The ARM (NEON) dot products of the portable kernel paths give bit-identical results to the plain C++
loops: tests/kernels/portable_check.cpp built natively and cross-compiled for ARMv8.0 and ARMv8.2+dotprod
(Raspberry Pi 4 / Pi 5 class CPUs), the ARM builds run under qemu. Needs the Debian packages
g++-aarch64-linux-gnu and qemu-user; skipped without them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

HERE = Path(__file__).parent
KERNELS = HERE.parents[1] / "edgeinfer" / "kernels"
CROSS, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"

pytestmark = pytest.mark.skipif(
    not (shutil.which(CROSS) and shutil.which(QEMU)),
    reason=f"needs {CROSS} and {QEMU} (apt-get install g++-aarch64-linux-gnu qemu-user)",
)


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)


def build(compiler: str, out: Path, *flags: str) -> Path:
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{KERNELS}"]
    source = HERE / "portable_check.cpp"
    done = run(compiler, "-std=c++17", "-O2", "-ffp-contract=off", *flags, *includes, source, "-o", out)
    assert done.returncode == 0, done.stderr
    return out


def test_neon_paths_equal_the_plain_loops(tmp_path):
    native = run(build("g++", tmp_path / "native"))
    assert native.returncode == 0, native.stderr
    assert len(native.stdout.splitlines()) == 8 * 15  # 8 types x 3 activation rows x 5 weight rows
    for arch, neon_op in (("armv8-a", "sadalp"), ("armv8.2-a+dotprod", "sdot")):
        binary = build(CROSS, tmp_path / arch, f"-march={arch}")
        assert neon_op in run("aarch64-linux-gnu-objdump", "-d", binary).stdout  # NEON, not the plain loop
        arm = run(QEMU, "-L", "/usr/aarch64-linux-gnu", binary)
        assert arm.returncode == 0, arm.stderr
        assert arm.stdout == native.stdout, arch
