"""Run files: every benchmark writes one JSON document with its kind, the host and its results.

In memory a run is a ``Run`` whose ``results`` are the kind's typed result (``ModelResult``, ``ServeLevel``,
``AccuracyResult``, ``RooflineResult``, ``FitResult``); on disk it is the same JSON as always, so files
written by earlier runs load unchanged. ``Progress`` is how a kind reports what it is doing to whoever runs
it (the CLI draws a bar; tests pass nothing).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

KINDS = ("model", "serve", "accuracy", "roofline", "fit")
VERSION = 1

T = TypeVar("T")


def from_fields(cls: type[T], d: dict[str, Any], **nested: Callable[[Any], Any]) -> T:
    """A dataclass from a JSON object: unknown keys are ignored, ``nested`` converts the named fields."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kw = {k: (nested[k](v) if k in nested and v is not None else v) for k, v in d.items() if k in names}
    return cls(**kw)


@dataclass
class HostInfo:
    hostname: str = "?"
    machine: str = "?"
    cpu: str = "?"
    logical_cpus: int | None = None
    physical_cpus: int | None = None
    mem_total_bytes: int | None = None
    loadavg_1m: float = float("nan")
    python: str = "?"
    loadavg_1m_end: float | None = None  # with loadavg_1m: did other work share the CPU during the run?

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["loadavg_1m_end"] is None:
            del d["loadavg_1m_end"]
        return d


def host_info() -> HostInfo:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return HostInfo(
        hostname=platform.node(),
        machine=platform.machine(),
        cpu=cpu,
        logical_cpus=os.cpu_count(),
        physical_cpus=psutil.cpu_count(logical=False),
        mem_total_bytes=psutil.virtual_memory().total,
        loadavg_1m=os.getloadavg()[0],
        python=platform.python_version(),
    )


@dataclass
class Run:
    """One benchmark run: what was asked (``config``), where (``host``) and the typed ``results``."""

    kind: str
    label: str
    config: dict[str, Any]
    host: HostInfo
    results: list[Any] = field(default_factory=list)
    created: str = ""
    version: int = VERSION
    device: Any = None  # roofline runs: the measured ``DeviceMeasure``
    path: str | None = None  # the file it was loaded from

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": self.kind,
            "version": self.version,
            "label": self.label,
            "created": self.created,
            "host": self.host.to_dict(),
            "config": self.config,
            "results": [r.to_dict() for r in self.results],
        }
        if self.device is not None:
            doc["device"] = asdict(self.device)
        return doc


def new_run(kind: str, config: dict[str, Any], label: str | None = None) -> Run:
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(KINDS)}")
    return Run(kind, label or kind, config, host_info(), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _result_types() -> dict[str, Any]:
    from edgeinfer.bench.accuracy import AccuracyResult
    from edgeinfer.bench.fit import FitResult
    from edgeinfer.bench.model import ModelResult
    from edgeinfer.bench.roofline import RooflineResult
    from edgeinfer.bench.serve import ServeLevel

    return {
        "model": ModelResult,
        "serve": ServeLevel,
        "accuracy": AccuracyResult,
        "roofline": RooflineResult,
        "fit": FitResult,
    }


def save(run: Run, path: str | Path) -> Path:
    """Write the run's JSON (noting the load average at the end of the run)."""
    run.host.loadavg_1m_end = os.getloadavg()[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.to_dict(), indent=2) + "\n")
    return path


def load(path: str | Path) -> Run:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON run file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("kind") not in KINDS or "results" not in doc:
        raise ValueError(f"{path}: not an edgeinfer bench run (needs 'kind' in {KINDS} and 'results')")
    kind = doc["kind"]
    try:
        results = [_result_types()[kind].from_dict(r) for r in doc["results"]]
        device = None
        if doc.get("device"):
            from edgeinfer.bench.roofline import DeviceMeasure

            device = from_fields(DeviceMeasure, doc["device"])
        return Run(
            kind=kind,
            label=doc.get("label") or path.stem,
            config=doc.get("config") or {},
            host=from_fields(HostInfo, doc.get("host") or {}),
            results=results,
            created=doc.get("created", "?"),
            version=doc.get("version", VERSION),
            device=device,
            path=str(path),
        )
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{path}: a {kind} run with unreadable results ({exc!r})") from exc


def default_path(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def load_warning() -> str | None:
    """A note when other work shares the CPU (speed figures will be low), else None."""
    load = os.getloadavg()[0]
    if load > 1.5:
        return f"load average is {load:.2f}: other work shares the CPU; figures will be low"
    return None


class Progress:
    """What a running benchmark reports. The default does nothing; the CLI draws a progress bar."""

    def start(self, description: str, total: int | None) -> None:
        """A new phase of ``total`` steps (``None``: one long step, e.g. a measurement)."""

    def step(self, description: str | None = None, advance: int = 1) -> None:
        """Progress within the phase (``description`` None keeps the current one)."""

    def note(self, message: str) -> None:
        """Something the user should know (a failed request, a loaded machine); not an error."""
