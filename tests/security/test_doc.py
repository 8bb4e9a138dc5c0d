"""docs/security.md lists every attack of the suite with the answer the suite expects."""

from __future__ import annotations

import re
from pathlib import Path

from .cases import CASES

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ROW = re.compile(r"^\| `(?P<id>[A-Za-z0-9-]+)` \| .+ \| `(?P<code>[A-Z_]+)` \| (?P<reason>.+) \|$")


def test_doc_lists_every_case_with_its_answer() -> None:
    text = DOC.read_text()
    section = text[text.index("## The attack suite") :]
    rows = {m["id"]: (m["code"], m["reason"]) for m in map(ROW.match, section.splitlines()) if m}
    expected = {c.id: (c.code.name, f"`{c.reason}`" if c.reason else "—") for c in CASES}
    assert rows == expected
