"""`strife bft generals`: run OM(m), print its rounds and votes, and judge IC1 and IC2.

Exit status 0 when the loyal lieutenants agree and obey a loyal commander,
1 when they do not (the last line says whether n <= 3m or too many traitors
explains it), 2 for bad usage, 3 when a run over gRPC could not be completed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import click

from strife.bft.generals import (
    COMMANDER,
    DEFAULT,
    Message,
    Order,
    Outcome,
    Path,
    Setup,
    Verdict,
    messages_in_round,
    name,
    path_text,
    plan,
    run,
    strategy_names,
    total_messages,
)
from strife.bft.generals_signed import SignedOutcome, run_signed

EXIT_VIOLATED = 1
EXIT_RUN_FAILED = 3
# A round printed message by message while it has at most this many relaying paths;
# beyond it, one line per sender.
FULL_TRACE_PATHS = 40
# OM(m) grows as n^(m+1): 13 generals under OM(4) are 108,384 messages, 16 under
# OM(5) nearly four million.
MAX_MESSAGES = 200_000


def letter(value: Order | None) -> str:
    return "-" if value is None else value.name[0]


def held_values(outcome: Outcome) -> dict[tuple[Path, int], Order]:
    """What each sender held when it sent along a path: the commander its order,
    a lieutenant the value it received (the default when it heard nothing)."""
    held: dict[tuple[Path, int], Order] = {((), COMMANDER): outcome.setup.order}
    for msg in (m for r in outcome.rounds for m in r):
        held[(msg.path, msg.receiver)] = DEFAULT if msg.value is None else msg.value
    return held


def _is_lie(msg: Message, held: dict[tuple[Path, int], Order]) -> bool:
    return msg.value is not None and msg.value is not held[(msg.path[:-1], msg.sender)]


def _round_title(outcome: Outcome, k: int) -> str:
    n, what = outcome.setup.n, "the commander gives its order"
    if k == 2:
        what = "each lieutenant tells the others what C said"
    elif k > 2:
        what = f"each lieutenant tells the others what it heard along paths of {k - 1}"
    sent = sum(1 for msg in outcome.rounds[k - 1] if msg.value is not None)
    return f"round {k}: {messages_in_round(n, k)} messages, {sent} sent ({what})"


def _full_round(messages: Sequence[Message], held: dict[tuple[Path, int], Order]) -> list[str]:
    by_path: dict[Path, list[Message]] = {}
    for msg in messages:
        by_path.setdefault(msg.path, []).append(msg)
    width = max((len(path_text(p)) for p in by_path), default=0)
    lines = []
    for path, sent in by_path.items():
        cells = [
            f"{name(m.receiver)}:{letter(m.value)}{'*' if _is_lie(m, held) else ''}" for m in sent
        ]
        lines.append(f"  {path_text(path):<{width}} -> {' '.join(cells)}")
    return lines


def _compact_round(
    setup: Setup, messages: Sequence[Message], held: dict[tuple[Path, int], Order]
) -> list[str]:
    by_sender: dict[int, list[Message]] = {}
    for msg in messages:
        by_sender.setdefault(msg.sender, []).append(msg)
    lines = []
    for sender in sorted(by_sender):
        sent = by_sender[sender]
        counts = Counter(letter(m.value) for m in sent)
        lies = sum(1 for m in sent if _is_lie(m, held))
        who = f"{name(sender)} ({setup.strategy(sender).name})"
        tally = ", ".join(f"{counts[c]} {c}" for c in "AR-" if counts[c])
        lines.append(f"  {who:<14} {len(sent):>5} messages: {tally}; {lies} altered")
    return lines


def trace_lines(outcome: Outcome, mode: str = "auto") -> list[str]:
    """The rounds, one block each: message by message (`*` a value its sender
    altered, `-` nothing sent), or one line per sender for big rounds."""
    held = held_values(outcome)
    lines = []
    for k, messages in enumerate(outcome.rounds, start=1):
        lines.append(_round_title(outcome, k))
        paths = len({m.path for m in messages})
        full = mode == "full" or (mode == "auto" and paths <= FULL_TRACE_PATHS)
        if full:
            lines += _full_round(messages, held)
        else:
            lines += _compact_round(outcome.setup, messages, held)
    return lines


def vote_lines(outcome: Outcome) -> list[str]:
    lines = [
        "votes of the loyal lieutenants (C: the order as heard; Lj: what OM(m-1) from Lj gave):"
    ]
    for g, vote in sorted(outcome.votes.items()):
        cells = [f"C:{letter(vote.direct)}"]
        cells += [f"{name(j)}:{letter(v)}" for j, v in sorted(vote.relayed.items())]
        values = [vote.direct, *vote.relayed.values()]
        tally = f"{values.count(Order.ATTACK)} A, {values.count(Order.RETREAT)} R"
        lines.append(f"  {name(g):<4} {' '.join(cells)} -> {vote.decision.name} ({tally})")
    return lines


def header_lines(outcome: Outcome) -> list[str]:
    setup = outcome.setup
    n, m, t = setup.n, setup.m, len(setup.traitors)
    traitors = ", ".join(f"{name(g)} ({s.name})" for g, s in sorted(setup.traitors.items()))
    counts = " + ".join(str(len(r)) for r in outcome.rounds)
    return [
        f"OM({m}) with n={n}: commander C, lieutenants L1..L{n - 1}; "
        f"C {'is loyal and orders' if setup.is_loyal(COMMANDER) else 'is a traitor; its order is'} "
        f"{setup.order.name}",
        f"traitors: {traitors or 'none'} (seed {setup.seed})",
        f"bound: {_bound(n, m, t)}",
        f"messages: {counts} = {sum(len(r) for r in outcome.rounds)} in {m + 1} rounds "
        f"({outcome.sent} sent)",
        f"reading: {_reading(m)}; * a value its sender altered, - nothing sent (heard as RETREAT)",
    ]


def _reading(m: int) -> str:
    if m >= 2:
        return "`C>L1>L2 -> L3:R` is L2 telling L3 that L1 said C said RETREAT"
    if m == 1:
        return "`C>L1 -> L2:R` is L1 telling L2 that C said RETREAT"
    return "`C -> L1:A` is C ordering L1 to ATTACK"


def _bound(n: int, m: int, traitors: int) -> str:
    relation = f"n={n} {'>' if n > 3 * m else '<='} 3m={3 * m}"
    count = (
        f"{traitors} traitor{'s' if traitors != 1 else ''} {'<=' if traitors <= m else '>'} m={m}"
    )
    return f"{relation}, {count}"


def verdict_lines(
    setup: Setup, decisions: Mapping[int, Order], verdict: Verdict, signed: bool = False
) -> list[str]:
    decided = sorted({d.name for d in decisions.values()})
    loyal = len(decisions)
    if verdict.agreement and loyal == 0:
        ic1 = "holds (no loyal lieutenant to disagree)"
    elif verdict.agreement:
        who = (
            "the loyal lieutenant decides"
            if loyal == 1
            else f"all {loyal} loyal lieutenants decide"
        )
        ic1 = f"holds ({who} {decided[0]})"
    else:
        split = Counter(d.name for d in decisions.values())
        ic1 = (
            "VIOLATED ("
            + ", ".join(f"{c} decide{'s' if c == 1 else ''} {v}" for v, c in sorted(split.items()))
            + ")"
        )
    if verdict.validity is None:
        ic2 = "not asked (the commander is a traitor)"
    elif verdict.validity:
        ic2 = (
            f"holds (the loyal commander ordered {setup.order.name}; every loyal lieutenant obeys)"
        )
    else:
        ic2 = (
            f"VIOLATED (the loyal commander ordered {setup.order.name}; not every lieutenant obeys)"
        )
    conclusion = _signed_conclusion(setup, verdict) if signed else _conclusion(setup, verdict)
    return [f"IC1 agreement: {ic1}", f"IC2 validity:  {ic2}", conclusion]


def _signed_conclusion(setup: Setup, verdict: Verdict) -> str:
    m, t = setup.m, len(setup.traitors)
    if verdict.holds:
        if verdict.guaranteed:
            return f"verdict: OK (at most m traitors: SM({m}) guarantees both, whatever n)"
        return f"verdict: OK this time, though {t} traitors > m={m}"
    if not verdict.guaranteed:
        return (
            f"verdict: VIOLATED, as the bound allows ({t} traitors > m={m}: SM({m}) tolerates {m})"
        )
    return f"verdict: VIOLATED with at most m traitors: a bug in SM({m})"


def _conclusion(setup: Setup, verdict: Verdict) -> str:
    n, m, t = setup.n, setup.m, len(setup.traitors)
    if verdict.holds:
        if verdict.guaranteed:
            return f"verdict: OK (n > 3m with at most m traitors: OM({m}) guarantees both)"
        return f"verdict: OK this time, though nothing guarantees it ({_bound(n, m, t)})"
    reasons = []
    if n <= 3 * m:
        reasons.append(
            f"n={n} <= 3m={3 * m}: no oral-messages algorithm can guarantee both against m traitors"
        )
    if t > m:
        reasons.append(f"{t} traitors > m={m}: OM({m}) tolerates at most {m}")
    if reasons:
        return "verdict: VIOLATED, as the bound allows (" + "; ".join(reasons) + ")"
    return f"verdict: VIOLATED although n > 3m with at most m traitors: a bug in OM({m})"


TRANSPORTS = {
    "memory": "computed in memory",
    "grpc": "played over gRPC with mutual TLS, one server per general, in one process",
    "processes": "played over gRPC with mutual TLS, one process per general",
}


def report_lines(outcome: Outcome, mode: str = "auto", transport: str = "memory") -> list[str]:
    verdict = outcome.verdict()
    return [
        *header_lines(outcome),
        f"rounds: {TRANSPORTS[transport]}",
        "",
        *trace_lines(outcome, mode),
        "",
        *vote_lines(outcome),
        "",
        *verdict_lines(outcome.setup, outcome.decisions, verdict),
    ]


def signed_report_lines(outcome: SignedOutcome) -> list[str]:
    """SM(m)'s rounds, one line per signed value and chain with its receivers
    (`*` an order its commander did not give, `!` a forgery, dropped), then
    each loyal lieutenant's set of orders."""
    setup = outcome.setup
    n, m, t = setup.n, setup.m, len(setup.traitors)
    traitors = ", ".join(f"{name(g)} ({s.name})" for g, s in sorted(setup.traitors.items()))
    forged = sum(1 for r in outcome.rounds for msg in r if not msg.valid)
    lines = [
        f"SM({m}) with n={n}, signed messages: C "
        f"{'is loyal and orders' if setup.is_loyal(COMMANDER) else 'is a traitor; its order is'} "
        f"{setup.order.name}",
        f"traitors: {traitors or 'none'} (seed {setup.seed})",
        f"bound: {t} traitor{'s' if t != 1 else ''} {'<=' if t <= m else '>'} m={m} (any n)",
        f"messages: {' + '.join(str(len(r)) for r in outcome.rounds)} in {m + 1} rounds, "
        f"{forged} forged",
        "reading: `A  C>L1 -> L2 L3` is L1 passing C's signed ATTACK, countersigned, to L2 "
        "and L3; * not the commander's order, ! a forgery (dropped)",
        "",
    ]
    for k, messages in enumerate(outcome.rounds, start=1):
        lines.append(f"round {k}: {len(messages)} messages")
        groups: dict[tuple[Order, tuple[int, ...], bool], list[int]] = {}
        for msg in messages:
            key = (msg.order.value, msg.order.signers, msg.valid)
            groups.setdefault(key, []).append(msg.receiver)
        for (value, signers, valid), receivers in groups.items():
            mark = "!" if not valid else "*" if value is not setup.order else " "
            chain = ">".join(name(g) for g in signers)
            lines.append(f"  {letter(value)}{mark} {chain} -> {' '.join(map(name, receivers))}")
    lines += [
        "",
        "orders each loyal lieutenant saw validly signed (one: obey it; none or two: RETREAT):",
    ]
    for g, seen in sorted(outcome.seen.items()):
        shown = ", ".join(sorted(letter(v) for v in seen))
        lines.append(f"  {name(g):<4} V={{{shown}}} -> {outcome.decisions[g].name}")
    return [*lines, "", *verdict_lines(setup, outcome.decisions, outcome.verdict(), signed=True)]


