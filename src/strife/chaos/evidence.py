"""What the cluster's logs said about the transfers a failed check names.

A chaos run that fails in CI leaves nothing behind but what CI printed: its
cluster folder goes with the test's temporary directory. So a failed run
writes `evidence.txt` next to its report, the last log lines of every
process that mention the transfer ids of the first few examples of each
failed check, and CI prints that file after a failed test run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from strife.chaos.history import History
from strife.gateway.service import transfer_id_for

__all__ = ["EXAMPLES_PER_CHECK", "LINES_PER_TRANSFER", "transfer_ids", "write_evidence"]

EXAMPLES_PER_CHECK = 3
LINES_PER_TRANSFER = 12
LINE_CHARS = 400


def transfer_ids(history: History, examples: dict[str, list[Any]]) -> dict[str, list[str]]:
    """check -> the transfer ids its first examples name (by key, keys or id)."""
    by_key = {
        key: transfer_id_for(intent.bank, intent.customer_id, key)
        for intent in history.intents.values()
        for key in intent.keys
    }
    named: dict[str, list[str]] = {}
    for check, found in examples.items():
        ids: list[str] = []
        for example in found[:EXAMPLES_PER_CHECK]:
            if not isinstance(example, dict):
                continue
            keys = [example["key"]] if "key" in example else list(example.get("keys", []))
            ids += [by_key[k] for k in keys if k in by_key]
            if "transfer_id" in example:
                ids.append(str(example["transfer_id"]))
        if ids:
            named[check] = list(dict.fromkeys(ids))
    return named


def write_evidence(path: Path, logs: Path, named: dict[str, list[str]]) -> Path:
    """The log lines about each named transfer, oldest first, per process."""
    wanted = {tid for ids in named.values() for tid in ids}
    seen = _lines_mentioning(sorted(logs.glob("*.log")), wanted)
    with path.open("w") as out:
        for check, ids in named.items():
            for tid in ids:
                out.write(f"== {check}: transfer {tid}\n")
                lines = seen.get(tid, [])
                if not lines:
                    out.write("   (no log line mentions it)\n")
                for process, line in lines[-LINES_PER_TRANSFER:]:
                    out.write(f"   {process}: {line[:LINE_CHARS]}\n")
    return path


def _lines_mentioning(files: Iterable[Path], wanted: set[str]) -> dict[str, list[tuple[str, str]]]:
    seen: dict[str, list[tuple[str, str]]] = {}
    for file in files:
        for line in _read(file):
            for tid in wanted:
                if tid in line:
                    seen.setdefault(tid, []).append((file.stem, line.rstrip()))
    return seen


def _read(file: Path) -> Iterator[str]:
    with file.open(errors="replace") as lines:
        yield from lines
