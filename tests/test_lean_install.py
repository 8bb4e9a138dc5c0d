"""What a plain `pip install strife` gets, and what importing the client does to its host."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import requires
from pathlib import Path

import click
import pytest

from strife import cli

DEV_ONLY = {"grpcio-tools", "matplotlib", "rich"}


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _name(requirement: str) -> str:
    for stop in "<>=!;[ ":
        requirement = requirement.split(stop)[0]
    return requirement.lower()


def test_a_plain_install_pulls_no_code_generator_plots_or_terminal_views() -> None:
    unconditional = {_name(r) for r in requires("strife") or [] if "extra ==" not in r}
    assert unconditional, "the installed metadata lists no requirement at all"
    assert not unconditional & DEV_ONLY
    loadgen = {_name(r) for r in requires("strife") or [] if 'extra == "loadgen"' in r}
    assert {"matplotlib", "rich"} <= loadgen


def test_the_client_imports_without_fcntl() -> None:
    done = _python(
        """
        import sys
        sys.modules["fcntl"] = None  # as on Windows: `import fcntl` raises ImportError
        import strife.client
        import strife.client.cli
        print("ok", strife.client.StrifeClient.__name__)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "StrifeClient"]


def test_importing_the_client_leaves_its_host_alone() -> None:
    done = _python(
        """
        import os, sys
        from prometheus_client import REGISTRY
        before = set(REGISTRY._names_to_collectors)
        import strife.client.cli
        added = sorted(
            n for n in set(REGISTRY._names_to_collectors) - before if n.startswith("strife_")
        )
        heavy = sorted(
            m for m in sys.modules
            if m.split(".")[0] == "matplotlib"
            or m.startswith(("strife.cluster", "strife.chaos", "strife.loadgen", "strife.bank"))
        )
        print(os.environ.get("GRPC_ENABLE_FORK_SUPPORT"), added, heavy)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None [] []"


def test_operator_commands_are_listed_without_importing_them() -> None:
    done = _python(
        """
        import sys
        from click.testing import CliRunner
        from strife.cli import main
        result = CliRunner().invoke(main, ["--help"])
        print(result.exit_code, "chaos" in result.output, "strife.chaos.cli" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True", "False"]


def test_an_operator_command_whose_extra_is_missing_says_which_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_plots.py").write_text("import plotting_library_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    lazy = cli._Lazy("needs_plots", "command", "needs a missing extra", "loadgen")
    with pytest.raises(click.ClickException) as caught:
        cli._load("plots", lazy)
    assert "plotting_library_not_installed" in caught.value.message
    assert "pip install 'strife[loadgen]'" in caught.value.message


def test_every_operator_command_resolves_to_a_click_command() -> None:
    for name, lazy in cli.OPERATOR_COMMANDS.items():
        command = cli._load(name, lazy)
        assert isinstance(command, click.Command), name


def test_every_program_claims_its_process_before_loading_grpc() -> None:
    """gRPC reads its fork-support setting when first loaded: a console script
    whose module imported it before `claim()` would run with the default."""
    done = _python(
        """
        import sys
        from importlib.metadata import distribution
        scripts = [e for e in distribution("strife").entry_points if e.group == "console_scripts"]
        for script in scripts:
            script.load()
        print(len(scripts), "grpc" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.split()
    assert int(count) >= 7
    assert loaded == "False"


def test_a_launched_command_sees_the_programs_environment_when_it_loads(tmp_path: Path) -> None:
    (tmp_path / "probe_command.py").write_text(
        textwrap.dedent(
            """
            import os
            import click
            AT_IMPORT = os.environ.get("GRPC_ENABLE_FORK_SUPPORT")

            @click.command()
            def main() -> None:
                print("fork support at import:", AT_IMPORT)
            """
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from strife.program import launcher; launcher('probe_command:main')()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"},
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "fork support at import: false"
