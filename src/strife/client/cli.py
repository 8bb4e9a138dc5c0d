"""The customer commands of `strife`, built on `strife.client` alone.

The `strife` program (`strife.cli`) adds the operator's commands to these.

Every command first tries to deliver the profile's outbox (and says what
settled, on stderr), then does its own work. `--json` prints one JSON
document on stdout (JSON lines for `watch`), for scripts; errors then are
JSON too. Exit status: 0 done (a payment committed or queued), 1 error,
2 bad usage or input, 3 the payment settled ABORTED or FAILED.

Connection options (`--gateway`, `--balancer`, `--certs`) fall back to the
environment (`STRIFE_GATEWAY`, `STRIFE_BALANCER`, `STRIFE_CERTS`) and then to
what the profile's last `strife login` used.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from strife.client._auth import Credentials, Session
from strife.client._client import ClientConfig, DrainResult, StrifeClient
from strife.client._exceptions import ClientError, LoginRequired
from strife.client._models import (
    Balance,
    EntryState,
    LedgerEntry,
    OutboxEntry,
    Payment,
    PaymentResult,
    amount_text,
    check_idempotency_key,
    parse_amount_text,
)
from strife.client._profile import (
    load_config,
    load_session,
    outbox_path,
    profile_dir,
    save_config,
    save_session,
)
from strife.errors import StrifeError
from strife.money import MoneyError
from strife.observability.logging import configure_logging
from strife.rpc.server import install_stop_signals

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

DEFAULT_CERTS = "certs/client-default"
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_PAID = 1, 2, 3
MAX_HISTORY_LIMIT = 1000
MAX_LIST_LIMIT = 1000
DRAIN_FIRST_TIMEOUT_S = 5.0


# --------------------------------------------------------------------- options


def _common_options(func: F) -> F:
    options = [
        click.option(
            "--gateway",
            "gateways",
            multiple=True,
            envvar="STRIFE_GATEWAY",
            help="Gateway HOST:PORT (repeatable; tried in turn).",
        ),
        # The original design's spelling, kept working but not advertised.
        click.option("--gateway-addr", "gateway_aliases", multiple=True, hidden=True),
        click.option("--balancer", envvar="STRIFE_BALANCER", help="Balancer HOST:PORT."),
        click.option(
            "--certs",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="STRIFE_CERTS",
            help=f"Client identity folder (ca.crt, tls.crt, tls.key). [default: {DEFAULT_CERTS}]",
        ),
        click.option(
            "--profile",
            default="default",
            envvar="STRIFE_PROFILE",
            show_default=True,
            help="Outbox and token cache under $STRIFE_HOME/<profile>/ (~/.strife by default).",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
        click.option("--log-level", default="warning", show_default=True, hidden=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass(frozen=True)
class _Settings:
    gateways: tuple[str, ...]
    balancer: str | None
    certs: Path
    folder: Path
    as_json: bool


def _settings(options: dict[str, Any]) -> _Settings:
    configure_logging("json" if options["as_json"] else "console", options["log_level"])
    try:
        folder = profile_dir(options["profile"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from exc
    saved = load_config(folder)
    gateways: tuple[str, ...] = (*options["gateways"], *options["gateway_aliases"])
    balancer: str | None = options["balancer"]
    if not gateways and not balancer:  # nothing given: what the last login used
        gateways = tuple(saved.get("gateways") or ())
        balancer = saved.get("balancer") or None
    certs = Path(options["certs"] or saved.get("certs") or DEFAULT_CERTS)
    return _Settings(gateways, balancer, certs, folder, options["as_json"])


# ---------------------------------------------------------------------- output


def _emit(settings: _Settings, data: dict[str, Any], human: Callable[[], None]) -> None:
    if settings.as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        human()


def _fail(settings: _Settings | None, reason: str, message: str, exit_code: int) -> NoReturn:
    if settings is not None and settings.as_json:
        click.echo(json.dumps({"error": {"reason": reason, "message": message}}, sort_keys=True))
    else:
        click.echo(f"Error: {message}", err=True)
    sys.exit(exit_code)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _result_json(result: PaymentResult) -> dict[str, Any]:
    return {
        "entry_id": result.entry_id,
        "idempotency_key": result.idempotency_key,
        "state": str(result.state),
        "settled": result.settled,
        "transfer_id": result.transfer_id,
        "reason": result.reason,
        "last_error": result.last_error,
        "from": str(result.from_account),
        "to": str(result.to_account),
        "amount": result.amount,
        "amount_minor": result.amount_minor,
        "currency": result.currency,
    }


def _entry_json(entry: OutboxEntry) -> dict[str, Any]:
    return {
        **_result_json(PaymentResult.of(entry)),
        "keys": list(entry.keys),
        "description": entry.description,
        "sends": entry.sends,
        "resubmits": entry.resubmits,
        "gateway": entry.gateway,
        "customer_id": entry.customer_id,
        "created_at_unix_ms": entry.created_at_unix_ms,
        "updated_at_unix_ms": entry.updated_at_unix_ms,
    }


def _payment_json(payment: Payment) -> dict[str, Any]:
    return {
        "idempotency_key": payment.idempotency_key,
        "transfer_id": payment.transfer_id,
        "status": str(payment.status),
        "abort_reason": payment.abort_reason,
        "abort_transient": payment.abort_transient,
        "from": str(payment.from_account),
        "to": str(payment.to_account),
        "amount": amount_text(payment.amount_minor, payment.currency),
        "amount_minor": payment.amount_minor,
        "currency": payment.currency,
        "created_at_unix_ms": payment.created_at_unix_ms,
    }


def _balance_json(balance: Balance) -> dict[str, Any]:
    c = balance.currency
    return {
        "account": str(balance.account),
        "currency": c,
        "balance": amount_text(balance.balance_minor, c),
        "held": amount_text(balance.held_minor, c),
        "available": amount_text(balance.available_minor, c),
        "balance_minor": balance.balance_minor,
        "held_minor": balance.held_minor,
        "available_minor": balance.available_minor,
    }


def _ledger_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "sequence": entry.sequence,
        "transfer_id": entry.transfer_id,
        "account": str(entry.account),
        "amount": amount_text(entry.amount_minor, entry.currency),
        "amount_minor": entry.amount_minor,
        "currency": entry.currency,
        "counterparty": entry.counterparty,
        "posted_at_unix_ms": entry.posted_at_unix_ms,
    }


def _describe(result: PaymentResult) -> str:
    what = f"{result.amount} {result.currency} {result.from_account} -> {result.to_account}"
    if result.state == EntryState.COMMITTED:
        return f"#{result.entry_id} COMMITTED {what} (transfer {result.transfer_id})"
    if result.settled:
        return f"#{result.entry_id} {result.state} {what}: {result.reason}"
    note = f" (last error: {result.last_error})" if result.last_error else ""
    return f"#{result.entry_id} QUEUED {what}, key {result.idempotency_key}{note}"


def _print_settled(settings: _Settings, results: Sequence[PaymentResult]) -> None:
    """Outcomes delivered by the drain-first step go to stderr: stdout is the command's."""
    for result in results:
        if settings.as_json:
            click.echo(json.dumps({"event": "settled", **_result_json(result)}), err=True)
        else:
            click.echo(f"outbox: {_describe(result)}", err=True)


