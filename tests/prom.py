"""Reading a server's ``/metrics`` in tests, with Prometheus' own text parser (one home for the scrape)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> dict[str, float]:
    """Every sample of ``url``/metrics keyed as it is written: ``name{label="value",...}`` (or ``name``)."""
    r = httpx.get(url + "/metrics", headers=headers, timeout=timeout)
    r.raise_for_status()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
            values[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return values


def metric(url: str, name: str, model: str | None = None, **kw) -> float:
    """One sample's value (0 when the server has not exported it yet), by name and ``model_name`` label."""
    key = f'{name}{{model_name="{model}"}}' if model is not None else name
    return scrape(url, **kw).get(key, 0.0)
