"""`strife demo`: a local cluster and a short story of real payments.

Each step prints one line and checks what it claims; the demo exits 0 only
if every step behaved as stated, and always shuts the cluster down.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import click

from strife.bft.bank_client import AccountAudit, ReplicatedBank
from strife.bft.cluster import auditor_clients
from strife.client import ClientConfig as _ClientConfig
from strife.client import (
    Credentials,
    EntryState,
    PaymentResult,
    StrifeClient,
)
from strife.cluster.seeds import account_of, generated_rows, password_of, username
from strife.cluster.supervisor import Supervisor
from strife.cluster.topology import ReplicatedBankSpec, Topology, default_topology
from strife.money import format_amount
from strife.rpc.addresses import free_port
from strife.rpc.channels import ChannelPool, Peer
from strife.v1 import bank_pb2, bank_pb2_grpc

CALL_TIMEOUT_S = 5.0
LYING_REPLICA = 1
"""The replica of the demo's replicated bank that answers every request wrongly."""
SETTLE_TIMEOUT_S = 30.0


@dataclass
class Story:
    say: Callable[[str], None]
    failures: list[str] = field(default_factory=list)
    steps: int = 0

    def check(self, ok: bool, claim: str, detail: str = "") -> None:
        self.steps += 1
        mark = "ok  " if ok else "FAIL"
        self.say(f"  [{mark}] {claim}" + (f"  ({detail})" if detail else ""))
        if not ok:
            self.failures.append(claim)


class Books:
    """Reads every seeded account straight from its bank, as an auditor would: a
    replicated bank through its f + 1 client, as the admin identity."""

    def __init__(self, pool: ChannelPool, supervisor: Supervisor, topology: Topology) -> None:
        self.pool = pool
        self.supervisor = supervisor
        banks = [(b.name, b.customers) for b in topology.banks]
        banks += [(r.name, r.customers) for r in topology.replicated]
        self.accounts = [
            (bank, row["account_id"])
            for bank, customers in banks
            for row in generated_rows(bank, customers)
        ]
        self.replicated = auditor_clients(
            supervisor.root, [r.name for r in topology.replicated], pool
        )

    async def balance(self, bank: str, account: str) -> int:
        stub: bank_pb2_grpc.BankServiceStub | ReplicatedBank
        if bank in self.replicated:
            stub = self.replicated[bank]
        else:
            address = self.supervisor.child(f"bank-{bank}").address
            stub = bank_pb2_grpc.BankServiceStub(self.pool.get(address, Peer("bank", bank)))
        reply = await stub.GetAccountBalance(
            bank_pb2.GetAccountBalanceRequest(bank=bank, account_id=account),
            timeout=CALL_TIMEOUT_S,
        )
        return int(reply.balance.balance.amount_minor)

    async def audit(self, bank: str, account: str) -> AccountAudit:
        return await self.replicated[bank].audit_account(account, CALL_TIMEOUT_S)

    async def total(self) -> int:
        return sum([await self.balance(b, a) for b, a in self.accounts])


def _usd(amount_minor: int) -> str:
    return f"{format_amount(amount_minor, 'USD')} USD"