def _print_drain(settings: _Settings, drained: DrainResult) -> None:
    _print_settled(settings, drained.settled)
    if drained.waiting and not settings.as_json:
        if drained.delegated:
            why = "another strife process on this profile is delivering them"
        elif isinstance(drained.problem, LoginRequired):
            why = "log in to deliver them (strife login)"
        elif drained.problem is not None:
            why = f"will retry: {drained.problem}"
        else:
            why = "being delivered"
        click.echo(f"outbox: {drained.waiting} payment(s) queued; {why}", err=True)


# ---------------------------------------------------------------------- client


def _credential_provider(settings: _Settings) -> Callable[[], Awaitable[Credentials]]:
    """Re-login for an expired token: $STRIFE_PASSWORD, else a prompt on a terminal."""

    async def provide() -> Credentials:
        session = load_session(settings.folder)
        if session is None:
            raise LoginRequired("not logged in: run `strife login`")
        password = os.environ.get("STRIFE_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                raise LoginRequired("the access token expired: run `strife login`")
            password = await asyncio.to_thread(
                click.prompt,
                f"Password for {session.username} at {session.bank}",
                hide_input=True,
                err=True,
            )
        return Credentials(session.username, password, session.bank)

    return provide


def _client(
    settings: _Settings, *, background: bool = False, config: ClientConfig | None = None
) -> StrifeClient:
    if not settings.gateways and not settings.balancer:
        _fail(
            settings,
            "NO_GATEWAY",
            "no gateway: pass --gateway HOST:PORT or --balancer HOST:PORT (or log in with one)",
            EXIT_USAGE,
        )
    if not settings.certs.is_dir():
        _fail(
            settings,
            "NO_IDENTITY",
            f"no client identity folder at {settings.certs}: pass --certs DIR"
            " (make one with `strife-certs dev`)",
            EXIT_USAGE,
        )
    return StrifeClient(
        certs=settings.certs,
        gateways=settings.gateways,
        balancer=settings.balancer if not settings.gateways else None,
        outbox=outbox_path(settings.folder),
        credentials=_credential_provider(settings),
        session=load_session(settings.folder),
        on_session=lambda session: save_session(settings.folder, session),
        config=config or ClientConfig(drain_timeout_s=DRAIN_FIRST_TIMEOUT_S),
        background=background,
    )


def _run(settings: _Settings, body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the command; turn the library's errors into a message and an exit status."""
    try:
        return asyncio.run(body())
    except StrifeError as exc:
        _fail(settings, exc.reason or exc.code.name, str(exc), EXIT_ERROR)
    except MoneyError as exc:
        _fail(settings, exc.reason, str(exc), EXIT_USAGE)
    except ClientError as exc:
        _fail(settings, type(exc).__name__, str(exc), EXIT_ERROR)
    except ValueError as exc:
        _fail(settings, "INVALID_REQUEST", str(exc), EXIT_USAGE)
    except FileNotFoundError as exc:
        _fail(settings, "NOT_FOUND", str(exc), EXIT_ERROR)


async def _drain_first(settings: _Settings, client: StrifeClient) -> None:
    if client.session is None:
        return  # nobody ever logged in on this profile: nothing of theirs to deliver
    _print_drain(settings, await client.drain())


# --------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--username", help="Default user name for `login` (as the original quick start).")
@click.option("--gateway", help="Default gateway HOST:PORT for every command.")
@click.option("--gateway-addr", hidden=True, help="The original quick start's --gateway.")
def main(username: str | None, gateway: str | None, gateway_addr: str | None) -> None:
    """Pay, check balances and history, and manage the offline outbox."""
    # Options given before the command become the commands' defaults.
    if username:
        os.environ["STRIFE_USERNAME"] = username
    if gateway or gateway_addr:
        os.environ["STRIFE_GATEWAY"] = gateway or gateway_addr or ""


@main.command()
@click.option(
    "--username", "-u", envvar="STRIFE_USERNAME", help="Your user name (prompted when missing)."
)
@click.option("--bank", help="The bank that holds your credentials.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@_common_options
def login(username: str | None, bank: str | None, password_stdin: bool, **options: Any) -> None:
    """Log in at your bank through a gateway; caches a short-lived token (0600)."""
    settings = _settings(options)
    cached = load_session(settings.folder)
    username = username or (cached.username if cached else None) or click.prompt("Username")
    bank = bank or (cached.bank if cached else None) or click.prompt("Bank")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = os.environ.get("STRIFE_PASSWORD") or click.prompt(
            "Password", hide_input=True, err=True
        )
    assert username is not None and bank is not None

    async def body() -> Session:
        async with _client(settings) as client:
            session = await client.login(username, password, bank)
            save_config(
                settings.folder,
                {
                    "gateways": list(settings.gateways),
                    "balancer": settings.balancer,
                    "certs": str(settings.certs.resolve()),
                },
            )
            _print_drain(settings, await client.drain())
            return session

    session = _run(settings, body)
    expires_s = max(0, round(session.expires_in_s()))

    def human() -> None:
        click.echo(f"Logged in as {session.username} ({session.customer_id}) at {session.bank}.")
        for account in session.accounts:
            click.echo(f"  {account.ref}  {account.currency}")
        click.echo(f"Token valid for {expires_s} s.")

    _emit(
        settings,
        {
            "customer_id": session.customer_id,
            "username": session.username,
            "bank": session.bank,
            "accounts": [{"account": str(a.ref), "currency": a.currency} for a in session.accounts],
            "expires_at_unix_ms": session.expires_at_unix_ms,
        },
        human,
    )


@main.command()
@click.option("--to-bank", required=True, help="The payee's bank.")
@click.option("--to-account", required=True, help="The payee's account id.")
@click.option("--amount", "amount_text_", required=True, help='Decimal amount, e.g. "12.34".')
@click.option("--currency", required=True, help="ISO 4217 code, e.g. USD.")
@click.option("--from-account", help="Your account (id or BANK/ID); default: your one account.")
@click.option("--key", help="Idempotency key (16-255 of [A-Za-z0-9._:-]); default: random.")
@click.option("--description", default="", help="Free text (at most 256 characters).")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0, max=300),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the outcome before leaving it queued.",
)
@_common_options
def pay(
    to_bank: str,
    to_account: str,
    amount_text_: str,
    currency: str,
    from_account: str | None,
    key: str | None,
    description: str,
    wait_s: float,
    **options: Any,
) -> None:
    """Send a payment: stored in the outbox first, delivered exactly once."""
    settings = _settings(options)
    currency = currency.strip().upper()
    try:
        amount_minor = parse_amount_text(amount_text_, currency)
        if key is not None:
            check_idempotency_key(key)
    except MoneyError as exc:
        _fail(settings, exc.reason, str(exc), EXIT_USAGE)
    except ValueError as exc:
        _fail(settings, "INVALID_IDEMPOTENCY_KEY", str(exc), EXIT_USAGE)

    async def body() -> PaymentResult:
        async with _client(settings) as client:
            await _drain_first(settings, client)
            return await client.pay(
                f"{to_bank}/{to_account}",
                amount_minor,
                currency,
                from_account=from_account,
                description=description,
                key=key,
                wait_s=wait_s,
            )

    result = _run(settings, body)

    def human() -> None:
        click.echo(_describe(result))
        if result.queued:
            click.echo(
                "Queued in the outbox: the next strife command (or `strife watch`) delivers it.",
                err=True,
            )

    _emit(settings, {**_result_json(result), "queued": result.queued}, human)
    if result.settled and result.state != EntryState.COMMITTED:
        sys.exit(EXIT_NOT_PAID)


@main.command()
@click.argument("key")
@_common_options
def status(key: str, **options: Any) -> None:
    """A payment's state: the outbox's record and the gateway's (KEY or outbox id)."""
    settings = _settings(options)

    async def body() -> tuple[OutboxEntry | None, Payment | None, str]:
        async with _client(settings) as client:
            await _drain_first(settings, client)
            entry = None
            with suppress(ClientError):
                entry = await client.outbox_entry(key)
            lookup = entry.idempotency_key if entry is not None else key
            try:
                return entry, await client.payment_status(lookup), ""
            except (StrifeError, ClientError) as exc:
                if entry is None:
                    raise
                return entry, None, str(exc)

    entry, payment, problem = _run(settings, body)

    def human() -> None:
        if entry is not None:
            click.echo(f"outbox:  {_describe(PaymentResult.of(entry))}")
            if len(entry.keys) > 1:
                click.echo(f"         keys used: {', '.join(entry.keys)}")
        if payment is not None:
            reason = f" ({payment.abort_reason})" if payment.abort_reason else ""
            click.echo(
                f"gateway: {payment.status}{reason} transfer {payment.transfer_id},"
                f" {amount_text(payment.amount_minor, payment.currency)} {payment.currency}"
                f" {payment.from_account} -> {payment.to_account}"
            )
        else:
            click.echo(f"gateway: unknown ({problem})")

    _emit(
        settings,
        {
            "outbox": _entry_json(entry) if entry is not None else None,
            "gateway": _payment_json(payment) if payment is not None else None,
            "gateway_error": problem,
        },
        human,
    )


@main.command()
@click.option("--account", help="One account (id or BANK/ID); default: all of yours.")
@_common_options
def balance(account: str | None, **options: Any) -> None:
    """Balances of your accounts."""
    settings = _settings(options)

    async def body() -> list[Balance]:
        async with _client(settings) as client:
            await _drain_first(settings, client)
            if account is not None:
                return [await client.balance(account)]
            return await client.balances()

    balances = _run(settings, body)

    def human() -> None:
        _table(
            ["ACCOUNT", "CURRENCY", "BALANCE", "HELD", "AVAILABLE"],
            [
                [
                    str(b.account),
                    b.currency,
                    amount_text(b.balance_minor, b.currency),
                    amount_text(b.held_minor, b.currency),
                    amount_text(b.available_minor, b.currency),
                ]
                for b in balances
            ],
        )

    _emit(settings, {"balances": [_balance_json(b) for b in balances]}, human)


@main.command()
@click.option("--account", help="Account (id or BANK/ID); default: your one account.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_HISTORY_LIMIT),
    default=20,
    show_default=True,
    help="Newest entries to show.",
)
@_common_options
def history(account: str | None, limit: int, **options: Any) -> None:
    """Your account's ledger lines, newest first."""
    settings = _settings(options)

    async def body() -> list[LedgerEntry]:
        entries: list[LedgerEntry] = []
        async with _client(settings) as client:
            await _drain_first(settings, client)
            pages = client.history(account, page_size=min(limit, 200))
            async with aclosing(pages):  # stop fetching as soon as there are enough
                async for page in pages:
                    entries += page.entries
                    if len(entries) >= limit:
                        break
        return entries[:limit]

    entries = _run(settings, body)

    def human() -> None:
        _table(
            ["SEQ", "POSTED (UTC)", "AMOUNT", "CURRENCY", "COUNTERPARTY", "TRANSFER"],
            [
                [
                    str(e.sequence),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.posted_at_unix_ms / 1000)),
                    amount_text(e.amount_minor, e.currency),
                    e.currency,
                    e.counterparty,
                    e.transfer_id,
                ]
                for e in entries
            ],
        )

    _emit(settings, {"entries": [_ledger_json(e) for e in entries]}, human)


