"""Cluster YAML parsing: static nodes, DNS discovery, planner options, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.cluster.config import ConfigError, NodeSpec, discover, load_config, parse_config, write_config


def test_static_cluster_round_trip(tmp_path: Path):
    path = write_config(
        tmp_path / "c.yaml",
        "gemma-3-270m",
        [NodeSpec(name="a", address="10.0.0.1:1"), NodeSpec(name="b", address="h:2")],
    )
    cfg = load_config(path)
    assert cfg.model == "gemma-3-270m"
    assert [(n.name, n.address) for n in cfg.nodes] == [("a", "10.0.0.1:1"), ("b", "h:2")]
    assert discover(cfg) == list(cfg.nodes)
    assert (cfg.planner.objective, cfg.planner.strategy, cfg.wire_dtype) == ("latency", "auto", "f16")
    assert not cfg.wants_local and cfg.ctx_size == 4096


def test_planner_options_and_fixed_stages():
    cfg = parse_config(
        {
            "model": "m",
            "nodes": [{"name": "a", "address": "x:1", "memory_limit": "300MB"}, {"address": "y:2"}],
            "planner": {
                "strategy": "device-edge",
                "local": True,
                "local_memory_limit": "1GiB",
                "stages": [{"node": "a", "layers": [0, 4]}],
            },
        }
    )
    assert cfg.nodes[0].memory_limit == 300_000_000 and cfg.nodes[1].memory_limit is None
    assert cfg.nodes[1].name == "y:2"  # the address names a node without a name
    assert cfg.planner.local and cfg.planner.strategy == "device-edge" and cfg.wants_local
    assert cfg.planner.local_memory_limit == 1 << 30
    stage = cfg.planner.stages[0]
    assert (stage.node, stage.start, stage.end) == ("a", 0, 4)


def test_dns_discovery_resolves_a_records():
    cfg = parse_config({"model": "m", "discovery": {"dns": "localhost", "port": 7, "timeout": 1}})
    nodes = discover(cfg)
    assert nodes and all(n.address.endswith(":7") for n in nodes)
    cfg = parse_config({"model": "m", "discovery": {"dns": "localhost", "expect": 50, "timeout": 0}})
    with pytest.raises(ConfigError, match="expected at least 50"):
        discover(cfg)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"nodes": [{"address": "a:1"}]}, "'model' is required"),
        ({"model": "m"}, "either 'nodes' or"),
        ({"model": "m", "nodes": [{"name": "a"}]}, r"'nodes\[0\]\.address' is required"),
        (
            {"model": "m", "nodes": [{"address": "nohost"}]},
            r"nodes\[0\]\.address: 'nohost' must be host:port",
        ),
        (
            {"model": "m", "nodes": [{"address": "a:1", "memory_limit": "lots"}]},
            r"nodes\[0\]\.memory_limit: bad size",
        ),
        ({"model": "m", "nodes": [{"address": "a:1"}], "planner": {"strategy": "magic"}}, "planner.strategy"),
        ({"model": "m", "nodes": [{"address": "a:1"}], "colour": "red"}, "unknown key 'colour'"),
        (
            {"model": "m", "nodes": [{"address": "a:1"}], "planner": {"stage": []}},
            "unknown key 'planner.stage'",
        ),
        (
            {"model": "m", "nodes": [{"address": "a:1"}], "ctx_size": 0},
            "ctx_size: Input should be greater than 0",
        ),
        ({"model": "m", "nodes": [{"address": "a:1"}], "wire_dtype": "fp16"}, "wire_dtype: Input should be"),
        ({"model": "m", "nodes": [{"name": "local", "address": "a:1"}]}, "reserved"),
        (
            {"model": "m", "nodes": [{"address": "a:1"}], "planner": {"stages": [{"node": "a"}]}},
            "layers' is required",
        ),
        (
            {"model": "m", "nodes": [{"name": "x", "address": "a:1"}, {"name": "x", "address": "b:1"}]},
            "unique",
        ),
    ],
)
def test_bad_configs_say_what_is_wrong(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/cluster.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
