"""Cluster YAML parsing: static nodes, DNS discovery, planner options, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.cluster.config import ConfigError, NodeSpec, discover, load_config, parse_config, write_config


def test_static_cluster_round_trip(tmp_path: Path):
    path = write_config(
        tmp_path / "c.yaml", "gemma-3-270m", [NodeSpec("a", "10.0.0.1:1"), NodeSpec("b", "h:2")]
    )
    cfg = load_config(path)
    assert cfg.model == "gemma-3-270m"
    assert [(n.name, n.address) for n in cfg.nodes] == [("a", "10.0.0.1:1"), ("b", "h:2")]
    assert discover(cfg) == cfg.nodes
    assert (cfg.objective, cfg.strategy, cfg.wire_dtype) == ("latency", "auto", "f16")


def test_planner_options_and_fixed_stages():
    cfg = parse_config(
        {
            "model": "m",
            "nodes": [{"name": "a", "address": "x:1", "memory_limit": "300MB"}],
            "planner": {
                "strategy": "device-edge",
                "local": True,
                "stages": [{"node": "a", "layers": [0, 4]}],
            },
        }
    )
    assert cfg.nodes[0].memory_limit == 300_000_000
    assert cfg.local and cfg.strategy == "device-edge"
    assert (cfg.stages[0].node, cfg.stages[0].start, cfg.stages[0].end) == ("a", 0, 4)


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
        ({"nodes": [{"address": "a:1"}]}, "'model'"),
        ({"model": "m"}, "either 'nodes' or"),
        ({"model": "m", "nodes": [{"name": "a"}]}, "needs an 'address"),
        ({"model": "m", "nodes": [{"address": "nohost"}]}, "host:port"),
        ({"model": "m", "nodes": [{"address": "a:1", "memory_limit": "lots"}]}, "bad size"),
        ({"model": "m", "nodes": [{"address": "a:1"}], "planner": {"strategy": "magic"}}, "strategy"),
        ({"model": "m", "nodes": [{"address": "a:1"}], "colour": "red"}, "unknown keys"),
        (
            {"model": "m", "nodes": [{"name": "x", "address": "a:1"}, {"name": "x", "address": "b:1"}]},
            "unique",
        ),
    ],
)
def test_bad_configs_say_what_is_wrong(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/cluster.yaml")