@main.group()
def outbox() -> None:
    """Inspect and manage the queued payments of this profile."""


@outbox.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in EntryState], case_sensitive=False),
    help="Only entries in this state (repeatable).",
)
@click.option("--limit", type=click.IntRange(1, MAX_LIST_LIMIT), default=100, show_default=True)
@_common_options
def outbox_list(states: tuple[str, ...], limit: int, **options: Any) -> None:
    """Entries, oldest first."""
    settings = _settings(options)
    wanted = [EntryState(s.upper()) for s in states] or None

    async def body() -> list[OutboxEntry]:
        async with _client(settings) as client:
            await _drain_first(settings, client)
            return await client.outbox_entries(wanted, limit=limit)

    entries = _run(settings, body)

    def human() -> None:
        _table(
            ["ID", "STATE", "AMOUNT", "CURRENCY", "FROM", "TO", "SENDS", "REASON", "KEY"],
            [
                [
                    str(e.id),
                    str(e.state),
                    e.amount,
                    e.currency,
                    str(e.from_account),
                    str(e.to_account),
                    str(e.sends),
                    e.reason or e.last_error.split(":")[0],
                    e.idempotency_key,
                ]
                for e in entries
            ],
        )

    _emit(settings, {"entries": [_entry_json(e) for e in entries]}, human)


