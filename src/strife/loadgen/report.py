"""`results.json` and the summary table printed at the end of a run.

The JSON is the record (benchmarks read it back); the table is for a person
and shows the same figures. Latencies are milliseconds, rates per second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from strife.loadgen import stats
from strife.loadgen._model import Payment
from strife.loadgen.audit import AuditReport
from strife.loadgen.config import LoadConfig
from strife.loadgen.engine import Counters

RESULTS_FILE = "results.json"


def build(
    *,
    config: LoadConfig,
    payments: list[Payment],
    counters: Counters,
    audit: AuditReport,
    processes: dict[str, dict[str, Any]],
    machine: dict[str, Any],
    target: dict[str, Any],
    timings: dict[str, float],
    gateways: list[str],
) -> dict[str, Any]:
    counted = stats.measured(payments, config.warmup_s)
    latency = stats.LatencySummary.of(p.latency_ms for p in counted if p.answered)
    per_gateway = stats.by_gateway(counted)
    names = sorted(set(gateways) | set(counters.sends_by_gateway) | set(per_gateway))
    return {
        "config": config.as_dict(),
        "target": target,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "payments": {
            "issued": len(payments),
            "measured": len(counted),
            "answered": sum(1 for p in payments if p.answered),
            "resolved_late": sum(1 for p in payments if p.resolved_late and p.answered),
            "replayed": sum(1 for p in payments if p.replayed),
            "retried": sum(1 for p in payments if p.attempts > 1),
        },
        "throughput": stats.throughput(counted, config.warmup_s).as_dict(),
        "latency_ms": latency.as_dict(),
        "outcomes": stats.outcomes(payments),
        "errors": dict(counters.errors.most_common()),
        "gateways": {
            name: {
                "sends": counters.sends_by_gateway.get(name, 0),
                "answers": counters.answers_by_gateway.get(name, 0),
                "logins": counters.logins_by_gateway.get(name, 0),
                "latency_ms": (
                    per_gateway[name].as_dict()
                    if name in per_gateway
                    else stats.LatencySummary.of([]).as_dict()
                ),
            }
            for name in names
        },
        "banks": {
            bank: {
                "as_payer": counters.payer_bank.get(bank, 0),
                "as_payee": counters.payee_bank.get(bank, 0),
            }
            for bank in sorted(set(counters.payer_bank) | set(counters.payee_bank))
        },
        "processes": processes,
        "machine": machine,
        "audit": audit.as_dict(),
        "timeseries": stats.time_series(counted, config.bin_s),
    }


def write(out_dir: Path, results: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_summary(console: Console, results: dict[str, Any]) -> None:
    """The figures a person looks for first, then distribution and the audit verdict."""
    t, lat, pay = results["throughput"], results["latency_ms"], results["payments"]
    head = Table(title="load", show_header=False, title_justify="left")
    head.add_column(style="bold")
    head.add_column(justify="right")
    rows: list[tuple[str, str]] = [
        ("answered / s", _fmt(t["answered_per_s"])),
        ("committed / s", _fmt(t["committed_per_s"])),
        ("window", f"{_fmt(t['window_s'], 2)} s"),
        ("payments issued", _fmt(pay["issued"])),
        ("latency p50", f"{_fmt(lat['p50_ms'], 2)} ms"),
        ("latency p90", f"{_fmt(lat['p90_ms'], 2)} ms"),
        ("latency p99", f"{_fmt(lat['p99_ms'], 2)} ms"),
        ("latency max", f"{_fmt(lat['max_ms'], 2)} ms"),
        ("retried (same key)", _fmt(pay["retried"])),
        ("answered after the load", _fmt(pay["resolved_late"])),
    ]
    for name, value in rows:
        head.add_row(name, value)
    console.print(head)

    outcomes = Table(title="outcomes", title_justify="left")
    outcomes.add_column("outcome")
    outcomes.add_column("payments", justify="right")
    for key, count in results["outcomes"].items():
        outcomes.add_row(key, _fmt(count))
    for key, count in results["errors"].items():
        outcomes.add_row(f"[red]failed send: {key}", _fmt(count))
    console.print(outcomes)

    gateways = Table(title="gateways", title_justify="left")
    for column in ("gateway", "sends", "answers", "share", "logins", "p50 ms", "p99 ms"):
        gateways.add_column(column, justify="left" if column == "gateway" else "right")
    total = sum(g["answers"] for g in results["gateways"].values()) or 1
    for name, g in results["gateways"].items():
        gateways.add_row(
            name,
            _fmt(g["sends"]),
            _fmt(g["answers"]),
            f"{100 * g['answers'] / total:.1f}%",
            _fmt(g["logins"]),
            _fmt(g["latency_ms"]["p50_ms"], 2),
            _fmt(g["latency_ms"]["p99_ms"], 2),
        )
    console.print(gateways)

    banks = Table(title="banks", title_justify="left")
    for column in ("bank", "as payer", "as payee"):
        banks.add_column(column, justify="left" if column == "bank" else "right")
    for name, b in results["banks"].items():
        banks.add_row(name, _fmt(b["as_payer"]), _fmt(b["as_payee"]))
    console.print(banks)

    if results["processes"]:
        procs = Table(title="processes", title_justify="left")
        for column in ("process", "RSS max MB", "CPU s"):
            procs.add_column(column, justify="left" if column == "process" else "right")
        for name, p in results["processes"].items():
            procs.add_row(name, _fmt(p["rss_mb_max"]), _fmt(p["cpu_s"], 2))
        machine = results.get("machine") or {}
        if machine:
            procs.add_row("(not sampled: others)", "", _fmt(machine["other_cpu_s"], 2))
        console.print(procs)

    audit = results["audit"]
    money = audit["money_after_minor"]
    if audit["ok"]:
        console.print(
            f"[bold green]money check passed[/]: {audit['accounts']} accounts hold "
            f"{money:,} minor units before and after; {audit['committed_checked']:,} COMMITTED "
            f"payments each in both histories exactly once, {audit['aborted_checked']:,} "
            "ABORTED in neither."
        )
    else:
        console.print("[bold red]MONEY CHECK FAILED[/]")
        for line in AuditReport(**_audit_fields(audit)).problems():
            console.print(f"[red]  - {line}")
        for line in audit["examples"]:
            console.print(f"[red]    {line}")


def _audit_fields(audit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in audit.items() if k not in ("ok", "conserved")}
