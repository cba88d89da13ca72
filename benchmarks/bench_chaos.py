"""Chaos benchmark of the cluster gateway on the namespace test-bed (needs root): recovery time after a node
fault mid-stream, with a warm standby and with a cold re-plan, at several link rates; replay cost versus the
length of the history; requests completed / failed under faults; tok/s before and after (docs/resilience.md).

Three nodes, each allowed ~60 % of the model's weights (two are needed, the third has room for one warm
standby or for a re-plan). For every kill: a greedy stream of ``--history`` prompt tokens, ``--before``
tokens, the fault (``kill -9`` or ``SIGSTOP`` of a primary), ``--after`` tokens. The recovery time is the gap
between the fault and the first token after it (detection + standby switch or re-plan + replay + one step).
The node is then restarted and the gateway re-admits it (standbys placed again) before the next kill.
``--requests N --load-kills K``: N short greedy requests one after the other on a cluster with standbys,
a primary killed in the middle of one request in every N/K (restarted after it, re-admitted before the
next kill): how many complete with the tokens of an undisturbed run, how many fail.

    sudo .venv/bin/python benchmarks/bench_chaos.py --model gemma --rates 1gbit,100mbit,10mbit --kills 10 \\
        --histories 128,512,2048 --requests 100 --load-kills 10 --out chaos.json

Everything runs inside a test-bed that is removed on exit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from edgeinfer.bench.table import Format, Output, Table
from edgeinfer.cluster.bringup import load_cluster
from edgeinfer.cluster.client import NodeClient, NodeError
from edgeinfer.cluster.config import load_config
from edgeinfer.cluster.gateway import ClusterError
from edgeinfer.cluster.testbed import NODE_PORT, node_argv
from edgeinfer.engine.base import SamplingParams
from edgeinfer.engine.shard import Shard, layer_count
from edgeinfer.models.registry import resolve
from edgeinfer.testbed.netns import Testbed

PROSE = "the quick brown fox jumps over the lazy dog while the robot paints a small red boat"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


class Bed:
    def __init__(self, tb: Testbed, logs: Path):
        self.tb, self.logs = tb, logs
        self.procs: list = [None] * len(tb.hosts)

    def start(self, i: int) -> None:
        out = (self.logs / f"n{i}.log").open("ab")
        self.procs[i] = self.tb.popen(i, node_argv(NODE_PORT, f"n{i}", 1), stdout=out, stderr=out)
        client = NodeClient(f"{self.tb.hosts[i].ip}:{NODE_PORT}", f"n{i}", timeout=2)
        deadline = time.monotonic() + 120
        try:
            while True:
                try:
                    client.wait_ready(1.0)
                    client.ping()
                    return
                except NodeError:
                    if time.monotonic() > deadline:
                        raise
        finally:
            client.close()

    def fault(self, name: str, how: str) -> None:
        proc = self.procs[int(name.removeprefix("n"))]
        if how == "kill":
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        else:
            proc.send_signal(signal.SIGSTOP)

    def revive(self, name: str, how: str) -> None:
        i = int(name.removeprefix("n"))
        if how == "kill":
            self.start(i)
        else:
            self.procs[i].send_signal(signal.SIGCONT)


def prompt_ids(backend, n: int) -> list[int]:
    ids = backend.tokenize(" ".join(itertools.islice(itertools.cycle(PROSE.split()), n * 2)))
    return ids[:n]


class Probe:
    """Where a recovery's time goes: when the victim was declared dead (``mark_dead``, by the data path or
    the heartbeat) and when the gateway had replaced its stage (``_recover`` returned)."""

    def __init__(self, backend):
        self.dead: dict[str, float] = {}
        self.recovered: list[float] = []
        m = backend.membership
        mark_dead, recover = m.mark_dead, backend._recover

        def dead(name: str, why: str) -> None:
            self.dead.setdefault(name, time.perf_counter())
            mark_dead(name, why)

        def recovered(*a, **k):
            out = recover(*a, **k)
            self.recovered.append(time.perf_counter())
            return out

        m.mark_dead, backend._recover = dead, recovered

    def reset(self) -> None:
        self.dead.clear()
        self.recovered.clear()


def one_kill(
    backend, bed: Bed, ids: list[int], before: int, after: int, warm: bool, how: str, probe: Probe
) -> dict:
    if warm:
        covered = [i for i, sb in enumerate(backend.standbys) if sb is not None]
        if not covered:
            raise RuntimeError(f"no standby placed: {backend.plan.describe()}")
        index = covered[0]
    else:
        index = len(backend.stages) - 1
    victim = backend.stages[index].name
    layers = backend.stages[index].placement.n_layers
    plan = backend.plan.describe() if backend.plan else ""
    probe.reset()
    standby = backend.standbys[index] if warm else None
    if standby is not None:
        standby.timings.clear()  # a hot standby's mirrored calls so far: not part of the recovery
    mark = 0
    s0 = (backend.stats.failovers, backend.stats.replans, backend.stats.replayed_tokens)
    gen = backend.generate_tokens(ids, SamplingParams(temperature=0.0))
    times, t_fault, error = [], 0.0, None
    t_start = time.perf_counter()
    try:
        for k in range(before + after):
            next(gen)
            times.append(time.perf_counter())
            if k == before - 1:
                mark = len(standby.timings) if standby is not None else 0
                bed.fault(victim, how)
                t_fault = time.perf_counter()
    except ClusterError as exc:  # counted as a failed request
        error = str(exc)
    finally:
        gen.close()
    if error is not None:
        return {
            "victim": victim,
            "victim_layers": layers,
            "plan": plan,
            "error": error,
            "recovery_s": float("nan"),
            "failovers": 0,
            "replayed": 0,
        }
    s1 = (backend.stats.failovers, backend.stats.replans, backend.stats.replayed_tokens)
    steps_before = [b - a for a, b in itertools.pairwise(times[1:before])]
    steps_after = [b - a for a, b in itertools.pairwise(times[before + 1 :])]
    t_dead = probe.dead.get(victim, float("nan"))
    t_switch = probe.recovered[0] if probe.recovered else float("nan")
    # the replay: the forwards of several positions the standby ran after the fault (a mirrored call in
    # flight then included: the switch waits for it)
    after = list(standby.timings)[mark:] if standby is not None else []
    replay = [(n, sec) for n, sec, *_ in after if n > 1]
    return {
        "victim": victim,
        "victim_layers": layers,
        "plan": plan,
        "detect_s": t_dead - t_fault,  # fault -> declared dead
        "switch_s": t_switch - t_dead,  # declared dead -> stage replaced (standby switch or re-plan + loads)
        "replay_positions": sum(n for n, _ in replay),
        "replay_s": sum(sec for _, sec in replay),  # the replacing stage's replay forwards (warm)
        "step_s": statistics.median(steps_before) if steps_before else float("nan"),
        "recovery_s": times[before] - t_fault,
        "ttft_s": times[0] - t_start,  # the prompt's own prefill: what a full replay costs
        "failovers": s1[0] - s0[0],
        "replans": s1[1] - s0[1],
        "replayed": s1[2] - s0[2],
        "tok_s_before": 1 / statistics.median(steps_before) if steps_before else float("nan"),
        "tok_s_after": 1 / statistics.median(steps_after) if steps_after else float("nan"),
    }


def settle(backend, bed: Bed, victim: str, how: str, warm: bool, timeout: float = 120) -> None:
    """Bring the node back and wait until the gateway re-admitted it (and placed a standby again)."""
    bed.revive(victim, how)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = backend.membership
        ok = m.is_up(victim) and (not warm or any(sb is not None for sb in backend.standbys))
        ok = ok and backend.settled()  # profiled again and re-planned: nothing competes with the next fault
        if ok and backend._gate.acquire(timeout=1):  # the healer is done with it
            backend._gate.release()
            return
        time.sleep(0.2)
    raise RuntimeError(f"{victim} was not re-admitted within {timeout:.0f} s")


def under_faults(backend, bed: Bed, n: int, kills: int, rate: str, tokens: int = 8) -> list[dict]:
    """``n`` short greedy requests in a row, a primary killed after the 2nd token of one request in every
    ``n / kills`` (restarted after that request; re-admitted, standby placed again, before the next kill).
    Each request is compared with the same prompt's undisturbed tokens."""
    out = []
    every = max(1, n // max(1, kills))
    try:
        prompts = [prompt_ids(backend, 24 + (k % 5) * 8) for k in range(5)]
        want = [
            list(itertools.islice(backend.generate_tokens(p, SamplingParams(temperature=0.0)), tokens))
            for p in prompts
        ]
        for k in range(n):
            ids, expected = prompts[k % 5], want[k % 5]
            fault = k % every == every // 2 and sum(r["fault"] for r in out) < kills
            victim = None
            if fault:
                covered = [i for i, sb in enumerate(backend.standbys) if sb is not None]
                victim = backend.stages[covered[0] if covered else -1].name
            t0, got, error = time.perf_counter(), [], None
            gen = backend.generate_tokens(ids, SamplingParams(temperature=0.0))
            try:
                for tok in itertools.islice(gen, tokens):
                    got.append(tok)
                    if victim is not None and len(got) == 2:
                        bed.fault(victim, "kill")
            except ClusterError as exc:
                error = str(exc)
            finally:
                gen.close()
            r = {
                "request": k,
                "fault": fault,
                "victim": victim,
                "seconds": time.perf_counter() - t0,
                "ok": error is None and got == expected,
                "error": error,
                "rate": rate,
            }
            out.append(r)
            print(json.dumps(r), flush=True)
            if victim is not None:
                settle(backend, bed, victim, "kill", warm=True)
    finally:
        backend.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma")
    ap.add_argument("--rates", default="1gbit,100mbit,10mbit")
    ap.add_argument("--kills", type=int, default=10, help="faults per scenario and rate")
    ap.add_argument("--history", type=int, default=512, help="prompt tokens of the recovery scenarios")
    ap.add_argument("--histories", default="128,512,2048", help="replay cost: prompt lengths (100mbit)")
    ap.add_argument("--replay-kills", type=int, default=3, help="faults per history length")
    ap.add_argument("--before", type=int, default=8)
    ap.add_argument("--after", type=int, default=8)
    ap.add_argument("--scenarios", default="warm-kill,cold-kill,warm-hang")
    ap.add_argument("--wire-dtype", default="f16")
    ap.add_argument("--requests", type=int, default=0, help="short requests under faults (0: skip)")
    ap.add_argument("--load-kills", type=int, default=10, help="kills spread over --requests")
    ap.add_argument(
        "--mirror",
        default="on",
        choices=("on", "off", "both"),
        help="hot standbys (failover.mirror): on, off, or both (each scenario run with and without)",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    _, path = resolve(args.model, progress=False)
    n_layers = layer_count(path)
    whole = Shard(path, 0, n_layers, threads=1)
    limit = int(whole.weight_bytes * 0.6) + (64 << 20)  # + room for the KV caches of long histories
    whole.close()
    histories = [int(h) for h in args.histories.split(",") if h]
    # the context the gateway serves: the planner reserves its KV cache per stage beside the weights
    ctx = max([args.history, *histories]) + args.before + args.after + 64
    results: dict = {
        "model": args.model,
        "limit_bytes": limit,
        "ctx": ctx,
        "runs": [],
        "replay": [],
        "load": [],
    }
    rates = args.rates.split(",")
    with tempfile.TemporaryDirectory() as tmp, Testbed(3, rate=rates[0]) as tb:
        bed = Bed(tb, Path(tmp))
        for i in range(3):
            bed.start(i)

        def cluster(replicas: int, mirror: bool = args.mirror != "off"):
            doc = {
                "model": str(path),
                "nodes": [
                    {"name": f"n{i}", "address": f"{h.ip}:{NODE_PORT}", "memory_limit": limit}
                    for i, h in enumerate(tb.hosts)
                ],
                "ctx_size": ctx,
                "wire_dtype": args.wire_dtype,
                "planner": {"replicas": replicas},
                "failover": {"heartbeat": 0.25, "ban": 1.0, "max_ban": 2.0, "mirror": mirror},
            }
            cfg = Path(tmp) / "c.yaml"
            cfg.write_text(yaml.safe_dump(doc))
            return load_cluster(load_config(cfg))

        for rate in rates:
            for i in range(3):
                tb.set_rate(i, rate)
            mirrors = {"on": [True], "off": [False], "both": [True, False]}[args.mirror]
            runs = [
                (s, m) for s in args.scenarios.split(",") if s for m in (mirrors if s[:4] == "warm" else [0])
            ]
            for scenario, mirror in runs:
                warm, how = scenario.startswith("warm"), "kill" if scenario.endswith("kill") else "stop"
                backend = cluster(1 if warm else 0, bool(mirror))
                if warm and len(mirrors) > 1:
                    scenario += "/mirror" if mirror else "/no-mirror"
                probe = Probe(backend)
                try:
                    ids = prompt_ids(backend, args.history)
                    for k in range(args.kills):
                        r = one_kill(backend, bed, ids, args.before, args.after, warm, how, probe)
                        r |= {"rate": rate, "scenario": scenario, "kill": k, "history": len(ids)}
                        results["runs"].append(r)
                        print(json.dumps(r), flush=True)
                        settle(backend, bed, r["victim"], how, warm)
                finally:
                    backend.close()
        tb_rate = "100mbit" if "100mbit" in rates else rates[0]
        for i in range(3):
            tb.set_rate(i, tb_rate)
        for scenario in ("warm-kill", "cold-kill") if histories and args.replay_kills else ():
            warm = scenario == "warm-kill"
            backend = cluster(1 if warm else 0)
            probe = Probe(backend)
            try:
                for h in histories:
                    ids = prompt_ids(backend, h)
                    for k in range(args.replay_kills):
                        r = one_kill(backend, bed, ids, 3, 3, warm, "kill", probe)
                        r |= {"rate": tb_rate, "scenario": scenario, "kill": k, "history": len(ids)}
                        results["replay"].append(r)
                        print(json.dumps(r), flush=True)
                        settle(backend, bed, r["victim"], "kill", warm)
            finally:
                backend.close()

        if args.requests:
            results["load"] = under_faults(cluster(1), bed, args.requests, args.load_kills, tb_rate)

    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    out = Output(Format.MD)
    rows_out = []
    for (rate, scenario), grp in itertools.groupby(results["runs"], key=lambda r: (r["rate"], r["scenario"])):
        everything = list(grp)
        rows = [r for r in everything if "error" not in r] or everything
        rec = [r["recovery_s"] * 1e3 for r in rows]
        med = lambda key, rows=rows: statistics.median(r.get(key, float("nan")) for r in rows)  # noqa: E731
        rows_out.append(
            (
                rate,
                scenario,
                f"{len(everything)} ({len(everything) - len(rows)} failed)",
                f"{pct(rec, 0.5):.0f}",
                f"{pct(rec, 0.95):.0f}",
                f"{max(rec):.0f}",
                f"{med('detect_s') * 1e3:.0f}",
                f"{med('replay_positions'):.0f} in {med('replay_s') * 1e3:.0f}",
                f"{med('step_s') * 1e3:.0f}",
                ",".join(str(r["victim_layers"]) for r in rows),
                f"{sum(r['failovers'] == 1 for r in rows)}/{len(rows)}",
                f"{statistics.median(r['tok_s_before'] for r in rows):.1f}",
                f"{statistics.median(r['tok_s_after'] for r in rows):.1f}",
            )
        )
    header = (
        "rate",
        "scenario",
        "kills",
        "p50 ms",
        "p95 ms",
        "max ms",
        "detect ms (p50)",
        "replay positions in ms (p50)",
        "step ms (p50)",
        "victim stage layers",
        "recovered",
        "tok/s before",
        "after",
    )
    out.table(Table("recovery after a fault mid-stream (fault -> next token)", header, rows_out))
    rows_out = []
    for (scenario, h), grp in itertools.groupby(
        results["replay"], key=lambda r: (r["scenario"], r["history"])
    ):
        rows = list(grp)
        rows_out.append(
            (
                scenario,
                str(h),
                str(statistics.median(r["replayed"] for r in rows)),
                f"{statistics.median(r['recovery_s'] for r in rows) * 1e3:.0f}",
                f"{statistics.median(r['ttft_s'] for r in rows) * 1e3:.0f}",
            )
        )
    header = ("scenario", "history", "replayed tokens", "recovery ms", "prompt prefill ms")
    out.table(Table("replay cost vs history (kill -9, median)", header, rows_out))
    if results["load"]:
        load = results["load"]
        ok = sum(r["ok"] for r in load)
        failed = [r for r in load if r["error"] is not None]
        wrong = len(load) - ok - len(failed)
        secs = [r["seconds"] for r in load if r["fault"] and r["ok"]]
        row = (
            load[0]["rate"],
            str(len(load)),
            str(sum(r["fault"] for r in load)),
            str(ok),
            str(len(failed)),
            str(wrong),
            f"{statistics.median(secs):.2f}" if secs else "-",
            f"{statistics.median(r['seconds'] for r in load if not r['fault']):.2f}",
        )
        header = (
            "rate",
            "requests",
            "kills",
            "identical",
            "failed",
            "other tokens",
            "s (killed)",
            "s (other)",
        )
        out.table(
            Table("requests under faults (kill -9 of a primary mid-request, warm standbys)", header, [row])
        )


if __name__ == "__main__":
    main()
