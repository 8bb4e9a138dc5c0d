"""`strife demo` runs end to end and exits 0 only when every step behaved."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from strife.cluster.demo import MARKER, DemoFolderError, prepare_folder


def test_demo_runs_end_to_end() -> None:
    # As deploy/demo.sh runs it: no --data-dir, from the folder it is run in.
    strife = Path(sys.executable).parent / "strife"
    result = subprocess.run([str(strife), "demo"], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"(\d+)/(\d+) steps behaved as stated", result.stdout)
    assert summary and summary.group(1) == summary.group(2) and int(summary.group(2)) >= 11
    assert "[FAIL]" not in result.stdout
    # The replicated bank's step: the lying replica is named, and outvoted.
    assert re.search(r"\[ok  \] a payment of 25\.00 USD into vault.*vault-1 lies", result.stdout)
    assert "vault-1 outvoted" in result.stdout
    # A program's gRPC runs without fork handlers (its children are fork+exec).
    assert "fork_posix" not in result.stdout + result.stderr
    assert "total money across all banks is unchanged" in result.stdout
    # Everything is under .strife/demo (git-ignored), nothing in the tracked ./certs.
    demo = Path(".strife/demo")
    assert (demo / "certs" / "ca" / "ca.crt").exists()
    assert sorted(p.name for p in Path().iterdir()) == [".strife"]
    # The cluster is gone: nothing is left holding its state file.
    assert not (demo / "cluster.json").exists()


def test_each_run_starts_from_fresh_books_and_keeps_certificates(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    prepare_folder(root)
    made = ("data/bank-alpha.db", "logs/bank-alpha.log", "demo-outbox.db", "bft/vault/group.toml")
    for name in ("certs/ca/ca.crt", *made):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    prepare_folder(root)
    assert (root / "certs" / "ca" / "ca.crt").exists()
    assert not any((root / sub).exists() for sub in ("data", "logs", "bft"))
    assert not (root / "demo-outbox.db").exists()
    assert (root / MARKER).exists()


def test_a_folder_the_demo_did_not_make_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bank-alpha.db").write_text("someone's books")
    with pytest.raises(DemoFolderError, match="not made by `strife demo`"):
        prepare_folder(tmp_path)
    assert (tmp_path / "data" / "bank-alpha.db").read_text() == "someone's books"
