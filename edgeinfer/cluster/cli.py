"""CLI commands of the cluster: `edgeinfer node`, `edgeinfer plan`, `edgeinfer testbed up|down|status`,
`edgeinfer cluster certs`.

Registered in edgeinfer/cli.py; also runnable alone: ``python -m edgeinfer.cluster.cli node --listen ...``.
Heavy imports (torch, grpc) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

err = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def node(
    listen: Annotated[str, typer.Option(help="HOST:PORT to serve gRPC on (port 0 picks a free port).")] = (
        "0.0.0.0:50051"
    ),
    name: Annotated[
        str | None, typer.Option(help="Node name reported to the gateway. Default: hostname.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", "-t", help="CPU threads per shard. Default: physical cores.", min=1),
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            help="Most memory this node gives to weights AND KV caches, e.g. 300MB or 1.5GiB; loads and "
            "sequences beyond it are refused. Default: 90% of the memory available at start."
        ),
    ] = None,
    models_dir: Annotated[
        str | None,
        typer.Option(
            help="Directory of GGUF files a gateway may load (besides the bundled models). Default: "
            "bundled models only."
        ),
    ] = None,
    token_file: Annotated[
        str | None,
        typer.Option(
            help="File holding the cluster token every call must carry. Default: $EDGEINFER_CLUSTER_TOKEN."
        ),
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(help="This node's certificate (PEM, from `edgeinfer cluster certs`).")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="Its private key (PEM).")] = None,
    tls_ca: Annotated[
        str | None, typer.Option(help="The cluster CA: callers must present a certificate it signed.")
    ] = None,
    max_sequences: Annotated[
        int, typer.Option(help="KV sequences open at once; more are refused.", min=1)
    ] = 64,
    idle_ttl: Annotated[
        float, typer.Option(help="Seconds after which an unused sequence is dropped.", min=0.1)
    ] = 300.0,
    max_context: Annotated[
        int,
        typer.Option(
            help="Longest prefill one call may carry, in positions (sizes the gRPC message limit with the "
            "widest hidden size among the models this node may load).",
            min=16,
        ),
    ] = 4096,
    health_listen: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT to answer the standard gRPC health service (grpc.health.v1) on, alone and in "
            "plaintext, for probes that can present neither the token nor a certificate (Kubernetes' grpc "
            "probes). The node's own port answers it too, behind the token/TLS. Default: off."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level (debug, info, warning).")] = "info",
) -> None:
    """Host model shards and serve them over gRPC (load/unload layer ranges, forward with per-sequence KV
    cache, drop sequences, capabilities with measured layer time). See docs/security.md before exposing it."""
    import os

    # idle OpenMP threads must sleep, not spin: several nodes may share one machine's cores (set before torch)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from edgeinfer.cluster.auth import SecurityError, load_security
    from edgeinfer.cluster.host import ShardHost
    from edgeinfer.cluster.node import is_loopback, message_limit, serve_forever, widest_hidden
    from edgeinfer.units import parse_bytes

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        limit = parse_bytes(memory_limit)
        security = load_security(token_file, tls_cert, tls_key, tls_ca)
    except (ValueError, SecurityError) as exc:
        _fail(str(exc))
    if models_dir is not None and not os.path.isdir(models_dir):
        _fail(f"--models-dir {models_dir!r} is not a directory")
    host = ShardHost(
        name,
        threads=threads,
        memory_limit=limit,
        models_dir=models_dir,
        any_path=False,
        max_sequences=max_sequences,
        idle_ttl=idle_ttl,
    )
    if security.open and not is_loopback(listen):
        err.print(
            f"[bold red]warning:[/] node listens on {listen} without a cluster token or TLS: anyone who "
            "reaches the port controls it (docs/security.md)"
        )
    try:
        serve_forever(
            host,
            listen,
            ready=lambda port: err.print(
                f"node {host.node_id} listening on port {port} (authentication: {security.describe()})"
            ),
            security=security,
            max_message=message_limit(max_context, widest_hidden(host)),
            health_listen=health_listen,
        )
    except OSError as exc:
        _fail(f"cannot listen on {listen}: {exc}")


cluster_app = typer.Typer(help="Cluster administration: certificates for mutual TLS.", no_args_is_help=True)


@cluster_app.command("certs")
def certs(
    out_dir: Annotated[str, typer.Argument(help="Directory to write ca.pem, node-NAME.pem/.key, ...")],
    node_names: Annotated[
        list[str], typer.Option("--node", "-n", help="A node name (repeat for every node).")
    ],
    gateway: Annotated[str, typer.Option(help="Name of the gateway's (client) certificate.")] = "gateway",
    san: Annotated[
        list[str] | None,
        typer.Option(help="Extra DNS name or IP address in every node certificate (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1)] = 825,
) -> None:
    """Make a small CA (or reuse DIR/ca.pem + ca.key) and sign a certificate per node and one for the
    gateway. Nodes: --tls-cert DIR/node-NAME.pem --tls-key DIR/node-NAME.key --tls-ca DIR/ca.pem."""
    from edgeinfer.cluster.certs import make_certs

    try:
        made = make_certs(out_dir, node_names, gateway=gateway, sans=san or [], days=days)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    out.print(f"CA: {made.ca} (keep {made.ca_key} offline; it signs new nodes)")
    for n, f in made.nodes.items():
        out.print(f"node {n}: --tls-cert {f.cert} --tls-key {f.key} --tls-ca {made.ca}")
    out.print(
        f"gateway: security: {{tls: {{ca: {made.ca}, cert: {made.gateway.cert}, key: {made.gateway.key}}}}}"
    )


def plan(
    cluster: Annotated[str, typer.Option(help="Cluster YAML (see docs/cluster.md).")],
    strategy: Annotated[
        str | None,
        typer.Option(
            help="Override the YAML: auto, single (on-device), pipeline (edge<->edge) or device-edge."
        ),
    ] = None,
    objective: Annotated[
        str | None, typer.Option(help="Override the YAML: latency (per-token) or throughput (micro-batched).")
    ] = None,
    compare: Annotated[
        bool, typer.Option(help="Also show equal and exo-style memory-weighted splits.")
    ] = True,
    replicas: Annotated[
        int | None,
        typer.Option(
            help="Override the YAML's planner.replicas: warm standbys per stage (0 or 1).", min=0, max=1
        ),
    ] = None,
) -> None:
    """Profile every node and link of the cluster, then print the plan, its warm standbys (and their memory
    cost), the predicted tok/s and why nodes were left out."""
    from edgeinfer.cluster.bringup import plan_cluster
    from edgeinfer.cluster.config import ConfigError, load_config
    from edgeinfer.cluster.gateway import ClusterError
    from edgeinfer.cluster.planner import InfeasiblePlan, equal_split, memory_weighted

    try:
        cfg = load_config(cluster)
        with err.status("profiling the cluster ...") as status:
            chosen, problem, profile = plan_cluster(
                cfg, strategy, objective, progress=status.update, replicas=replicas
            )
    except (ConfigError, ClusterError, InfeasiblePlan, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    profile.close()
    nodes = Table(title="nodes (measured)")
    for col in (
        "node",
        "address",
        "layer ms",
        "head ms",
        "memory MiB",
        "rtt ms",
        "call ms",
        "bandwidth Mbit/s",
    ):
        nodes.add_column(col, overflow="fold")  # never cut an address short on a narrow terminal
    for p in profile.nodes:
        bw = "local" if p.local else f"{p.bytes_per_s * 8 / 1e6:.0f}"
        nodes.add_row(
            p.name,
            p.address,
            f"{p.layers.layer_seconds * 1e3:.2f}",
            f"{p.layers.head_seconds * 1e3:.2f}",
            f"{p.memory / 2**20:.0f}",
            f"{p.rtt_s * 1e3:.2f}",
            f"{p.call_s * 1e3:.2f}" if p.call_s else "-",
            bw,
        )
    out.print(nodes)
    stages = Table(title=f"plan ({chosen.objective}, strategy {chosen.strategy} -> {chosen.strategy_used})")
    for col in ("stage", "node", "layers", "compute ms", "hop ms", "weights MiB", "KV MiB"):
        stages.add_column(col)
    for i, r in enumerate(chosen.breakdown):
        stages.add_row(
            str(i),
            r.node,
            f"{r.start}-{r.end - 1}",
            f"{r.compute * 1e3:.2f}",
            f"{r.hop * 1e3:.2f}",
            f"{r.memory / 2**20:.0f}",
            f"{r.kv / 2**20:.0f}",
        )
    out.print(stages)
    if any(sb is not None for sb in chosen.standbys):
        spare = Table(title="warm standbys (failover without loading, docs/resilience.md)")
        for col in ("stage", "standby node", "layers", "weights + KV MiB"):
            spare.add_column(col)
        cost = 0.0
        for i, sb in enumerate(chosen.standbys):
            if sb is None:
                spare.add_row(str(i), "-", "no node has room", "-")
                continue
            mem = problem.stage_need(sb.start, sb.end)
            cost += mem
            spare.add_row(str(i), sb.node, f"{sb.start}-{sb.end - 1}", f"{mem / 2**20:.0f}")
        out.print(spare)
        out.print(f"standbys cost {cost / 2**20:.0f} MiB (weights and KV reservation) on their nodes")
    elif chosen.standbys:
        out.print("standbys: none placed (no node has room for another copy of a stage)")
    out.print(
        f"predicted: {chosen.latency * 1e3:.2f} ms/token = [bold]{chosen.tokens_per_second:.1f} tok/s[/] "
        f"(throughput bound {chosen.throughput:.1f} tok/s)"
    )
    for name, why in chosen.excluded.items():
        out.print(f"left out: [bold]{name}[/]: {why}")
    if compare:
        for label, fn in (("equal split", equal_split), ("memory-weighted (exo)", memory_weighted)):
            try:
                b = fn(problem)
                out.print(f"{label}: {b.describe()} -> {b.tokens_per_second:.1f} tok/s predicted")
            except (InfeasiblePlan, ValueError) as exc:
                out.print(f"{label}: infeasible ({exc})")


testbed_app = typer.Typer(
    help="Emulated edge cluster on this machine: network namespaces + veth + tbf.", no_args_is_help=True
)


@testbed_app.command("up")
def testbed_up(
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", help="Number of hosts (one node each).", min=1, max=64)
    ] = 2,
    rate: Annotated[
        str, typer.Option(help="Bandwidth of each host's link, both ways (tc rate, e.g. 100mbit).")
    ] = ("1gbit"),
    model: Annotated[str, typer.Option("--model", "-m", help="Model the cluster YAML names.")] = (
        "qwen2.5-coder-0.5b-instruct"
    ),
    out_file: Annotated[str, typer.Option("--out", help="Where to write the cluster YAML.")] = "cluster.yaml",
    name: Annotated[str | None, typer.Option(help="Test-bed name (1-8 of a-z0-9). Default: random.")] = None,
    threads: Annotated[
        int | None, typer.Option(help="Threads per node. Default: physical cores.", min=1)
    ] = None,
    memory_limit: Annotated[
        str | None, typer.Option(help="Per-node memory limit for weights, e.g. 300MB.")
    ] = None,
    port: Annotated[int, typer.Option(help="gRPC port of the nodes.")] = 50051,
    log_dir: Annotated[
        str, typer.Option(help="Directory for the nodes' logs.")
    ] = "/tmp/edgeinfer-testbed-logs",
) -> None:
    """Build N namespaces joined by rate-limited veth links, start a node in each, write the cluster YAML.
    The test-bed keeps running until `edgeinfer testbed down`."""
    from edgeinfer.cluster.config import write_config
    from edgeinfer.cluster.testbed import start_nodes
    from edgeinfer.testbed.netns import Testbed, TestbedError
    from edgeinfer.units import parse_rate_bps

    try:
        parse_rate_bps(rate)
        tb = Testbed(nodes, rate=rate, name=name)
        with err.status(f"building test-bed {tb.name} ({nodes} hosts, {rate}) ..."):
            tb.up()
            try:
                specs = start_nodes(
                    tb, port=port, threads=threads, memory_limit=memory_limit, log_dir=log_dir
                )
            except BaseException:
                tb.down()
                raise
        tb.detach()
    except (TestbedError, ValueError) as exc:
        _fail(str(exc))
    write_config(out_file, model, specs)
    for s in specs:
        out.print(f"{s.name}: {s.address}")
    out.print(f"test-bed [bold]{tb.name}[/] is up; cluster YAML: {out_file}; logs in {log_dir}")
    out.print(f"remove it with: edgeinfer testbed down --name {tb.name}")


@testbed_app.command("down")
def testbed_down(
    name: Annotated[
        str | None, typer.Option(help="Test-bed to remove. Default: every leftover test-bed.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Remove every test-bed, including running ones.")
    ] = False,
) -> None:
    """Stop the nodes and remove namespaces, links and state. Idempotent."""
    from edgeinfer.testbed.netns import cleanup_leftovers, list_testbeds, teardown

    if name:
        teardown(name)
        out.print(f"removed test-bed {name}")
        return
    if all_:
        removed = [s["name"] for s in list_testbeds()]
        for n in removed:
            teardown(n)
        removed += cleanup_leftovers(include_detached=True)
    else:
        removed = cleanup_leftovers(include_detached=True)
    out.print(f"removed: {', '.join(sorted(set(removed))) or 'nothing'}")


@testbed_app.command("status")
def testbed_status() -> None:
    """List the test-beds on this machine, their hosts and link rates."""
    from edgeinfer.testbed.netns import list_namespaces, list_testbeds

    table = Table(title="test-beds")
    for col in ("name", "subnet", "hosts", "rates", "owner", "namespaces present"):
        table.add_column(col)
    for s in list_testbeds():
        owner = "detached" if s.get("detached") else ("alive" if s["alive"] else "dead (leftover)")
        rates = ", ".join(str(h.get("rate")) for h in s.get("hosts", []))
        hosts = ", ".join(h["ip"] for h in s.get("hosts", []))
        table.add_row(
            s["name"], f"10.77.{s['subnet']}.0/24", hosts, rates, owner, str(len(list_namespaces(s["name"])))
        )
    out.print(table)


app = typer.Typer(help="edgeinfer cluster commands (standalone entry).", no_args_is_help=True)
app.command("node")(node)
app.command("plan")(plan)
app.add_typer(testbed_app, name="testbed")
app.add_typer(cluster_app, name="cluster")

if __name__ == "__main__":
    app()
