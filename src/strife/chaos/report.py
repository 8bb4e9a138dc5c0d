"""The run's JSON report and its plot: throughput and latency, faults on the timeline."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from strife.chaos.history import History

COLOURS = {
    "kill": "tab:red",
    "pause": "tab:orange",
    "partition": "tab:purple",
    "deadline": "tab:green",
    "cancel": "tab:cyan",
}


def write_json(path: Path, report: dict[str, Any]) -> Path:
    path.write_text(json.dumps(report, indent=1, default=str))
    return path


def write_history(path: Path, history: History) -> Path:
    """Every event, one JSON object a line, then every intent with its keys."""
    with path.open("w") as out:
        for event in history.events:
            out.write(json.dumps(event) + "\n")
        for intent in history.intents.values():
            row = {
                "intent": intent.id,
                "customer": intent.customer,
                "via": intent.via,
                "amount_minor": intent.amount_minor,
                "keys": intent.keys,
                "answers": {k: sorted(v) for k, v in intent.answers.items()},
                "final_state": intent.final_state,
            }
            out.write(json.dumps(row) + "\n")
    return path


def plot(path: Path, history: History, faults: list[dict[str, Any]], title: str) -> Path:
    done = history.completions()
    end = max([e["t"] for e in done] + [f.get("end_s", 0) for f in faults] + [1.0])
    seconds = math.ceil(end) + 1
    ok: Counter[int] = Counter()
    other: Counter[int] = Counter()
    for event in done:
        (ok if event["kind"] == "ok" else other)[int(event["t"])] += 1
    fig = Figure(figsize=(10.0, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True)
    xs = list(range(seconds))
    top.plot(xs, [ok[x] for x in xs], label="committed", drawstyle="steps-post")
    top.plot(
        xs,
        [other[x] for x in xs],
        label="aborted, failed or unknown",
        drawstyle="steps-post",
        linestyle="--",
    )
    top.set_ylabel("answers / s")
    top.set_ylim(bottom=0)
    bottom.scatter(
        [e["t"] for e in done],
        [max(e["latency_s"] * 1000, 0.1) for e in done],
        s=2,
        alpha=0.4,
        c=["tab:blue" if e["kind"] == "ok" else "tab:grey" for e in done],
    )
    bottom.set_yscale("log")
    bottom.set_ylabel("latency of pay (ms)")
    bottom.set_xlabel("time since start (s)")
    seen: set[str] = set()
    for fault in faults:
        colour = COLOURS.get(fault["kind"], "black")
        label = fault["kind"] if fault["kind"] not in seen else None
        seen.add(fault["kind"])
        for ax in (top, bottom):
            ax.axvspan(
                fault["start_s"],
                max(fault.get("end_s", fault["start_s"]), fault["start_s"] + 0.1),
                color=colour,
                alpha=0.15,
                label=label if ax is top else None,
            )
    top.legend(fontsize=7, ncol=4, loc="upper right")
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3, which="both")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
