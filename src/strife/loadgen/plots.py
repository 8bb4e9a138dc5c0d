"""PNG plots of a run, with matplotlib's object API (no pyplot, no global state).

Four pictures: throughput over time, latency percentiles over time, the
latency CDF, and how requests spread across gateways (and banks). They are
drawn from `results.json`'s figures plus the raw latencies, so a plot never
shows a number the JSON does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from strife.loadgen._model import Payment

DPI = 110
SIZE = (8.0, 4.0)
# Plain numbers on log axes ("2000", not "2x10^3"): people read milliseconds.
PLAIN = FuncFormatter(lambda value, _pos: f"{value:g}")
# Minor ticks: only 2 and 5 of each decade, or the axis turns into a smear.
SPARSE = FuncFormatter(lambda value, _pos: f"{value:g}" if f"{value:g}"[0] in "25" else "")


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def throughput(series: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    t = [row["t_s"] for row in series]
    ax.plot(t, [row["answered_per_s"] for row in series], label="answered", drawstyle="steps-pre")
    ax.plot(
        t,
        [row["committed_per_s"] for row in series],
        label="committed",
        drawstyle="steps-pre",
        linestyle="--",
    )
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("payments / s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"throughput: {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def latency_over_time(series: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    t = [row["t_s"] for row in series]
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("max_ms", "max")):
        values = [row[key] if row[key] is not None else float("nan") for row in series]
        ax.plot(t, values, label=label, marker=".", linewidth=1)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(SPARSE)
    ax.set_title(f"latency percentiles over time: {title}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def latency_cdf(payments: Sequence[Payment], path: Path, title: str) -> Path:
    fig = Figure(figsize=SIZE)
    ax = fig.add_subplot()
    ordered = sorted(p.latency_ms for p in payments if p.answered and not p.resolved_late)
    if ordered:
        n = len(ordered)
        ax.plot(ordered, [(i + 1) / n for i in range(n)], drawstyle="steps-post")
        for fraction in (0.5, 0.9, 0.99):
            value = ordered[min(n - 1, max(0, int(fraction * n + 0.999999) - 1))]
            ax.axvline(value, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                f"p{round(fraction * 100)} {value:.1f} ms",
                (value, fraction),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(PLAIN)
        ax.xaxis.set_minor_formatter(SPARSE)
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of payments")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"latency CDF: {title}")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def distribution(results: dict[str, Any], path: Path, title: str) -> Path:
    fig = Figure(figsize=(SIZE[0], SIZE[1] * 1.1))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    gateways = results["gateways"]
    names = list(gateways)
    left.bar(names, [gateways[n]["answers"] for n in names], label="answers")
    left.bar(
        names,
        [gateways[n]["sends"] - gateways[n]["answers"] for n in names],
        bottom=[gateways[n]["answers"] for n in names],
        label="failed sends",
    )
    left.set_title("requests per gateway")
    left.set_ylabel("ProcessPayment calls")
    left.legend(fontsize=8)
    banks = results["banks"]
    bank_names = list(banks)
    x = range(len(bank_names))
    right.bar(
        [i - 0.2 for i in x],
        [banks[b]["as_payer"] for b in bank_names],
        width=0.4,
        label="payer's bank",
    )
    right.bar(
        [i + 0.2 for i in x],
        [banks[b]["as_payee"] for b in bank_names],
        width=0.4,
        label="payee's bank",
    )
    right.set_xticks(list(x), bank_names, rotation=45 if len(bank_names) > 6 else 0, fontsize=8)
    right.set_title("payments per bank")
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def write_all(
    out_dir: Path, payments: Sequence[Payment], results: dict[str, Any], title: str
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    series = results["timeseries"]
    counted = [p for p in payments if p.started_s >= results["config"]["warmup_s"]]
    return [
        throughput(series, out_dir / "throughput.png", title),
        latency_over_time(series, out_dir / "latency_over_time.png", title),
        latency_cdf(counted, out_dir / "latency_cdf.png", title),
        distribution(results, out_dir / "distribution.png", title),
    ]
