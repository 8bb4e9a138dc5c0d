"""`strife demo` runs end to end and exits 0 only when every step behaved."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    strife = Path(sys.executable).parent / "strife"
    result = subprocess.run(
        [str(strife), "demo", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"(\d+)/(\d+) steps behaved as stated", result.stdout)
    assert summary and summary.group(1) == summary.group(2) and int(summary.group(2)) >= 10
    assert "[FAIL]" not in result.stdout
    assert "total money across all banks is unchanged" in result.stdout
    # The cluster is gone: nothing is left holding its state file.
    assert not (tmp_path / "demo" / "cluster.json").exists()
