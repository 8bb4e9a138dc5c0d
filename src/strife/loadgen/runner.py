"""One load run from start to verdict: snapshot, logins, load, resolution, audit, report.

The order matters: the books are read before anyone logs in (logins move no
money, but the snapshot must precede the first payment); the clock starts
only after every customer holds a token, so scrypt at the banks is not
counted as payment time; the process sampler runs during the load only; the
audit reads the books only after the resolution pass has given every payment
its final answer it could get.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from strife.loadgen import plots, report
from strife.loadgen._model import Payment
from strife.loadgen.audit import Auditor, AuditReport
from strife.loadgen.config import LoadConfig
from strife.loadgen.customers import PayeePicker, choose_payers, payee_pool
from strife.loadgen.engine import Engine
from strife.loadgen.procstats import ProcessSampler
from strife.loadgen.progress import live_progress
from strife.loadgen.target import Target
from strife.rpc.channels import ANY_GATEWAY, ChannelPool
from strife.rpc.discovery import BalancerClient


@dataclass
class LoadResult:
    results: dict[str, Any]
    payments: list[Payment]
    audit: AuditReport
    results_path: Path | None
    plot_paths: list[Path]

    @property
    def ok(self) -> bool:
        return self.audit.ok


async def run_load(
    config: LoadConfig,
    target: Target,
    *,
    out_dir: Path | None = None,
    console: Console | None = None,
    progress: bool = False,
    plot: bool = True,
    title: str = "",
) -> LoadResult:
    """Run `config` against `target`; write results.json and plots to `out_dir` if given."""
    config.validate()
    console = console or Console(stderr=True, quiet=not progress)
    payers = choose_payers(target.customers, config.clients, random.Random(config.seed))
    payees = PayeePicker(
        payee_pool(target.customers, payers, config.mix, config.payees), config.mix
    )
    timings: dict[str, float] = {}
    clients = ChannelPool(target.client_certs, peer=ANY_GATEWAY)
    async with clients as pool, ChannelPool(target.admin_certs) as admin:
        engine = Engine(config, payers, payees, pool, BalancerClient(pool, target.balancer))
        gateways = await engine.directory.refresh()
        auditor = Auditor(
            admin,
            BalancerClient(admin, target.balancer),
            [c.ref for c in target.customers],
            replicated=_replicated(target, admin),
        )
        began = time.perf_counter()
        before = await auditor.snapshot()
        timings["snapshot"] = time.perf_counter() - began

        began = time.perf_counter()
        console.log(f"logging in {len(payers)} customers ({config.login_concurrency} at a time)")
        await engine.login_all()
        timings["login"] = time.perf_counter() - began

        sampler = ProcessSampler(lambda: {**target.pids(), "loadgen": os.getpid()})
        sampler.start()
        try:
            async with live_progress(engine, config, console, enabled=progress):
                await engine.run()
        finally:
            await sampler.stop()
        timings["load"] = engine.stopped_at_s or 0.0

        began = time.perf_counter()
        await engine.resolve_unknown()
        timings["resolve"] = time.perf_counter() - began

        began = time.perf_counter()
        audit = await auditor.audit(before, engine.payments, config.settle_timeout_s)
        timings["audit"] = time.perf_counter() - began

    results = report.build(
        config=config,
        payments=engine.payments,
        counters=engine.counters,
        audit=audit,
        processes=sampler.result(),
        machine=sampler.machine(),
        target={
            "balancer": target.balancer,
            "gateways": gateways,
            "banks": sorted({c.bank for c in target.customers}),
            "customers": len(target.customers),
            "payers": len(payers),
            **target.notes,
        },
        timings=timings,
        gateways=gateways,
    )
    results_path = None
    plot_paths: list[Path] = []
    if out_dir is not None:
        if plot:
            plot_paths = plots.write_all(out_dir, engine.payments, results, title or _title(config))
            results["plots"] = [p.name for p in plot_paths]
        results_path = report.write(out_dir, results)
    return LoadResult(results, engine.payments, audit, results_path, plot_paths)


def _replicated(target: Target, admin: ChannelPool) -> dict[str, Any]:
    """The f + 1 clients of the target's replicated banks, if its topology has any."""
    topology = target.topology
    if topology is None or not topology.replicated:
        return {}
    from strife.bft.cluster import auditor_clients  # only for a cluster that has them

    banks = [spec.name for spec in topology.replicated]
    return dict(auditor_clients(topology.data_dir.resolve(), banks, admin))


def _title(config: LoadConfig) -> str:
    mode = f"{config.rate_per_s:g}/s open loop" if config.rate_per_s else "closed loop"
    return f"{config.clients} clients, {mode}, policy {config.policy or 'default'}"
