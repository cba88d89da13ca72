"""One way from a model spec to a Backend: options checked up front, the served name without loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.generate import complete
from edgeinfer.engine.load import BackendKind, LoadOptions, backend_opener, open_backend


def test_options_parse_the_backend_kind_and_refuse_unknown_ones() -> None:
    assert LoadOptions("shard").backend is BackendKind.SHARD
    assert LoadOptions().backend is BackendKind.LLAMACPP
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose one of llamacpp, shard"):
        LoadOptions("tensorrt")


def test_weight_formats_are_checked_when_the_options_are_built() -> None:
    assert LoadOptions("shard", weight_format="bf16").weight_format == "bf16"
    with pytest.raises(ValueError, match="unknown weight format 'int3'; choose one of auto, gguf"):
        LoadOptions("shard", weight_format="int3")
    with pytest.raises(ValueError, match="shard backend only"):
        LoadOptions("llamacpp", weight_format="bf16")


def test_opener_names_the_model_without_reading_it(tmp_path: Path) -> None:
    missing = tmp_path / "not-there.gguf"
    name, load = backend_opener(str(missing), LoadOptions())
    assert name == "not-there"
    with pytest.raises(LookupError, match="neither a bundled model"):
        load()


@pytest.mark.parametrize("kind", list(BackendKind))
def test_open_backend_serves_the_bundled_name_on_either_backend(kind, gemma_path: Path) -> None:
    backend = open_backend("gemma", LoadOptions(kind, n_ctx=256, threads=2))
    try:
        assert backend.info.name == "gemma-3-270m" and backend.info.n_ctx == 256
        params = SamplingParams(temperature=0.0, max_tokens=6)
        assert complete(backend, backend.tokenize("1, 2, 3, 4,"), params).text.startswith(" 5")
    finally:
        backend.close()