@outbox.command("retry")
@click.argument("entries", nargs=-1, required=True)
@_common_options
def outbox_retry(entries: tuple[str, ...], **options: Any) -> None:
    """Send FAILED entries again (same key), or PENDING ones now (ENTRIES: ids or keys)."""
    settings = _settings(options)

    async def body() -> list[OutboxEntry]:
        async with _client(settings) as client:
            for name in entries:
                await client.retry(name)
            await _drain_first(settings, client)
            return [await client.outbox_entry(name) for name in entries]

    results = _run(settings, body)

    def human() -> None:
        for e in results:
            click.echo(_describe(PaymentResult.of(e)))

    _emit(settings, {"entries": [_entry_json(e) for e in results]}, human)


@outbox.command("cancel")
@click.argument("entry")
@_common_options
def outbox_cancel(entry: str, **options: Any) -> None:
    """Stop delivering a PENDING entry (ENTRY: id or key).

    The one command that does not drain first: that could send the very
    payment being cancelled.
    """
    settings = _settings(options)

    async def body() -> OutboxEntry:
        async with _client(settings) as client:
            return await client.cancel(entry)

    cancelled = _run(settings, body)

    def human() -> None:
        click.echo(_describe(PaymentResult.of(cancelled)))
        if cancelled.reason == "CANCELLED_UNCONFIRMED":
            click.echo(
                "It had been sent before and the gateway could not confirm it never arrived:"
                f" check `strife status {cancelled.idempotency_key}` before paying again.",
                err=True,
            )

    _emit(settings, _entry_json(cancelled), human)


