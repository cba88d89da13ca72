"""Quality inspection sampling, measured: false positives, detection of substitutes, overhead, SLO verdicts.

    .venv/bin/python benchmarks/bench_inspect.py --json docs/bench/inspect.json --plots docs/img

Services are real servers on loopback: the honest ones are `edgeinfer serve` (llama.cpp at 1 and 2 threads,
the shard engine) and a 2-node loopback cluster; the substitutes (``edgeinfer.inspect.substitutes``) are
served under the promised model's name by this script (``serve-substitute``, a bench/test-only server). A
cheating service is ``CheatingTransport``: an httpx transport in front of the honest server that sends a
fraction ``f`` of requests to a substitute, or delays a fraction of requests -- the inspector under test sees
one service. The tests (tests/inspect/) import these helpers from this file.

Measured: per-ID detection of every full substitute (first check), false positives of honest services over
many ID checks, requests to a "substituted" verdict at f = 10 % and 1 % for several inspection rates,
the SLA verdicts with 1 % slow requests at SLA 99.9 %, and the overhead at the default rate.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from edgeinfer.inspect.ids import CheckResult, IdSet, bundled_ids_path
from edgeinfer.inspect.inspector import Inspector, InspectorConfig, Slo
from edgeinfer.inspect.substitutes import Substitute
from edgeinfer.process import HttpProcess, ServerProcess, free_port, stop_process

REFERENCE = "qwen2.5-coder-0.5b-instruct"
SUBSTITUTES = ("quant:Q8_0", "quant:Q2_K", "exit:18", "model:gemma")


# ---- services ---------------------------------------------------------------------------------------------
def serve_substitute(spec: str, reference: str, host: str, port: int, threads: int | None) -> None:
    """Serve substitute ``spec`` under ``reference``'s served name (what a cheating provider would do)."""
    import uvicorn

    from edgeinfer.api.app import create_app
    from edgeinfer.api.metrics import Metrics
    from edgeinfer.api.worker import ModelWorker
    from edgeinfer.inspect.substitutes import open_substitute
    from edgeinfer.models.registry import served_name

    name = served_name(reference)
    sub = Substitute.parse(spec)
    metrics = Metrics()
    worker = ModelWorker(
        name, lambda: open_substitute(sub, reference, threads=threads, n_ctx=2048, name=name), metrics
    )
    uvicorn.run(create_app([worker], metrics), host=host, port=port, log_level="warning")


class SubstituteServer(HttpProcess):
    """A substitute served over HTTP under the reference model's name, as a child process."""

    def __init__(self, spec: str, reference: str = REFERENCE, threads: int = 1, log: Path | None = None):
        port = free_port()
        argv = [sys.executable, __file__, "serve-substitute", spec, "--reference", reference]
        argv += ["--port", str(port), "--threads", str(threads)]
        super().__init__(argv, port=port, log=log, what=f"substitute {spec}")

    def __enter__(self) -> SubstituteServer:
        self.start(timeout=600)  # the first use quantizes (seconds) and loads under a shared machine's load
        return self


