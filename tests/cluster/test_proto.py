"""The checked-in gRPC modules are exactly what grpcio-tools generates from node.proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.cluster.proto import gen


def test_generated_code_is_reproducible(tmp_path: Path):
    pytest.importorskip("grpc_tools")
    fresh = gen.generate(tmp_path)
    for path in fresh:
        checked_in = gen.HERE / path.name
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{checked_in.name} is stale: run scripts/gen_proto.sh"
        )
