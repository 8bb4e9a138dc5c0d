"""One chaos run, start to verdict; everything it starts is stopped and removed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from strife.chaos import net
from strife.chaos.checker import check, read_ledgers
from strife.chaos.evidence import transfer_ids, write_evidence
from strife.chaos.history import History
from strife.chaos.nemesis import ALL_KINDS, Nemesis
from strife.chaos.nodes import Nodes, chaos_topology
from strife.chaos.report import plot, write_history, write_json
from strife.chaos.workload import Customers
from strife.gateway.coordinator import CoordinatorConfig
from strife.loadgen.customers import from_topology
from strife.rpc.breaker import BreakerConfig

Say = Callable[[str], None]
HOLDS_TIMEOUT_S = 30.0
# A replica's settler visits an undecided record at least every
# `settle_backoff_max_s`, and a partition may have left its breaker to a bank
# open for up to `max_open_s` more: the settle window is twice their sum.
SETTLE_TIMEOUT_S = 2 * (CoordinatorConfig.settle_backoff_max_s + BreakerConfig().max_open_s)


@dataclass(frozen=True)
class ChaosConfig:
    out: Path
    customers: int = 100
    banks: int = 3
    gateways: int = 3
    duration_s: float = 60.0
    payments: int = 10_000
    rate_per_s: float = 60.0
    faults: int = 30
    kinds: tuple[str, ...] = ALL_KINDS
    netns: bool | None = None  # None: when the machine allows it
    drain_timeout_s: float = 120.0
    seed: int = 1


async def run_chaos(config: ChaosConfig, say: Say = print) -> dict[str, Any]:
    out = config.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    network: net.Network | None = None
    why_not = net.unavailable_reason() if config.netns is not False else "disabled"
    if why_not is None:
        network = net.Network()
    elif config.netns:
        raise RuntimeError(f"network namespaces are not available: {why_not}")
    root = os.geteuid() == 0
    kinds = tuple(
        k
        for k in config.kinds
        if (network is not None or k != "partition") and (root or k != "disk")
    )
    try:
        return await _run(config, out, network, kinds, why_not, say)
    finally:
        if network is not None:
            network.close()
            if left := net.leftovers(network.tag):
                say(f"namespaces left behind: {left}")


async def _run(
    config: ChaosConfig,
    out: Path,
    network: net.Network | None,
    kinds: tuple[str, ...],
    why_not: str | None,
    say: Say,
) -> dict[str, Any]:
    rng = random.Random(config.seed)
    topology = chaos_topology(out / "cluster", config.banks, config.gateways, config.customers)
    nodes = Nodes(topology, network, disks="disk" in kinds)
    history = History()
    report: dict[str, Any] = {
        "config": {**asdict(config), "kinds": kinds},
        "network": "namespaces" if network else f"loopback ({why_not})",
        "network_tag": network.tag if network else "",
    }
    codes: dict[str, int | None] = {}
    try:
        say(
            f"starting {len(topology.banks)} banks, {len(topology.gateways)} gateways and a "
            f"balancer ({report['network']})"
        )
        await nodes.start()
        payers = from_topology(topology)[: config.customers]
        customers = Customers(
            history,
            payers,
            certs=nodes.certs_dir / "client-default",
            balancer=nodes.balancer,
            outboxes=out / "outboxes",
            rng=rng,
        )
        try:
            await customers.open()
            history.started = time.monotonic()
            say(
                f"{len(payers)} customers paying for {config.duration_s:.0f} s, "
                f"{config.faults} faults of {', '.join(kinds)}"
            )
            stop = asyncio.Event()
            interval = config.duration_s / max(config.faults, 1)
            nemesis = Nemesis(nodes, customers, history, rng, kinds, interval, config.faults)
            load = asyncio.create_task(customers.run(stop, config.payments, config.rate_per_s))
            faults = asyncio.create_task(nemesis.run(stop))
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(load), config.duration_s)
                stop.set()
                await load
                await faults
            finally:
                # A run cut short (SIGTERM, an error) must not leave the
                # nemesis restarting processes after they were stopped.
                for task in (load, faults):
                    task.cancel()
                await asyncio.gather(load, faults, return_exceptions=True)
            await nemesis.settle()
            load_s = history.now()
            say(
                f"quiescence: {customers.sent} payments sent, {len(nemesis.faults)} faults; healing"
            )
            revived = await nodes.heal()
            left = await customers.drain(config.drain_timeout_s)
            drained_s = history.now()
            say(f"outboxes drained ({left} left) after {drained_s - load_s:.1f} s")
            await _holds_released(nodes.bank_databases(), HOLDS_TIMEOUT_S)
            asked_s = history.now()
            answers = await customers.ask_gateways(nodes.gateway_addresses(), SETTLE_TIMEOUT_S)
            answered_s = history.now()
            states = await customers.collect()
        finally:
            await customers.close()
        codes = await nodes.stop()
    finally:
        if not codes:
            await nodes.stop()
        nodes.release_disks(out / "cluster" / "disks-copy")
    verdict = check(
        history,
        read_ledgers(nodes.bank_databases()),
        answers,
        left_in_outboxes=left,
        exit_codes=codes,
    )
    by_kind = Counter(f["kind"] for f in nemesis.faults)
    report.update(
        passed=verdict.passed,
        headline=_headline(verdict.passed, history, nemesis.faults, by_kind),
        payments={
            "intents": len(history.intents),
            "by_via": dict(Counter(i.via for i in history.intents.values())),
            "final_states": states,
            "answers_to_pay": dict(Counter(e["kind"] for e in history.completions())),
        },
        faults={
            "count": len(nemesis.faults),
            "by_kind": dict(by_kind),
            "errors": [f for f in nemesis.faults if "error" in f],
            "timeline": nemesis.faults,
        },
        timing={
            "load_s": load_s,
            "drain_s": round(drained_s - load_s, 2),
            "gateways_answered_s": round(answered_s - asked_s, 2),
            "revived_at_heal": revived,
        },
        checker=verdict.as_dict(),
    )
    report["files"] = {
        "report": str(write_json(out / "report.json", report)),
        "history": str(write_history(out / "history.jsonl", history)),
        "plot": str(plot(out / "timeline.png", history, nemesis.faults, report["headline"])),
    }
    if not verdict.passed:
        named = transfer_ids(history, verdict.examples)
        evidence = write_evidence(out / "evidence.txt", out / "cluster" / "logs", named)
        report["files"]["evidence"] = str(evidence)
    write_json(out / "report.json", report)
    return report


def _headline(
    passed: bool, history: History, faults: list[dict[str, Any]], by_kind: Counter[str]
) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items()))
    return (
        f"{'PASS' if passed else 'FAIL'}: {len(history.intents)} payments, "
        f"{len(faults)} faults ({kinds})"
    )


async def _holds_released(databases: dict[str, Path], timeout_s: float) -> bool:
    """Commit and abort decisions reach the banks a little after the outboxes settle."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(map(_open_holds, databases.values())):
            return True
        await asyncio.sleep(0.5)
    return False


def _open_holds(path: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            (held,) = conn.execute(
                "SELECT COUNT(*) FROM accounts WHERE held_minor != 0 OR pending_credit_minor != 0"
            ).fetchone()
            (prepared,) = conn.execute(
                "SELECT COUNT(*) FROM transfers WHERE state = 'PREPARED'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 1
    return int(held) + int(prepared)