@main.command()
@click.option("--until-empty", is_flag=True, help="Exit once nothing is queued.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Exit after this many seconds (status 1 if payments are still queued).",
)
@_common_options
def watch(until_empty: bool, timeout_s: float | None, **options: Any) -> None:
    """Keep delivering the outbox and print outcomes as they settle (JSON lines with --json)."""
    settings = _settings(options)

    async def body() -> int:
        stop = install_stop_signals()  # only when `strife` is the program
        loop = asyncio.get_running_loop()
        async with _client(settings, background=True) as client:
            outcomes = client.outcomes()
            if not settings.as_json:
                click.echo("Watching the outbox; Ctrl-C to stop.", err=True)
            deadline = None if timeout_s is None else loop.time() + timeout_s
            while not stop.is_set():
                if until_empty and not await client.queued():
                    return 0
                if deadline is not None and loop.time() >= deadline:
                    return EXIT_ERROR if until_empty else 0
                wait_s = 1.0 if deadline is None else max(0.0, min(1.0, deadline - loop.time()))
                try:
                    result = await asyncio.wait_for(anext(outcomes), wait_s)
                except (TimeoutError, StopAsyncIteration):
                    continue
                if settings.as_json:
                    click.echo(json.dumps({"event": "settled", **_result_json(result)}))
                else:
                    click.echo(_describe(result))
                sys.stdout.flush()
        return 0

    code = _run(settings, body)
    if code:
        sys.exit(code)