Runner = Callable[[Setup], Outcome]


def _runner(transport: str, round_timeout_s: float) -> Runner:
    if transport == "memory":
        return run
    from strife.bft.generals_net import run_in_loop, run_processes

    if transport == "grpc":
        return lambda setup: asyncio.run(run_in_loop(setup, round_timeout_s))
    return lambda setup: run_processes(setup, round_timeout_s)


@click.command()
@click.option(
    "--n",
    "n",
    type=click.IntRange(min=2),
    default=7,
    show_default=True,
    help="Generals, the commander included.",
)
@click.option(
    "--traitors",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="How many generals lie, picked by the seed.",
)
@click.option(
    "--m",
    "m",
    type=click.IntRange(min=0),
    default=None,
    help="The m of OM(m): the traitors it is built for (m + 1 rounds). [default: --traitors]",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    help="Picks the traitors, their strategies and their random values.",
)
@click.option(
    "--order",
    type=click.Choice([o.value for o in Order]),
    default=Order.ATTACK.value,
    show_default=True,
    help="The commander's order (a traitorous commander may send others).",
)
@click.option("--traitor-commander", is_flag=True, help="The commander is one of the traitors.")
@click.option(
    "--strategy",
    type=click.Choice(strategy_names()),
    default="mixed",
    show_default=True,
    help="How the traitors lie; mixed: each draws one from the seed.",
)
@click.option(
    "--trace",
    "mode",
    type=click.Choice(["auto", "full", "compact"]),
    default="auto",
    show_default=True,
    help="Every message, or one line per sender per round.",
)
@click.option(
    "--transport",
    type=click.Choice(list(TRANSPORTS)),
    default="memory",
    show_default=True,
    help="Compute the rounds in memory, or play them out over gRPC between servers "
    "in this process or between one process per general.",
)
@click.option(
    "--round-timeout",
    "round_timeout_s",
    type=click.FloatRange(min=0.01),
    default=2.0,
    show_default=True,
    help="Over gRPC: how long a general waits in a round for a peer that sends nothing.",
)
@click.option(
    "--signed",
    is_flag=True,
    help="Run SM(m), the signed-messages algorithm, instead of OM(m) (in memory).",
)
def generals(
    n: int,
    traitors: int,
    m: int | None,
    seed: int,
    order: str,
    traitor_commander: bool,
    strategy: str,
    mode: str,
    transport: str,
    round_timeout_s: float,
    signed: bool,
) -> None:
    """Lamport, Shostak and Pease's oral-messages algorithm OM(m), with traitors.

    Prints each round's messages, each loyal lieutenant's majority vote and
    whether IC1 (agreement) and IC2 (validity) hold; exits 1 when they do not.
    """
    try:
        setup = plan(
            n,
            traitors,
            m=m,
            seed=seed,
            order=Order(order),
            traitor_commander=traitor_commander,
            strategy=strategy,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    slots = total_messages(setup.n, setup.m)
    if not signed and slots > MAX_MESSAGES:
        raise click.UsageError(
            f"OM({setup.m}) among {setup.n} generals is {slots:,} messages; "
            f"at most {MAX_MESSAGES:,} here (a smaller --m, or --signed)"
        )
    if signed:
        if transport != "memory":
            raise click.UsageError("--signed runs in memory only")
        signed_outcome = run_signed(setup)
        click.echo("\n".join(signed_report_lines(signed_outcome)))
        if not signed_outcome.verdict().holds:
            raise SystemExit(EXIT_VIOLATED)
        return
    try:
        outcome = _runner(transport, round_timeout_s)(setup)
    except (TimeoutError, RuntimeError, OSError) as exc:
        click.echo(f"error: the generals' run failed: {exc}", err=True)
        raise SystemExit(EXIT_RUN_FAILED) from exc
    click.echo("\n".join(report_lines(outcome, mode, transport)))
    if not outcome.verdict().holds:
        raise SystemExit(EXIT_VIOLATED)
