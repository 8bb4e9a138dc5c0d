"""Two banks and one or two gateways as real processes, plus a customer client."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from strife.rpc.addresses import free_port as free_port
from strife.rpc.channels import ChannelPool
from strife.v1 import gateway_pb2, gateway_pb2_grpc, money_pb2

from .bank_fixtures import TIMEOUT_S, write_seed
from .conftest import Pki
from .processes import ServiceProcess

PASSWORDS = {"ada": "pw-ada", "bob": "pw-bob", "eve": "pw-eve", "cy": "pw-cy"}


@dataclass
class Cluster:
    pki: Pki
    root: Path
    banks: dict[str, ServiceProcess] = field(default_factory=dict)
    gateways: dict[str, ServiceProcess] = field(default_factory=dict)

    def gateway_args(self, name: str, address: str, extra: Sequence[str] = ()) -> list[str]:
        return [
            "--name",
            name,
            "--listen",
            address,
            "--db",
            str(self.root / f"{name}.db"),
            "--certs",
            str(self.pki.identity("gateway", name)),
            "--grace",
            "1",
            "--token-key",
            str(self.root / "token.key"),
            *[f"--bank={b}={p.address}" for b, p in self.banks.items()],
            *extra,
        ]

    def restart_gateway(self, name: str, extra: Sequence[str] = ()) -> ServiceProcess:
        old = self.gateways[name]
        old.kill()
        process = ServiceProcess(
            "strife-gateway", self.gateway_args(name, old.address, extra), old.log_path
        )
        self.gateways[name] = process.start()
        return process

    def restart_bank(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        """Restart the bank's process: with `hosted`, both banks come back together.

        Without `--init`: a restarted bank must find its own database."""
        old = self.banks[name]
        old.kill()
        args = [arg for arg in old.args if arg != "--init"]
        process = ServiceProcess("strife-bank", args, old.log_path, env=env).start()
        for bank, serving in self.banks.items():
            if serving is old:
                self.banks[bank] = process
        return process


@contextmanager
def cluster(
    pki: Pki,
    root: Path,
    *,
    gateways: Sequence[str] = ("gw-1",),
    gateway_extra: Sequence[str] = (),
    bank_extra: Sequence[str] = (),
    bank_env: dict[str, dict[str, str]] | None = None,
    gateway_env: dict[str, str] | None = None,
    hosted: bool = False,
) -> Iterator[Cluster]:
    """`hosted`: alpha and beta served by one process, `east` (its env: bank_env["east"])."""
    seed = write_seed(root / "seed.json")
    result = Cluster(pki, root)
    ports = {name: free_port() for name in gateways}
    coordinators = [f"--coordinator={g}=127.0.0.1:{p}" for g, p in ports.items()]
    with ExitStack() as stack:
        if hosted:
            for bank in ("alpha", "beta"):
                pki.identity("bank", bank)  # each bank's own, for its resolver's calls
            east = pki.identity("bank", "east", serves=("alpha", "beta"))  # answers for both
            process = ServiceProcess(
                "strife-bank",
                [
                    "--name",
                    "east",
                    "--bank",
                    "alpha",
                    "--bank",
                    "beta",
                    "--listen",
                    f"127.0.0.1:{free_port()}",
                    "--data-dir",
                    str(root),
                    "--init",
                    "--seed",
                    str(seed),
                    "--certs",
                    str(east),
                    "--grace",
                    "1",
                    *coordinators,
                    *bank_extra,
                ],
                root / "east.log",
                env=(bank_env or {}).get("east"),
            )
            result.banks = dict.fromkeys(("alpha", "beta"), process.start())
            stack.callback(lambda: result.banks["alpha"].stop())
        for bank in () if hosted else ("alpha", "beta"):
            process = ServiceProcess(
                "strife-bank",
                [
                    "--name",
                    bank,
                    "--listen",
                    f"127.0.0.1:{free_port()}",
                    "--db",
                    str(root / f"{bank}.db"),
                    "--init",
                    "--seed",
                    str(seed),
                    "--certs",
                    str(pki.identity("bank", bank)),
                    "--grace",
                    "1",
                    *coordinators,
                    *bank_extra,
                ],
                root / f"{bank}.log",
                env=(bank_env or {}).get(bank),
            )
            result.banks[bank] = process.start()
            stack.callback(_stopper(result.banks, bank))
        for name, port in ports.items():
            process = ServiceProcess(
                "strife-gateway",
                result.gateway_args(name, f"127.0.0.1:{port}", gateway_extra),
                root / f"{name}.log",
                env=gateway_env,
            )
            result.gateways[name] = process.start()
            stack.callback(_stopper(result.gateways, name))
        yield result


def _stopper(processes: dict[str, ServiceProcess], name: str) -> Callable[[], object]:
    """Stops whichever process is `name` by then (a test may have replaced it)."""
    return lambda: processes[name].stop()


class Customer:
    """A logged-in customer talking to one gateway, with deadlines on every call."""

    def __init__(self, pool: ChannelPool, address: str) -> None:
        self.stub = gateway_pb2_grpc.PaymentGatewayStub(pool.get(address))
        self.token = ""

    async def login(self, username: str, bank: str = "alpha") -> gateway_pb2.LoginResponse:
        reply = await self.stub.Login(
            gateway_pb2.LoginRequest(username=username, password=PASSWORDS[username], bank=bank),
            timeout=TIMEOUT_S,
        )
        self.token = reply.access_token
        return reply

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def pay(
        self,
        key: str,
        source: tuple[str, str],
        target: tuple[str, str],
        amount_minor: int,
        currency: str = "USD",
    ) -> gateway_pb2.ProcessPaymentResponse:
        return await self.stub.ProcessPayment(
            gateway_pb2.ProcessPaymentRequest(
                idempotency_key=key,
                from_account=money_pb2.AccountRef(bank=source[0], account_id=source[1]),
                to_account=money_pb2.AccountRef(bank=target[0], account_id=target[1]),
                amount=money_pb2.Money(amount_minor=amount_minor, currency=currency),
            ),
            timeout=TIMEOUT_S,
            metadata=self.auth,
        )

    async def balance(self, bank: str, account: str) -> tuple[int, int, int]:
        reply = await self.stub.GetBalance(
            gateway_pb2.GetBalanceRequest(
                account=money_pb2.AccountRef(bank=bank, account_id=account)
            ),
            timeout=TIMEOUT_S,
            metadata=self.auth,
        )
        b = reply.balance
        return b.balance.amount_minor, b.held.amount_minor, b.available.amount_minor

    async def history(self, bank: str, account: str) -> list[money_pb2.LedgerEntry]:
        entries: list[money_pb2.LedgerEntry] = []
        token = ""
        while True:
            page = await self.stub.GetTransactionHistory(
                gateway_pb2.GetTransactionHistoryRequest(
                    account=money_pb2.AccountRef(bank=bank, account_id=account),
                    page_size=50,
                    page_token=token,
                ),
                timeout=TIMEOUT_S,
                metadata=self.auth,
            )
            entries += list(page.entries)
            token = page.next_page_token
            if not token:
                return entries
