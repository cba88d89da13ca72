"""`bench report`: run files -> one Markdown report and PNG plots (matplotlib, Agg backend).

Runs of the same kind are drawn on the same axes, labelled by their ``label``, so they compare side by side.
Plots: tok/s vs threads (model runs), latency percentiles vs concurrency (serve runs), the roofline with
achieved decode and prefill points (roofline runs), accuracy with its 95 % interval (accuracy runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _f(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


# ---- model runs -------------------------------------------------------------------------------------------


def _model_md(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for run in runs:
        for r in run["results"]:
            rows.append(
                [
                    run["label"],
                    r.get("model", "?"),
                    r["backend"],
                    r["threads"],
                    r["test"],
                    f"{r['tps_mean']:.2f} ± {r['tps_std']:.2f}",
                ]
            )
    return ["## Model throughput (llama-bench style)", ""] + _table(
        ["run", "model", "backend", "threads", "test", "tok/s"], rows
    )


def plot_model(runs: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind, title in ((axes[0], "pp", "prefill"), (axes[1], "tg", "decode")):
        for run in runs:
            series: dict[tuple[str, str, str], list[tuple[int, float, float]]] = {}
            for r in run["results"]:
                if r["kind"] == kind:
                    series.setdefault((r.get("model", "?"), r["backend"], r["test"]), []).append(
                        (r["threads"], r["tps_mean"], r["tps_std"])
                    )
            for (model, backend, test), pts in sorted(series.items()):
                pts.sort()
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    marker="o",
                    capsize=3,
                    label=f"{run['label']} {model} {backend} {test}",
                )
        threads = sorted({r["threads"] for run in runs for r in run["results"]})
        if threads:
            ax.set_xticks(threads)  # whole thread counts, not 1.2, 1.4, ...
        ax.set_xlabel("threads")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"{title} throughput vs threads")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- serve runs -------------------------------------------------------------------------------------------


def _serve_md(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for run in runs:
        for r in run["results"]:
            srv = r.get("server") or {}

            def p(key: str, q: str, r: dict[str, Any] = r) -> str:
                return _f((r.get(key) or {}).get(q), 0)

            rows.append(
                [
                    run["label"],
                    r["concurrency"],
                    f"{r['completed']}/{r['requests']}",
                    f"{p('ttft_ms', 'p50')} / {p('ttft_ms', 'p90')} / {p('ttft_ms', 'p99')}",
                    f"{p('tpot_ms', 'p50')} / {p('tpot_ms', 'p90')} / {p('tpot_ms', 'p99')}",
                    f"{p('itl_ms', 'p50')} / {p('itl_ms', 'p99')}",
                    f"{p('e2e_ms', 'p50')} / {p('e2e_ms', 'p90')} / {p('e2e_ms', 'p99')}",
                    _f(r["request_throughput"], 2),
                    _f(r["output_throughput"], 1),
                    _f(srv.get("cpu_percent_mean"), 0),
                    _f((srv.get("rss_bytes_max") or 0) / 2**20, 0) if srv else "–",
                    f"{r['usage_completion_tokens']} / {r['text_chunks']}",
                ]
            )
    header = [
        "run",
        "conc.",
        "ok",
        "TTFT p50/90/99 ms",
        "TPOT p50/90/99 ms",
        "ITL p50/99 ms",
        "E2E p50/90/99 ms",
        "req/s",
        "out tok/s",
        "server CPU %",
        "server RSS MiB",
        "usage / counted tokens",
    ]
    return ["## Serving load (concurrency sweep)", ""] + _table(header, rows)


def plot_serve(runs: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    metrics = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "end-to-end latency"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    styles = {"p50": "-", "p90": "--", "p99": ":"}
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for i, run in enumerate(runs):
            res = [r for r in run["results"] if r.get(key)]
            xs = [r["concurrency"] for r in res]
            for q, ls in styles.items():
                ax.plot(
                    xs, [r[key][q] for r in res], ls, marker="o", color=f"C{i}", label=f"{run['label']} {q}"
                )
        levels = sorted({r["concurrency"] for run in runs for r in run["results"]})
        if levels:
            ax.set_xticks(levels)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("ms")
        ax.set_title(f"{title} percentiles vs concurrency")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- roofline runs ----------------------------------------------------------------------------------------


def _roofline_md(runs: list[dict[str, Any]]) -> list[str]:
    out = ["## Roofline", ""]
    rows = []
    for run in runs:
        d = run["device"]
        out.append(
            f"- {run['label']}: bandwidth {d['bandwidth_gbs']:.1f} GB/s (copy {d['copy_gbs']:.1f}, triad "
            f"{d['triad_gbs']:.1f}), fp32 matmul {d['matmul_gflops']:.0f} GFLOP/s, {d['threads']} threads"
        )
        for r in run["results"]:
            dec, pre = r["decode"], r["prefill"]
            rows.append(
                [
                    run["label"],
                    r["model"],
                    f"{dec['bytes_per_token'] / 1e6:.0f}",
                    f"{dec['intensity_flop_per_byte']:.2f}",
                    f"{r['machine_balance_flop_per_byte']:.1f}",
                    _f(dec["bound_tps"]),
                    dec["bound_by"],
                    _f(dec.get("achieved_tps")),
                    _f(100 * dec["achieved_over_bound"], 0) + " %" if "achieved_tps" in dec else "–",
                    _f(pre["bound_tps"], 0),
                    _f(pre.get("achieved_tps"), 0),
                    _f(100 * pre["achieved_over_bound"], 0) + " %" if "achieved_tps" in pre else "–",
                ]
            )
    header = [
        "run",
        "model",
        "decode MB/token",
        "decode FLOP/B",
        "machine FLOP/B",
        "decode bound tok/s",
        "bound by",
        "decode achieved",
        "achieved/bound",
        "prefill bound tok/s",
        "prefill achieved",
        "achieved/bound",
    ]
    return out + [""] + _table(header, rows)


def plot_roofline(runs: list[dict[str, Any]], path: Path) -> Path:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, run in enumerate(runs):
        d = run["device"]
        bw, peak = d["bandwidth_gbs"], d["matmul_gflops"]
        xs = np.logspace(-1, 3, 200)
        ax.plot(
            xs,
            np.minimum(peak, bw * xs),
            color=f"C{i}",
            label=f"{run['label']} roof ({bw:.0f} GB/s, {peak:.0f} GFLOP/s)",
        )
        for j, r in enumerate(run["results"]):
            dec, pre = r["decode"], r["prefill"]
            marker = "os^vD"[j % 5]
            if "achieved_gflops" in dec:
                ax.plot(
                    dec["intensity_flop_per_byte"],
                    dec["achieved_gflops"],
                    marker,
                    color=f"C{i}",
                    ms=8,
                    mfc="none",
                    label=f"{r['model']} decode ({100 * dec['achieved_over_bound']:.0f} % of bound)",
                )
            if "achieved_gflops" in pre:
                # prefill reads the weights once per batch: intensity = FLOPs of the batch / weight bytes
                inten = pre["flops_per_token"] * pre["tokens"] / dec["weight_bytes_per_token"]
                ax.plot(
                    inten,
                    pre["achieved_gflops"],
                    marker,
                    color=f"C{i}",
                    ms=8,
                    label=f"{r['model']} prefill ({100 * pre['achieved_over_bound']:.0f} % of bound)",
                )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title("roofline: achieved decode (hollow) and prefill (filled)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- accuracy and fit runs --------------------------------------------------------------------------------


def _accuracy_md(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for run in runs:
        for r in run["results"]:
            cats = ", ".join(f"{c} {100 * v:.0f} %" for c, v in r["by_category"].items())
            rows.append(
                [
                    run["label"],
                    r.get("model", "?"),
                    r["template"],
                    r["mode"],
                    f"{r['correct']}/{r['n']}",
                    f"{100 * r['accuracy']:.0f} % [{100 * r['ci95'][0]:.0f}, {100 * r['ci95'][1]:.0f}]",
                    cats,
                ]
            )
    return ["## Accuracy (Wilson 95 % interval)", ""] + _table(
        ["run", "model", "template", "mode", "correct", "accuracy [95 % CI]", "by category"], rows
    )


def plot_accuracy(runs: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    several = len(runs) > 1
    bars = [
        (f"{run['label']}\n{r['template']}" if several else r["template"], r)
        for run in runs
        for r in run["results"]
    ]
    models = list(dict.fromkeys(r.get("model", "?") for _, r in bars))  # stable colours, first-seen order
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(bars) + 2), 4.2))
    acc = [100 * r["accuracy"] for _, r in bars]
    err = [
        [a - 100 * r["ci95"][0] for a, (_, r) in zip(acc, bars, strict=True)],
        [100 * r["ci95"][1] - a for a, (_, r) in zip(acc, bars, strict=True)],
    ]
    for m_i, model in enumerate(models):
        idx = [i for i, (_, r) in enumerate(bars) if r.get("model", "?") == model]
        ax.bar(
            idx,
            [acc[i] for i in idx],
            yerr=[[err[0][i] for i in idx], [err[1][i] for i in idx]],
            capsize=4,
            color=f"C{m_i}",
            label=model,
        )
    ax.set_xticks(list(range(len(bars))), [b for b, _ in bars], fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.set_title("accuracy with Wilson 95 % interval")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fit_md(runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for run in runs:
        for r in run["results"]:
            rows.append(
                [
                    run["label"],
                    r["model"],
                    r["quant"],
                    r["device"],
                    r["context"],
                    f"{r['needed_gb']:.2f}",
                    f"{r['usable_gb']:.1f}",
                    "yes" if r["fits"] else "no",
                    f"{r['bandwidth_gbs']:.1f} ({r['bandwidth_source']})",
                    f"{r['projected_decode_tps']:.1f}",
                ]
            )
    header = [
        "run",
        "model",
        "quant",
        "device",
        "context",
        "needs GB",
        "usable GB",
        "fits",
        "bandwidth GB/s",
        "projected decode tok/s",
    ]
    return ["## Fit (memory and projected decode speed)", ""] + _table(header, rows)


# ---- the report -------------------------------------------------------------------------------------------

_SECTIONS = {
    "model": (_model_md, plot_model, "bench_model_threads.png"),
    "serve": (_serve_md, plot_serve, "bench_serve_latency.png"),
    "roofline": (_roofline_md, plot_roofline, "bench_roofline.png"),
    "accuracy": (_accuracy_md, plot_accuracy, "bench_accuracy.png"),
    "fit": (_fit_md, None, None),
}


def build_report(
    runs: list[dict[str, Any]], out_dir: Path, title: str = "edgeinfer benchmark report"
) -> Path:
    """Write ``report.md`` and the plots into ``out_dir``; returns the Markdown path."""
    if not runs:
        raise ValueError("no runs to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", "Runs:", ""]
    for run in runs:
        h = run.get("host", {})
        load = f"{h.get('loadavg_1m', float('nan')):.2f}"
        if "loadavg_1m_end" in h:
            load += f" → {h['loadavg_1m_end']:.2f}"
        lines.append(
            f"- `{run.get('path', run['label'])}` ({run['kind']}, {run.get('created', '?')}, "
            f"{h.get('cpu', '?')}, {h.get('logical_cpus', '?')} CPUs, load {load})"
        )
    lines.append("")
    for kind, (md, plot, png) in _SECTIONS.items():
        group = [r for r in runs if r["kind"] == kind]
        if not group:
            continue
        lines += md(group)
        if plot is not None:
            target = plot(group, out_dir / png)
            lines += [f"![{kind}]({target.name})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
