"""Regenerate node_pb2.py / node_pb2_grpc.py from node.proto: ``python -m edgeinfer.cluster.proto.gen``.

The generated files are checked in; tests/cluster/test_proto.py checks they match a fresh generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the directory holding the edgeinfer package


def generate(out_dir: Path = ROOT) -> list[Path]:
    """Generate into ``out_dir/edgeinfer/cluster/proto``; returns the files written."""
    from importlib.resources import files

    from grpc_tools import protoc

    include = str(files("grpc_tools").joinpath("_proto"))
    rel = "edgeinfer/cluster/proto/node.proto"
    (out_dir / "edgeinfer/cluster/proto").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        rel,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [out_dir / "edgeinfer/cluster/proto" / f for f in ("node_pb2.py", "node_pb2_grpc.py")]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
