"""The drift check notices a .proto changed without regenerating."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _copy_tree(tmp_path: Path) -> Path:
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", work / "protos")
    shutil.copytree(ROOT / "tools", work / "tools")
    shutil.copytree(
        ROOT / "src" / "strife" / "v1",
        work / "src" / "strife" / "v1",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return work


def _check(work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(work / "tools" / "protogen.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_checked_in_code_matches_protos(tmp_path: Path) -> None:
    result = _check(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stderr


def test_changed_proto_without_regeneration_fails(tmp_path: Path) -> None:
    work = _copy_tree(tmp_path)
    proto = work / "protos" / "strife" / "v1" / "money.proto"
    proto.write_text(proto.read_text().replace("string currency = 2;", "string currency = 3;"))
    result = _check(work)
    assert result.returncode == 1
    assert "differs: money_pb2.py" in result.stderr


def test_stray_generated_file_fails(tmp_path: Path) -> None:
    work = _copy_tree(tmp_path)
    (work / "src" / "strife" / "v1" / "old_pb2.py").write_text("# left behind\n")
    result = _check(work)
    assert result.returncode == 1
    assert "not generated from protos/: old_pb2.py" in result.stderr