@contextmanager
def loopback_cluster(model: str = REFERENCE, log_dir: Path | None = None) -> Iterator[ServerProcess]:
    """Two `edgeinfer node` processes on loopback and a gateway serving ``model`` split in half."""
    from edgeinfer.cluster.client import NodeClient
    from edgeinfer.engine.shard import layer_count
    from edgeinfer.models.registry import resolve

    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="inspect-cluster-"))
    n_layers = layer_count(resolve(model, progress=False)[1])
    ports = [free_port(), free_port()]
    procs: list[subprocess.Popen] = []
    gateway: ServerProcess | None = None
    try:
        for i, port in enumerate(ports):
            argv = [sys.executable, "-m", "edgeinfer.cluster.cli", "node", "--listen", f"127.0.0.1:{port}"]
            out = (log_dir / f"n{i}.log").open("wb")
            procs.append(subprocess.Popen([*argv, "--name", f"n{i}", "-t", "1"], stdout=out, stderr=out))
        for i, port in enumerate(ports):
            deadline = time.monotonic() + 120
            while True:
                client = NodeClient(f"127.0.0.1:{port}", f"n{i}", timeout=5)
                try:
                    client.capabilities()
                    break
                except Exception:
                    if time.monotonic() > deadline or procs[i].poll() is not None:
                        raise RuntimeError(f"node n{i} did not answer; see {log_dir}") from None
                    time.sleep(0.5)
                finally:
                    client.close()
        half = n_layers // 2
        stages = [{"node": "n0", "layers": [0, half]}, {"node": "n1", "layers": [half, n_layers]}]
        doc = {
            "model": model,
            "ctx_size": 2048,
            # f32 hidden states on the wire: the f16 default moves chosen-token logprobs by up to 0.063 nats,
            # beyond the tolerance of IDs calibrated on the in-process shard engine (docs/inspect.md, limits)
            "wire_dtype": "f32",
            "nodes": [{"name": f"n{i}", "address": f"127.0.0.1:{p}"} for i, p in enumerate(ports)],
            "planner": {"stages": stages},
        }
        cfg = log_dir / "cluster.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        gateway = ServerProcess(["--cluster", str(cfg)], log=log_dir / "gateway.log")
        gateway.start(timeout=300)
        yield gateway
    finally:
        if gateway is not None:
            gateway.stop()
        for proc in procs:
            stop_process(proc)


@contextmanager
def fast_server(ttft: float = 0.01) -> Iterator[str]:
    """The bench suite's OpenAI-style server (``edgeinfer.bench.fake_server``) with a fixed first-token
    delay: a real HTTP service fast enough for the hundreds of requests an SLA verdict takes."""
    port = free_port()
    argv = [sys.executable, "-m", "edgeinfer.bench.fake_server", "--port", str(port)]
    srv = HttpProcess([*argv, "--ttft-delay", str(ttft), "--token-delay", "0"], port=port, what="fast server")
    srv.start(timeout=60)
    try:
        for _ in range(20):  # warm up (imports, connections) before anything is timed
            httpx.post(srv.url + "/v1/chat/completions", json={"messages": [], "max_tokens": 1}, timeout=30)
        yield srv.url
    finally:
        srv.stop()


