"""A snapshot as plain text (for `--once`, logs and docs) or as rich renderables.

Both show the same columns; rich is imported only when a live view is drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from strife.top.snapshot import Pick, ProcessRow, Snapshot

if TYPE_CHECKING:
    from rich.console import RenderableType

COLUMNS = (
    "process",
    "role",
    "state",
    "rpc/s",
    "in flight",
    "2pc open",
    "in doubt",
    "unsettled",
    "commit ms",
    "rss MiB",
    "restarts",
)
RICH_HEADINGS = (
    "process",
    "role",
    "state",
    "rpc/s",
    "in\nflight",
    "2pc\nopen",
    "in\ndoubt",
    "un-\nsettled",
    "commit\nms",
    "rss\nMiB",
    "re-\nstarts",
)
BAR_WIDTH = 30


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cells(row: ProcessRow) -> tuple[str, ...]:
    if not row.up:
        return (row.name, row.role or "?", "DOWN", *("-",) * 7, str(row.restarts))
    return (
        row.name,
        row.role or "?",
        "up",
        _num(row.rpc_per_s),
        _num(row.rpc_in_flight, 0),
        _num(row.open_2pc, 0),
        _num(row.in_doubt, 0),
        _num(row.unsettled, 0),
        _num(row.commit_ms, 2),
        _num(None if row.rss_bytes is None else row.rss_bytes / 2**20),
        str(row.restarts),
    )


def headline(snap: Snapshot) -> str:
    rates = "  ".join(f"{state} {rate:,.1f}" for state, rate in snap.payments_per_s.items())
    p50, p99 = snap.latency_ms
    return (
        f"payments/s: {rates or 'none'}   "
        f"p50 {_num(p50)} ms  p99 {_num(p99)} ms   (over {snap.interval_s:.1f} s)"
    )


def _bar(pick: Pick) -> str:
    return "#" * round(pick.share * BAR_WIDTH)


def _pick_cells(pick: Pick) -> tuple[str, str, str, str]:
    return (pick.instance, f"{pick.total:,.0f}", f"{pick.per_s:,.1f}/s", f"{pick.share:.0%}")


def as_text(snap: Snapshot) -> str:
    rows = [COLUMNS, *(_cells(row) for row in snap.rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    left = {0, 1, 2}  # names left-aligned, numbers right-aligned
    lines = [headline(snap), ""]
    for row in rows:
        padded = (
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append("  ".join(padded).rstrip())
    lines += ["", "balancer picks of gateways (rate over the interval, share of all picks):"]
    if not snap.picks:
        lines.append("  none yet")
    picks = [_pick_cells(pick) for pick in snap.picks]
    pick_widths = [max((len(p[i]) for p in picks), default=0) for i in range(4)]
    for pick, cells in zip(snap.picks, picks, strict=True):
        name, total, rate, share = (
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, pick_widths, strict=True))
        )
        lines.append(f"  {name}  {total}  {rate}  {share}  {_bar(pick)}".rstrip())
    return "\n".join(lines) + "\n"


def as_rich(snap: Snapshot, title: str) -> RenderableType:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    # Fits 80 columns: light rules, a space between columns, two-line headings.
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=0,
    )
    for i, heading in enumerate(RICH_HEADINGS):
        table.add_column(heading, justify="left" if i < 3 else "right", no_wrap=True)
    for row in snap.rows:
        style = "bold red" if not row.up else ("yellow" if row.in_doubt else "")
        table.add_row(*_cells(row), style=style)
    picks = Table(
        title="balancer picks of gateways",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )
    for column in ("gateway", "picks", "rate", "share", ""):
        picks.add_column(column, justify="left" if column in ("gateway", "") else "right")
    for pick in snap.picks:
        picks.add_row(*_pick_cells(pick), Text(_bar(pick), style="cyan"))
    return Group(Text(headline(snap), style="bold"), table, Text(""), picks)
