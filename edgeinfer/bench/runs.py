"""Run files: every benchmark writes one JSON document with its kind, the host and its results."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

KINDS = ("model", "serve", "accuracy", "roofline", "fit")
VERSION = 1


def host_info() -> dict[str, Any]:
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
    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "mem_total_bytes": psutil.virtual_memory().total,
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
    }


def new_run(kind: str, config: dict[str, Any], label: str | None = None) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(KINDS)}")
    return {
        "kind": kind,
        "version": VERSION,
        "label": label or kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host_info(),
        "config": config,
        "results": [],
    }


def save(run: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run, indent=2) + "\n")
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON run file ({exc})") from exc
    if not isinstance(run, dict) or run.get("kind") not in KINDS or "results" not in run:
        raise ValueError(f"{path}: not an edgeinfer bench run (needs 'kind' in {KINDS} and 'results')")
    run.setdefault("label", path.stem)
    run["path"] = str(path)
    return run


def default_path(kind: str) -> Path:
    return Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