class CheatingTransport(httpx.BaseTransport):
    """A dishonest service as the client sees it: each generation request goes to ``substitute_url`` with
    probability ``fraction`` (else to ``honest_url``); a fraction ``slow`` of them (one at a random place
    in every ``1 / slow``) is delayed by ``delay_s``. Bench/test only: a real provider would do this behind
    its own address."""

    def __init__(
        self,
        honest_url: str,
        substitute_url: str | None = None,
        fraction: float = 0.0,
        slow: float = 0.0,
        delay_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.honest = httpx.URL(honest_url)
        self.substitute = httpx.URL(substitute_url) if substitute_url else None
        self.fraction, self.slow, self.delay_s = fraction, slow, delay_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.inner = httpx.HTTPTransport()
        self.routed = {"honest": 0, "substitute": 0, "delayed": 0}
        self.count = self.delay_at = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            cheat = self.substitute is not None and self.rng.random() < self.fraction
            delay = self._delay_due()
            self.routed["substitute" if cheat else "honest"] += 1
            self.routed["delayed"] += delay
        target = self.substitute if cheat else self.honest
        assert target is not None
        request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
        request.headers["host"] = f"{target.host}:{target.port}"
        if delay:
            time.sleep(self.delay_s)
        return self.inner.handle_request(request)

    def _delay_due(self) -> bool:
        """Exactly one delayed request in every block of ``1 / slow`` (at a random place in the block)."""
        if self.slow <= 0:
            return False
        self.count += 1
        block = round(1 / self.slow)
        if (self.count - 1) % block == 0:
            self.delay_at = self.count + self.rng.randrange(block)
        return self.count == self.delay_at

    def close(self) -> None:
        self.inner.close()


class IdRouter(httpx.BaseTransport):
    """Test/bench only: the inspector's ID requests go to ``ids`` (a transport: the real model, or a
    ``CheatingTransport``), its real traffic to ``real_url`` (e.g. ``fast_server``). Where a measurement is
    about the inspector's schedule and checks, hundreds of real requests then cost milliseconds each while
    every ID is still answered by the service under inspection."""

    def __init__(self, real_url: str, ids: httpx.BaseTransport) -> None:
        self.real = httpx.URL(real_url)
        self.ids = ids
        self.inner = httpx.HTTPTransport()
        self.counts = {"real": 0, "id": 0}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if "edgeinfer_id" in request.extensions:  # set by the inspector on the requests it makes
            self.counts["id"] += 1
            return self.ids.handle_request(request)
        self.counts["real"] += 1
        request.url = request.url.copy_with(scheme=self.real.scheme, host=self.real.host, port=self.real.port)
        request.headers["host"] = f"{self.real.host}:{self.real.port}"
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()
        self.ids.close()


# ---- measurements -----------------------------------------------------------------------------------------
def probe_many(
    url: str,
    ids: IdSet,
    n: int,
    concurrency: int = 4,
    like: dict[str, Any] | None = None,
    seed: int = 0,
    start: int = 0,
) -> list[CheckResult | None]:
    """``n`` ID checks against ``url`` (round-robin over the IDs from the ``start``-th, ``concurrency`` at a
    time)."""
    inspector = Inspector(ids, InspectorConfig(seed=seed))  # logprobs as `like` asks
    endpoint = url.rstrip("/") + "/v1/chat/completions"
    like = like or {"model": ids.model, "logprobs": True, "top_logprobs": 1}

    def one(i: int) -> CheckResult | None:
        chosen = ids.ids[(start + i) % len(ids.ids)]
        return inspector._run_id(inspector.build_id_request(chosen, endpoint, {}, like))

    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    inspector.close()
    return results


def drive(
    inspector: Inspector,
    base_url: str,
    n: int,
    prompts: list[str],
    max_tokens: int = 4,
    concurrency: int = 1,
    logprobs: bool = True,
    stop_when_decided: str | None = None,
) -> int:
    """Send ``n`` ordinary chat requests through ``inspector`` with the official client; returns how many
    were sent (fewer when ``stop_when_decided`` is "model" or "sla" and that test has decided)."""
    import openai

    client = openai.OpenAI(
        base_url=base_url.rstrip("/") + "/v1",
        api_key="none",
        max_retries=0,
        timeout=300,
        http_client=httpx.Client(transport=inspector, timeout=300),
    )
    sent = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal sent
        if stop_when_decided:
            rep = inspector.model_test if stop_when_decided == "model" else inspector.sla_test
            if rep.verdict.decided:
                return
        kwargs: dict[str, Any] = dict(
            model=inspector.ids.model,
            messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
            max_tokens=max_tokens,
            temperature=0.7,
        )
        if logprobs:
            kwargs |= dict(logprobs=True, top_logprobs=1)
        client.chat.completions.create(**kwargs)
        with lock:
            sent += 1

    if concurrency == 1:
        for i in range(n):
            one(i)
            if (
                stop_when_decided
                and (
                    inspector.model_test if stop_when_decided == "model" else inspector.sla_test
                ).verdict.decided
            ):
                break
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(n)))
    inspector.flush(timeout=600)
    return sent