async def _until(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def play(supervisor: Supervisor, topology: Topology, story: Story) -> None:
    say = story.say
    root = supervisor.root
    payer, payee, neighbour = username("alpha", 1), username("beta", 1), username("alpha", 2)
    payer_acct = ("alpha", account_of(payer))
    payee_acct = ("beta", account_of(payee))
    neighbour_acct = ("alpha", account_of(neighbour))
    balancer = supervisor.child("balancer").address

    async def credentials() -> Credentials:
        return Credentials(payer, password_of(payer), "alpha")

    config = _ClientConfig(pay_wait_s=10.0)
    async with (
        ChannelPool(supervisor.certs_dir / "admin") as admin_pool,
        StrifeClient(
            certs=supervisor.certs_dir / "client-default",
            balancer=balancer,
            outbox=root / "demo-outbox.db",
            credentials=credentials,
            config=config,
        ) as client,
    ):
        books = Books(admin_pool, supervisor, topology)
        opening_total = await books.total()

        session = await client.login(payer, password_of(payer), "alpha")
        story.check(
            bool(session.customer_id),
            f"{payer} logs in through bank alpha",
            f"customer {session.customer_id}",
        )

        before = await books.balance(*payer_acct), await books.balance(*payee_acct)
        result = await client.pay(f"beta/{payee_acct[1]}", 1234, "USD")

        # The gateway answers once COMMIT is durable in its log and tells the
        # banks right after; the books show it once both banks have heard.
        async def both_posted() -> bool:
            after = await books.balance(*payer_acct), await books.balance(*payee_acct)
            return after == (before[0] - 1234, before[1] + 1234)

        story.check(
            result.state == EntryState.COMMITTED and await _until(both_posted, SETTLE_TIMEOUT_S),
            f"cross-bank payment of {_usd(1234)} from alpha to beta commits at both banks",
            f"transfer {result.transfer_id}",
        )

        vault_acct = ("vault", account_of(username("vault", 1)))
        liar = f"vault-{LYING_REPLICA}"
        vault_before = await books.balance(*vault_acct)
        into_vault = await client.pay(f"vault/{vault_acct[1]}", 2500, "USD")

        async def vault_credited() -> bool:
            return await books.balance(*vault_acct) == vault_before + 2500

        into_vault_ok = into_vault.state == EntryState.COMMITTED and await _until(
            vault_credited, SETTLE_TIMEOUT_S
        )
        audit = await books.audit(*vault_acct)
        story.check(
            into_vault_ok
            and audit.account["balance_minor"] == vault_before + 2500
            and audit.dissenters == (liar,),
            f"a payment of {_usd(2500)} into vault, a bank of 4 PBFT replicas of which "
            f"{liar} lies, is credited once",
            f"{', '.join(audit.agreeing)} agree; {', '.join(audit.dissenters) or 'nobody'} "
            "outvoted",
        )

        neighbour_before = await books.balance(*neighbour_acct)
        same = await client.pay(f"alpha/{neighbour_acct[1]}", 500, "USD")
        story.check(
            same.state == EntryState.COMMITTED
            and await books.balance(*neighbour_acct) == neighbour_before + 500,
            f"same-bank payment of {_usd(500)} inside alpha commits (one-phase)",
        )

        key = str(uuid.uuid4())
        before_payer = await books.balance(*payer_acct)
        first = await client.pay(f"beta/{payee_acct[1]}", 700, "USD", key=key)
        again = await client.pay(f"beta/{payee_acct[1]}", 700, "USD", key=key)

        async def debited_once() -> bool:
            return await books.balance(*payer_acct) == before_payer - 700

        story.check(
            first.state == again.state == EntryState.COMMITTED
            and first.transfer_id == again.transfer_id
            and await _until(debited_once, SETTLE_TIMEOUT_S),
            "the same payment sent twice with one idempotency key moves money once",
        )

        async with StrifeClient(
            certs=supervisor.certs_dir / "client-default",
            balancer=balancer,
            outbox=root / "demo-outbox-2.db",
            credentials=credentials,
        ) as other:
            reused = await other.pay(f"beta/{payee_acct[1]}", 701, "USD", key=key)
        story.check(
            reused.state == EntryState.FAILED and reused.reason == "IDEMPOTENCY_KEY_REUSED",
            "the same key for a different amount is refused by the gateway",
            reused.reason,
        )

        unmoved = await books.total(), await books.balance(*payer_acct)
        broke = await client.pay(f"beta/{payee_acct[1]}", 10**11, "USD")
        story.check(
            broke.state == EntryState.ABORTED
            and broke.reason == "INSUFFICIENT_FUNDS"
            and (await books.total(), await books.balance(*payer_acct)) == unmoved,
            f"a payment of {_usd(10**11)} aborts with INSUFFICIENT_FUNDS; nothing moves",
        )

        gateways = [c.name for c in supervisor.children if c.name.startswith("gateway-")]
        for name in gateways:
            await supervisor.pause(name)
        before_payee = await books.balance(*payee_acct)
        queued = await client.pay(f"beta/{payee_acct[1]}", 900, "USD", wait_s=1.0)
        story.check(
            queued.state in (EntryState.PENDING, EntryState.IN_FLIGHT),
            "with every gateway down, a payment is queued in the outbox",
            str(queued.state),
        )
        outcomes = client.outcomes()
        for name in gateways:
            await supervisor.resume(name)
        settled: PaymentResult | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_TIMEOUT_S):
                async for outcome in outcomes:
                    if outcome.entry_id == queued.entry_id:
                        settled = outcome
                        break
        outcomes.close()

        async def credited() -> bool:
            return await books.balance(*payee_acct) == before_payee + 900

        story.check(
            settled is not None
            and settled.state == EntryState.COMMITTED
            and await _until(credited, SETTLE_TIMEOUT_S),
            "gateways back: the queued payment is delivered once and its notification arrives",
        )

        before_payee = await books.balance(*payee_acct)
        sends = [
            asyncio.create_task(client.pay(f"beta/{payee_acct[1]}", 100, "USD", wait_s=0))
            for _ in range(20)
        ]
        victim = supervisor.child(gateways[0])
        if victim.proc is not None and victim.proc.returncode is None:
            victim.proc.send_signal(signal.SIGKILL)
        results = await asyncio.gather(*sends)
        done = [await client.wait_for(r.entry_id, SETTLE_TIMEOUT_S) for r in results]

        async def delivered() -> bool:
            return await books.balance(*payee_acct) == before_payee + 20 * 100

        story.check(
            all(r.state == EntryState.COMMITTED for r in done)
            and await _until(delivered, SETTLE_TIMEOUT_S),
            f"{gateways[0]} killed mid-run: all 20 payments still complete exactly once",
        )

        async def conserved() -> bool:
            return await books.total() == opening_total

        await _until(conserved, SETTLE_TIMEOUT_S)
        closing_total = await books.total()
        balance = await client.balance()
        say(f"  {payer}: balance {_usd(balance.balance_minor)}, last ledger lines:")
        async for page in client.history(page_size=5):
            for line in page.entries:
                amount = _usd(line.amount_minor)
                say(f"      {amount:>14}  {line.counterparty:<18} {line.transfer_id}")
            break
        story.check(
            closing_total == opening_total,
            "total money across all banks is unchanged",
            f"{_usd(opening_total)} before and after",
        )


