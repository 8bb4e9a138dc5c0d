"""`strife.client` and the `strife` CLI against real banks and gateways (one shared cluster)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from strife.client import (
    ClientConfig,
    EntryState,
    IdempotencyKeyReused,
    LoginRequired,
    OutboxFull,
    PaymentResult,
    PaymentStatus,
    Session,
    new_idempotency_key,
)
from strife.client._drainer import FAILPOINT_BEFORE_RECORD
from strife.faults import EXIT_STATUS

from .cluster_fixtures import PASSWORDS, Cluster, cluster
from .conftest import Pki
from .test_client_support import ADA, BOB, CY, EVE, client_for, parsed, strife_cli


@pytest.fixture(scope="module")
def running(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster(pki, tmp_path_factory.mktemp("client-cluster"), gateways=("gw-1", "gw-2")) as c:
        yield c


# --------------------------------------------------------------------- library


async def test_pay_commits_notifies_and_reads_back(
    pki: Pki, running: Cluster, tmp_path: Path
) -> None:
    seen: list[PaymentResult] = []
    async with client_for(pki, running, tmp_path / "outbox.db") as client:
        session = await client.login()
        assert session.customer_id == "c-ada" and "alpha/ada-usd" in {
            str(a.ref) for a in session.accounts
        }
        client.on_outcome(seen.append)
        outcomes = client.outcomes()
        before = await client.balance(ADA)
        result = await client.pay(CY, amount_minor=123, currency="USD", description="tea")
        assert result.state == EntryState.COMMITTED and result.transfer_id
        assert (await anext(outcomes)).entry_id == result.entry_id
        assert [r.entry_id for r in seen] == [result.entry_id]
        after = await client.balance(ADA)
        assert after.balance_minor == before.balance_minor - 123
        status = await client.payment_status(result.idempotency_key)
        assert (status.status, status.transfer_id) == (PaymentStatus.COMMITTED, result.transfer_id)
        pages = [page async for page in client.history(ADA, page_size=1)]
        assert all(len(p.entries) <= 1 for p in pages) and not pages[-1].next_page_token
        lines = [e for p in pages for e in p.entries if e.transfer_id == result.transfer_id]
        assert [e.amount_minor for e in lines] == [-123]
        # Paying again with the same key is the same payment, not a second one.
        again = await client.pay(CY, 123, "USD", description="tea", key=result.idempotency_key)
        assert again.entry_id == result.entry_id
        with pytest.raises(IdempotencyKeyReused):
            await client.pay(CY, 124, "USD", key=result.idempotency_key)
        assert (await client.balance(ADA)).balance_minor == after.balance_minor


async def test_terminal_errors_are_not_retried(pki: Pki, running: Cluster, tmp_path: Path) -> None:
    async with client_for(pki, running, tmp_path / "eve.db", "eve") as eve:
        broke = await eve.pay(BOB, amount_minor=10**9, currency="USD")
        assert (broke.state, broke.reason) == (EntryState.ABORTED, "INSUFFICIENT_FUNDS")
        stored = await eve.outbox_entry(broke.entry_id)
        assert (stored.sends, stored.resubmits) == (1, 0)  # a business abort is final
    # Another device of ada's with its own outbox reuses a key for a different payment.
    key = new_idempotency_key()
    async with client_for(pki, running, tmp_path / "phone.db") as phone:
        assert (await phone.pay(CY, 5, "USD", key=key)).state == EntryState.COMMITTED
    async with client_for(pki, running, tmp_path / "laptop.db") as laptop:
        reused = await laptop.pay(CY, 6, "USD", key=key)
        assert (reused.state, reused.reason) == (EntryState.FAILED, "IDEMPOTENCY_KEY_REUSED")
        assert (await laptop.outbox_entry(key)).sends == 1


async def test_expired_token_is_refreshed_through_the_callback(
    pki: Pki, running: Cluster, tmp_path: Path
) -> None:
    from strife.gateway.tokens import TokenAuthority, load_or_create_key

    authority = TokenAuthority(load_or_create_key(running.root / "token.key"), ttl_s=-1)
    token, _ = authority.issue("c-ada", "alpha", ["alpha/ada-usd", "alpha/ada-eur"], cert_sha256="")
    from strife.client import Account, AccountRef

    stale = Session(
        customer_id="c-ada",
        username="ada",
        bank="alpha",
        accounts=(Account(AccountRef("alpha", "ada-usd"), "USD"),),
        access_token=token,
        expires_at_unix_ms=2**62,  # the client believes it still valid
    )
    asked: list[str] = []
    async with client_for(pki, running, tmp_path / "o.db", session=stale, calls=asked) as client:
        result = await client.pay(CY, 7, "USD")
        assert result.state == EntryState.COMMITTED
        assert asked == ["ada"]  # TOKEN_EXPIRED -> one login through the callback
        assert client.session is not None and client.session.access_token != token


async def test_the_documented_login_asks_the_callback_once(
    pki: Pki, running: Cluster, tmp_path: Path
) -> None:
    # docs/client.md: a client with a credential callback, then `await client.login()`;
    # the drainer needs a session at the same time and shares that login.
    asked: list[str] = []
    async with client_for(pki, running, tmp_path / "o.db", calls=asked) as client:
        session = await client.login()
        await client.drain()
        result = await client.pay(CY, 6, "USD")
        assert await client.login() is session  # still good: no second login
    assert result.state == EntryState.COMMITTED
    assert asked == ["ada"]


async def test_without_credentials_payments_wait_for_a_login(
    pki: Pki, running: Cluster, tmp_path: Path
) -> None:
    from strife.client import StrifeClient

    identity = Session("c-ada", "ada", "alpha", (), "", 0)  # known customer, no token
    async with StrifeClient(
        certs=pki.identity("client", "default"),
        gateways=[running.gateways["gw-1"].address],
        outbox=tmp_path / "o.db",
        session=identity,
        background=False,
        config=ClientConfig(max_unsettled=1),
    ) as client:
        queued = await client.pay(CY, 8, "USD", from_account=ADA, wait_s=2)
        assert queued.state == EntryState.PENDING
        with pytest.raises(OutboxFull, match="limit 1"):
            await client.pay(CY, 9, "USD", from_account=ADA)
        drained = await client.drain()
        assert isinstance(drained.problem, LoginRequired) and drained.waiting == 1
        await client.login("ada", PASSWORDS["ada"], "alpha")
        drained = await client.drain()
        assert [r.entry_id for r in drained.settled] == [queued.entry_id]
        assert drained.settled[0].state == EntryState.COMMITTED


# ------------------------------------------------------------------------ crash


def test_client_killed_in_flight_is_resolved_by_get_payment(
    pki: Pki, running: Cluster, tmp_path: Path
) -> None:
    """A real `strife pay` process dies after the gateway answered, before recording it.

    The death is a failpoint (`os._exit`, no cleanup, like SIGKILL) placed
    exactly between receiving the answer and writing it: a SIGKILL from
    outside cannot aim there. On the next run the entry is IN_FLIGHT, the
    drainer asks GetPayment, and the payment is not sent again.
    """
    gw = running.gateways["gw-1"].address
    common = ["--gateway", gw, "--certs", str(pki.identity("client", "default")), "--json"]
    login = strife_cli(
        ["login", "--username", "ada", "--bank", "alpha", "--password-stdin", *common],
        home=tmp_path,
        stdin=PASSWORDS["ada"] + "\n",
    )
    assert login.returncode == 0, login.stderr
    before = parsed(strife_cli(["balance", "--account", ADA, *common], home=tmp_path))
    crashed = strife_cli(
        [
            "pay",
            "--to-bank",
            "beta",
            "--to-account",
            "cy-usd",
            "--amount",
            "2.50",
            "--currency",
            "USD",
            *common,
        ],
        home=tmp_path,
        env={"STRIFE_FAILPOINTS": FAILPOINT_BEFORE_RECORD},
    )
    assert crashed.returncode == EXIT_STATUS, crashed.stderr
    # The next invocation drains first: the entry is IN_FLIGHT, so it asks GetPayment.
    [entry] = parsed(strife_cli(["outbox", "list", *common], home=tmp_path))["entries"]
    assert entry["state"] == "COMMITTED", entry
    assert entry["sends"] == 1  # resolved through GetPayment, never sent twice
    after = parsed(strife_cli(["balance", "--account", ADA, *common], home=tmp_path))
    assert after["balances"][0]["balance_minor"] == before["balances"][0]["balance_minor"] - 250


# -------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("amount", "currency"),
    [
        ("1e3", "USD"),
        ("12.345", "USD"),
        ("-5", "USD"),
        ("0", "USD"),
        ("0.00", "USD"),
        ("NaN", "USD"),
        ("1_000", "USD"),
        ("1.5", "JPY"),
        ("", "USD"),
        ("1", "XXX"),
    ],
)
def test_cli_refuses_bad_amounts_before_connecting(
    amount: str, currency: str, tmp_path: Path
) -> None:
    result = strife_cli(
        [
            "pay",
            "--to-bank",
            "beta",
            "--to-account",
            "cy-usd",
            "--amount",
            amount,
            "--currency",
            currency,
            "--gateway",
            "127.0.0.1:1",
            "--json",
        ],
        home=tmp_path,
    )
    assert result.returncode == 2, result
    error = parsed(result)["error"]
    assert error["reason"] in ("INVALID_AMOUNT", "INVALID_CURRENCY")
    assert not (tmp_path / "default" / "outbox.db").exists()  # nothing was queued


def test_cli_names_the_largest_amount_in_the_currency(tmp_path: Path) -> None:
    result = strife_cli(
        [
            "pay",
            "--to-bank",
            "beta",
            "--to-account",
            "cy-usd",
            "--amount",
            "100000000000000000",
            "--currency",
            "USD",
            "--gateway",
            "127.0.0.1:1",
        ],
        home=tmp_path,
    )
    assert result.returncode == 2, result
    assert "the largest amount is 92,233,720,368,547,758.07 USD" in result.stderr
    assert "int64" not in result.stderr


def test_cli_json_output_parses_for_every_command(
    pki: Pki, running: Cluster, tmp_path: Path
) -> None:
    common = [
        "--gateway",
        running.gateways["gw-2"].address,
        "--certs",
        str(pki.identity("client", "default")),
        "--json",
    ]
    login = parsed(
        strife_cli(
            ["login", "-u", "ada", "--bank", "alpha", "--password-stdin", *common],
            home=tmp_path,
            stdin=PASSWORDS["ada"] + "\n",
        )
    )
    assert login["customer_id"] == "c-ada" and "access_token" not in login
    cache = tmp_path / "default" / "session.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "default").stat().st_mode) == 0o700
    assert PASSWORDS["ada"] not in cache.read_text()
    # 0.1 USD is ten cents, exactly.
    paid = strife_cli(
        [
            "pay",
            "--to-bank",
            "beta",
            "--to-account",
            "cy-usd",
            "--amount",
            "0.1",
            "--currency",
            "usd",
            *common,
        ],
        home=tmp_path,
    )
    payment = parsed(paid)
    assert paid.returncode == 0 and payment["state"] == "COMMITTED"
    assert (payment["amount_minor"], payment["amount"], payment["currency"]) == (10, "0.10", "USD")
    status = parsed(strife_cli(["status", payment["idempotency_key"], *common], home=tmp_path))
    assert status["gateway"]["status"] == "COMMITTED"
    assert status["outbox"]["transfer_id"] == status["gateway"]["transfer_id"]
    balances = parsed(strife_cli(["balance", *common], home=tmp_path))["balances"]
    assert {b["account"] for b in balances} == {"alpha/ada-usd", "alpha/ada-eur"}
    history = parsed(
        strife_cli(["history", "--account", "ada-usd", "--limit", "3", *common], home=tmp_path)
    )["entries"]
    assert 1 <= len(history) <= 3 and history[0]["transfer_id"] == payment["transfer_id"]
    listed = parsed(strife_cli(["outbox", "list", *common], home=tmp_path))["entries"]
    assert [e["idempotency_key"] for e in listed] == [payment["idempotency_key"]]
    # A refused payment settles ABORTED: exit status 3, still JSON.
    refused = strife_cli(
        [
            "pay",
            "--to-bank",
            "beta",
            "--to-account",
            "cy-usd",
            "--amount",
            "99999999",
            "--currency",
            "USD",
            *common,
        ],
        home=tmp_path,
    )
    assert refused.returncode == 3 and parsed(refused)["reason"] == "INSUFFICIENT_FUNDS"
    watched = strife_cli(["watch", "--until-empty", "--timeout", "10", *common], home=tmp_path)
    assert watched.returncode == 0 and watched.stdout == ""  # nothing queued: JSON lines, none


def test_cli_human_output(pki: Pki, running: Cluster, tmp_path: Path) -> None:
    common = [
        "--gateway",
        running.gateways["gw-1"].address,
        "--certs",
        str(pki.identity("client", "default")),
    ]
    strife_cli(
        ["login", "-u", "bob", "--bank", "alpha", "--password-stdin", *common],
        home=tmp_path,
        stdin=PASSWORDS["bob"] + "\n",
    )
    paid = strife_cli(
        [
            "pay",
            "--to-bank",
            "alpha",
            "--to-account",
            "ada-usd",
            "--amount",
            "1.00",
            "--currency",
            "USD",
        ],
        home=tmp_path,
    )
    assert paid.returncode == 0 and "COMMITTED 1.00 USD alpha/bob-usd -> alpha/ada-usd" in (
        paid.stdout
    ), paid  # connection settings came from the profile saved at login
    table = strife_cli(["balance"], home=tmp_path).stdout.splitlines()
    assert table[0].split() == ["ACCOUNT", "CURRENCY", "BALANCE", "HELD", "AVAILABLE"]
    assert table[1].split()[0] == BOB and EVE not in table[1]