def workload(ids: IdSet) -> list[str]:
    from edgeinfer.inspect.prompts import prompt_pool

    used = {i.prompt for i in ids.ids}
    return [p for p in prompt_pool() if p not in used]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("serve-substitute", help="serve a substitute under the reference's name (bench/test)")
    s.add_argument("spec")
    s.add_argument("--reference", default=REFERENCE)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ids", type=Path, default=bundled_ids_path(REFERENCE))
    ap.add_argument("--honest-checks", type=int, default=400, help="ID checks per honest service")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plots", type=Path, default=None)
    ap.add_argument("--no-cluster", action="store_true")
    ap.add_argument("--skip-traffic", action="store_true", help="no overhead / partial / SLA runs")
    ap.add_argument("--only", default=None, help="comma-separated stages: honest,cluster,sla,substitutes")
    args = ap.parse_args(argv)
    if args.cmd == "serve-substitute":
        serve_substitute(args.spec, args.reference, args.host, args.port, args.threads)
        return
    run_bench(args)


def run_bench(args: argparse.Namespace) -> None:
    ids = IdSet.load(args.ids)
    logs = Path(tempfile.mkdtemp(prefix="bench-inspect-"))
    results: dict[str, Any] = {
        "ids": len(ids.ids),
        "k": ids.ids[0].max_tokens,
        "honest": {},
        "substitutes": {},
    }
    prompts = workload(ids)

    def save() -> None:  # after every stage: a long run interrupted still leaves its numbers
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")

    # false positives: honest services, many ID checks each
    honest = {
        "llamacpp-1t": ["-m", REFERENCE, "-t", "1", "--parallel", "1"],
        "llamacpp-2t": ["-m", REFERENCE, "-t", "2", "--parallel", "1"],
        "llamacpp-batched": ["-m", REFERENCE, "-t", "1"],
        "shard": ["-m", REFERENCE, "--backend", "shard", "-t", "1"],
    }
    stages = set((args.only or "honest,cluster,sla,substitutes").split(","))
    for name, srv_args in honest.items() if "honest" in stages else ():
        with ServerProcess(srv_args, log=logs / f"{name}.log") as srv:
            t0 = time.perf_counter()
            res = probe_many(srv.url, ids, args.honest_checks, concurrency=4 if "batched" in name else 1)
            results["honest"][name] = _tally(res, time.perf_counter() - t0)
            print(name, results["honest"][name], flush=True)
            save()
            if name == "llamacpp-batched" and not args.skip_traffic:
                results["overhead"] = _overhead(srv.url, ids, prompts)
                print("overhead", results["overhead"], flush=True)
                save()
                results["partial"] = _partial(srv.url, ids, prompts, logs)
                save()
    if "cluster" in stages and not args.no_cluster:
        with loopback_cluster(log_dir=logs) as gw:
            t0 = time.perf_counter()
            res = probe_many(gw.url, ids, max(50, args.honest_checks // 4))
            results["honest"]["cluster-2-nodes"] = _tally(res, time.perf_counter() - t0)
            print("cluster", results["honest"]["cluster-2-nodes"], flush=True)

    # full substitutes: every ID once, logprobs on and off
    if "sla" in stages:
        results["sla"] = _sla(ids)
        save()
    for spec in SUBSTITUTES if "substitutes" in stages else ():
        with SubstituteServer(spec, log=logs / f"sub-{spec.replace(':', '-')}.log") as srv:
            with_lp = probe_many(srv.url, ids, len(ids.ids))
            without = probe_many(srv.url, ids, len(ids.ids), like={"model": ids.model})
            results["substitutes"][spec] = {
                "per_id_detection_logprobs": _detected(with_lp),
                "per_id_detection_text_only": _detected(without),
            }
            print(spec, results["substitutes"][spec], flush=True)
            save()

    save()
    if args.plots:
        from edgeinfer.inspect.report import plot_detection

        measured = {
            "detection": [
                {"rate": p["rate"], "fraction": p["fraction"], "probability": p["detected"]}
                for p in results.get("partial", ())
            ],
            "requests": [
                {"rate": p["rate"], "fraction": p["fraction"], "requests": p["requests_mean"]}
                for p in results.get("partial", ())
                if p["requests_mean"] is not None
            ],
        }
        for p in plot_detection(args.plots, n_requests=2000, measured=measured):
            print("plot", p)


def _tally(res: list[CheckResult | None], seconds: float) -> dict[str, Any]:
    checked = [r for r in res if r is not None]
    return {
        "checks": len(checked),
        "false_positives": sum(not r.passed for r in checked),
        "unanswered": len(res) - len(checked),
        "max_logprob_gap": max((r.max_logprob_gap or 0.0 for r in checked), default=None),
        "seconds": round(seconds, 1),
        "failures": [r.reason for r in checked if not r.passed][:3],
    }


def _detected(res: list[CheckResult | None]) -> float:
    checked = [r for r in res if r is not None]
    return sum(not r.passed for r in checked) / len(checked) if checked else float("nan")


def _overhead(url: str, ids: IdSet, prompts: list[str], n: int = 500) -> dict[str, Any]:
    inspector = Inspector(ids, InspectorConfig(seed=1))
    sent = drive(inspector, url, n, prompts, max_tokens=8, concurrency=4)
    rep = inspector.report()
    inspector.close()
    return {
        "rate": inspector.config.rate,
        "real_requests": sent,
        "id_requests": rep.id_requests,
        "overhead_requests": rep.overhead_requests,
        "overhead_tokens": rep.overhead_tokens,
        "sla": rep.sla.to_dict(),
    }


def _partial(url: str, ids: IdSet, prompts: list[str], logs: Path) -> list[dict[str, Any]]:
    out = []
    with SubstituteServer("model:gemma", log=logs / "partial-gemma.log") as sub:
        for fraction, rate, trials, budget in ((0.1, 0.1, 5, 400), (0.1, 0.05, 3, 600), (0.01, 0.5, 3, 1500)):
            needed = []
            for t in range(trials):
                cheat = CheatingTransport(url, sub.url, fraction=fraction, seed=100 + t)
                inspector = Inspector(ids, InspectorConfig(rate=rate, seed=t), transport=cheat)
                drive(inspector, url, budget, prompts, max_tokens=1, stop_when_decided="model")
                rep = inspector.report()
                inspector.close()
                needed.append(
                    rep.real_requests_to_model_verdict if rep.model.decision == "substituted" else None
                )
            found = [x for x in needed if x is not None]
            point = {
                "fraction": fraction,
                "rate": rate,
                "trials": trials,
                "budget": budget,
                "detected": len(found) / trials,
                "requests": needed,
                "requests_mean": sum(found) / len(found) if found else None,
            }
            print("partial", point, flush=True)
            out.append(point)
    return out


def _sla(ids: IdSet) -> dict[str, Any]:
    slo = Slo(e2e_s=2.0)
    out: dict[str, Any] = {
        "slo_e2e_s": slo.e2e_s,
        "server": "edgeinfer.bench.fake_server, 10 ms to first token",
    }
    with fast_server() as url:
        for level, alpha in ((0.999, 1e-2), (0.999, 1e-3)):
            for label, slow in (("honest", 0.0), ("violating_1pct", 0.01)):
                runs = []
                for seed in range(3):
                    cheat = CheatingTransport(url, slow=slow, delay_s=2.5, seed=seed)
                    config = InspectorConfig(rate=0.0, slo=slo, sla_level=level, alpha=alpha, beta=alpha)
                    inspector = Inspector(ids, config, transport=cheat)
                    drive(
                        inspector,
                        url,
                        5000,
                        ["Say hi."],
                        max_tokens=2,
                        concurrency=4,
                        stop_when_decided="sla",
                    )
                    runs.append(inspector.report().sla.to_dict())
                    inspector.close()
                out[f"{label}_alpha{alpha:g}"] = runs
                print("sla", label, alpha, [(r["decision"], r["n"]) for r in runs], flush=True)
    return out


if __name__ == "__main__":
    main()
