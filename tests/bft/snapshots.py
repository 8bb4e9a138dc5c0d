"""Editing a paged snapshot as a forger would: change a page, give it a matching digest."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from strife.bft.bank_machine import canonical
from strife.bft.pages import Page, frame, unframe


def page_of(snapshot: bytes, name: str) -> Any:
    """The decoded body of page `name`."""
    return next(json.loads(p.body) for p in unframe(snapshot) if p.name == name)


def forge(snapshot: bytes, name: str, change: Callable[[Any], Any]) -> bytes:
    """`snapshot` with page `name` replaced by `change(its decoded body)`, re-hashed."""
    pages = unframe(snapshot)
    assert any(p.name == name for p in pages), [p.name for p in pages]
    return frame(
        [
            Page.of(p.name, canonical(change(json.loads(p.body)))) if p.name == name else p
            for p in pages
        ]
    )
