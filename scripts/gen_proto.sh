#!/bin/sh
# Regenerate the checked-in gRPC modules of the node service from edgeinfer/cluster/proto/node.proto.
exec "${PYTHON:-.venv/bin/python}" -m edgeinfer.cluster.proto.gen "$@"
