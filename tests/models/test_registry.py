"""Bundled-model assembly: parts concatenated, sha256 checked, cached, corruption detected."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgeinfer.models import registry
from edgeinfer.models.registry import BundledModel, ModelNotFound, ensure_bundled, resolve


def _model(tmp_path: Path, chunks: list[bytes], sha: str | None = None) -> BundledModel:
    parts = []
    for i, data in enumerate(chunks):
        p = tmp_path / f"part{i}"
        p.write_bytes(data)
        parts.append(p)
    return BundledModel(
        name="toy",
        filename="toy.gguf",
        sha256=sha or hashlib.sha256(b"".join(chunks)).hexdigest(),
        parts=lambda: parts,
        description="toy",
        chat=False,
    )


def test_assembles_parts_in_order_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    model = _model(tmp_path, [b"GGUF", b"-part-two", b"-three"])
    out = ensure_bundled(model, progress=False)
    assert out.read_bytes() == b"GGUF-part-two-three"
    assert out.with_suffix(".sha256").read_text().split()[0] == model.sha256
    stamp_mtime = out.stat().st_mtime_ns
    assert ensure_bundled(model, progress=False) == out and out.stat().st_mtime_ns == stamp_mtime


def test_wrong_checksum_is_refused_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    model = _model(tmp_path, [b"abc"], sha="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        ensure_bundled(model, progress=False)
    assert not list((tmp_path / "cache" / "models").iterdir())


def test_corrupted_cache_file_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    model = _model(tmp_path, [b"hello ", b"world"])
    out = ensure_bundled(model, progress=False)
    out.write_bytes(b"hello wxrld")  # same size, different content, stale stamp
    out.with_suffix(".sha256").unlink()
    assert ensure_bundled(model, progress=False).read_bytes() == b"hello world"


def test_resolve_paths_and_unknown_names(tmp_path: Path) -> None:
    gguf = tmp_path / "my-model.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve(str(gguf)) == ("my-model", gguf.resolve())
    with pytest.raises(ModelNotFound, match="neither a bundled model"):
        resolve("definitely-not-a-model")


def test_real_bundled_models_verify(qwen_path: Path, gemma_path: Path) -> None:
    assert qwen_path.stat().st_size > 400_000_000 and qwen_path.read_bytes()[:4] == b"GGUF"
    assert gemma_path.stat().st_size > 200_000_000
    assert registry.lookup("qwen").name == registry.DEFAULT_MODEL


def test_served_name_is_one_rule_for_names_aliases_and_paths() -> None:
    assert (
        registry.served_name("qwen") == registry.served_name(registry.DEFAULT_MODEL) == registry.DEFAULT_MODEL
    )
    assert registry.served_name("gemma") == "gemma-3-270m"
    assert registry.served_name("/models/tiny-llama.q4.gguf") == "tiny-llama.q4"
    assert registry.served_name("~/m.gguf") == "m"
