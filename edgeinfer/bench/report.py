"""`bench report`: run files -> one Markdown report and PNG plots (matplotlib, Agg backend).

Runs of the same kind are drawn on the same axes, labelled by their ``label``, so they compare side by side.
Plots: tok/s vs threads (model runs), latency percentiles vs concurrency (serve runs), the roofline with
achieved decode and prefill points (roofline runs), accuracy with its 95 % interval (accuracy runs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeinfer.bench.runs import Run
from edgeinfer.bench.table import Table, merge


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- model runs -------------------------------------------------------------------------------------------


def plot_model(runs: list[Run], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind, title in ((axes[0], "pp", "prefill"), (axes[1], "tg", "decode")):
        for run in runs:
            series: dict[tuple[str, str, str], list[tuple[int, float, float]]] = {}
            for r in run.results:
                if r.kind == kind:
                    series.setdefault((r.model, r.backend, r.test), []).append(
                        (r.threads, r.tps_mean, r.tps_std)
                    )
            for (model, backend, test), pts in sorted(series.items()):
                pts.sort()
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    marker="o",
                    capsize=3,
                    label=f"{run.label} {model} {backend} {test}",
                )
        threads = sorted({r.threads for run in runs for r in run.results})
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


def plot_serve(runs: list[Run], path: Path) -> Path:
    plt = _plt()
    metrics = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "end-to-end latency"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    styles = {"p50": "-", "p90": "--", "p99": ":"}
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for i, run in enumerate(runs):
            res = [(r.concurrency, getattr(r, key)) for r in run.results if getattr(r, key) is not None]
            xs = [c for c, _ in res]
            for q, ls in styles.items():
                ys = [getattr(p, q) for _, p in res]
                ax.plot(xs, ys, ls, marker="o", color=f"C{i}", label=f"{run.label} {q}")
        levels = sorted({r.concurrency for run in runs for r in run.results})
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


def plot_roofline(runs: list[Run], path: Path) -> Path:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, run in enumerate(runs):
        if run.device is None:
            continue
        bw, peak = run.device.bandwidth_gbs, run.device.matmul_gflops
        xs = np.logspace(-1, 3, 200)
        ax.plot(
            xs,
            np.minimum(peak, bw * xs),
            color=f"C{i}",
            label=f"{run.label} roof ({bw:.0f} GB/s, {peak:.0f} GFLOP/s)",
        )
        for j, r in enumerate(run.results):
            dec, pre = r.decode, r.prefill
            marker = "os^vD"[j % 5]
            if dec.achieved_gflops is not None and dec.achieved_over_bound is not None:
                ax.plot(
                    dec.intensity_flop_per_byte,
                    dec.achieved_gflops,
                    marker,
                    color=f"C{i}",
                    ms=8,
                    mfc="none",
                    label=f"{r.model} decode ({100 * dec.achieved_over_bound:.0f} % of bound)",
                )
            if pre.achieved_gflops is not None and pre.achieved_over_bound is not None:
                # prefill reads the weights once per batch: intensity = FLOPs of the batch / weight bytes
                inten = pre.flops_per_token * pre.tokens / dec.weight_bytes_per_token
                ax.plot(
                    inten,
                    pre.achieved_gflops,
                    marker,
                    color=f"C{i}",
                    ms=8,
                    label=f"{r.model} prefill ({100 * pre.achieved_over_bound:.0f} % of bound)",
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


def plot_accuracy(runs: list[Run], path: Path) -> Path:
    plt = _plt()
    several = len(runs) > 1
    bars = [(f"{run.label}\n{r.template}" if several else r.template, r) for run in runs for r in run.results]
    models = list(dict.fromkeys(r.model for _, r in bars))  # stable colours, first-seen order
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(bars) + 2), 4.2))
    acc = [100 * r.accuracy for _, r in bars]
    err = [
        [a - 100 * r.ci95[0] for a, (_, r) in zip(acc, bars, strict=True)],
        [100 * r.ci95[1] - a for a, (_, r) in zip(acc, bars, strict=True)],
    ]
    for m_i, model in enumerate(models):
        idx = [i for i, (_, r) in enumerate(bars) if r.model == model]
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


# ---- the report -------------------------------------------------------------------------------------------


def _sections() -> dict[str, tuple[Callable[[Run], Table], Callable[[list[Run], Path], Path] | None, str]]:
    from edgeinfer.bench import accuracy, fit, model, roofline, serve

    return {
        "model": (model.rows, plot_model, "bench_model_threads.png"),
        "serve": (serve.rows, plot_serve, "bench_serve_latency.png"),
        "roofline": (roofline.rows, plot_roofline, "bench_roofline.png"),
        "accuracy": (accuracy.rows, plot_accuracy, "bench_accuracy.png"),
        "fit": (fit.rows, None, ""),
    }


def build_report(runs: list[Run], out_dir: Path, title: str = "edgeinfer benchmark report") -> Path:
    """Write ``report.md`` and the plots into ``out_dir``; returns the Markdown path. Each kind's table is
    the one its command prints, with a ``run`` column in front."""
    if not runs:
        raise ValueError("no runs to report")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", "Runs:", ""]
    for run in runs:
        h = run.host
        load = f"{h.loadavg_1m:.2f}"
        if h.loadavg_1m_end is not None:
            load += f" → {h.loadavg_1m_end:.2f}"
        lines.append(
            f"- `{run.path or run.label}` ({run.kind}, {run.created or '?'}, "
            f"{h.cpu}, {h.logical_cpus or '?'} CPUs, load {load})"
        )
    lines.append("")
    for kind, (rows, plot, png) in _sections().items():
        group = [r for r in runs if r.kind == kind]
        if not group:
            continue
        lines += merge([rows(r).with_run_column(r.label) for r in group]).markdown("##")
        if plot is not None:
            target = plot(group, out_dir / png)
            lines += [f"![{kind}]({target.name})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
