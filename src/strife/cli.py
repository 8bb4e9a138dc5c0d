"""`strife`: the one command line, for customers and for operators.

The customer commands (`login`, `pay`, `balance`, ...) come from
`strife.client.cli` and need nothing beyond the client library. The
operator's commands (a local cluster, the chaos test, the demo, the BFT
tools, Kubernetes manifests, the live view) are imported only when named, so
`strife pay` never loads the development cluster, and a lean install
(`pip install strife`, no extras) says which extra a command needs instead
of failing with a traceback.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import click

from strife.client.cli import main as customer


@dataclass(frozen=True)
class _Lazy:
    """Where an operator's command lives, and the extra its imports need."""

    module: str
    attribute: str
    help: str
    extra: str | None = None


OPERATOR_COMMANDS: dict[str, _Lazy] = {
    "cluster": _Lazy("strife.cluster.cli", "cluster", "Run a local cluster."),
    "demo": _Lazy("strife.cluster.demo", "demo", "Start a local cluster and make real payments."),
    "chaos": _Lazy("strife.chaos.cli", "chaos", "The Jepsen-style bank test.", "loadgen"),
    "bft": _Lazy("strife.bft.cli", "bft", "Byzantine fault tolerance tools."),
    "deploy": _Lazy("strife.deploy.cli", "deploy", "Kubernetes manifests.", "deploy"),
    "top": _Lazy("strife.top.cli", "top", "A live view of a running cluster.", "loadgen"),
}


class StrifeGroup(click.Group):
    """The customer group, plus operator commands loaded on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *OPERATOR_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        own = super().get_command(ctx, cmd_name)
        if own is not None or cmd_name not in OPERATOR_COMMANDS:
            return own
        return _load(cmd_name, OPERATOR_COMMANDS[cmd_name])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing the operator's commands must not import them (matplotlib, rich).
        rows = [
            (name, cmd.get_short_help_str())
            for name, cmd in sorted(self.commands.items())
            if not cmd.hidden
        ]
        with formatter.section("Customer commands"):
            formatter.write_dl(rows)
        with formatter.section("Operator commands"):
            formatter.write_dl([(name, lazy.help) for name, lazy in OPERATOR_COMMANDS.items()])


def _load(name: str, lazy: _Lazy) -> click.Command:
    try:
        module = importlib.import_module(lazy.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "strife":
            raise
        extra = lazy.extra or "dev"
        raise click.ClickException(
            f"`strife {name}` needs {exc.name}, which this install lacks: "
            f"pip install 'strife[{extra}]'"
        ) from exc
    command = getattr(module, lazy.attribute)
    assert isinstance(command, click.Command), f"{lazy.module}.{lazy.attribute}"
    return command


main = StrifeGroup(
    name="strife",
    commands=customer.commands,
    callback=customer.callback,
    params=customer.params,
    help=customer.help,
    context_settings=customer.context_settings,
)