DEFAULT_DATA_DIR = Path(".strife/demo")
MARKER = "strife-demo"  # a folder the demo made, and so may clear


class DemoFolderError(click.ClickException):
    pass


def prepare_folder(root: Path) -> None:
    """Start each run from fresh books in `root`, keeping its certificates.

    Only a folder the demo made (it holds the marker file) is cleared; the
    last run's logs stay there until the next run.
    """
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise DemoFolderError(
            f"{root} is not empty and was not made by `strife demo`; choose another --data-dir"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `strife demo`; cleared (but for certs/) on each run\n")
    for sub in ("data", "logs", "bft"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for outbox in root.glob("demo-outbox*.db*"):
        outbox.unlink()


def demo_topology(root: Path) -> Topology:
    """The default cluster, and vault: a bank of 4 PBFT replicas, one of them a liar."""
    vault = ReplicatedBankSpec("vault", byzantine=((LYING_REPLICA, "wrong-results"),))
    return replace(
        default_topology(root), balancer_listen=f"127.0.0.1:{free_port()}", replicated=(vault,)
    )


async def run_demo(data_dir: Path | None, say: Callable[[str], None]) -> int:
    root = data_dir or DEFAULT_DATA_DIR
    prepare_folder(root)
    topology = demo_topology(root)
    supervisor = Supervisor(topology, say=lambda line: say(f"  (supervisor) {line}"))
    say(f"starting a local cluster in {topology.data_dir} ...")
    started = time.monotonic()
    await supervisor.up()
    say(f"cluster up in {time.monotonic() - started:.1f}s:")
    for name, address, pid, _log in supervisor.table():
        say(f"  {name:<14} {address:<17} pid {pid}")
    supervising = asyncio.create_task(supervisor.supervise())
    story = Story(say)
    try:
        say("story:")
        await play(supervisor, topology, story)
    except Exception as exc:  # a step blew up: report it, still shut down
        story.check(False, "the story ran to the end", repr(exc))
    finally:
        supervisor.stop()
        await supervising
    passed = story.steps - len(story.failures)
    say(f"{passed}/{story.steps} steps behaved as stated; cluster stopped.")
    return 0 if not story.failures else 1


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Certificates, databases and logs (default: {DEFAULT_DATA_DIR}); "
    "certificates are kept between runs, the books start fresh each run.",
)
def demo(data_dir: Path | None) -> None:
    """Start a local cluster, play a story of real payments, check every step."""
    from strife.observability.logging import configure_logging
    from strife.rpc.server import run

    configure_logging("console", "error")
    code = 0

    async def main() -> None:
        nonlocal code
        code = await run_demo(data_dir, click.echo)

    run(main)
    raise SystemExit(code)
