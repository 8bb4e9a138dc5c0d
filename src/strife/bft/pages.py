"""Paged state: a checkpoint costs what changed since the last one, not all that is kept.

An application's state is cut into pages, each one canonical byte string with
its SHA-256. The state digest hashes the list of (page name, page digest), so
after a batch only the pages it touched are rendered and hashed again; a
snapshot is the pages framed one after another, so a journal can keep each
page once and write only the pages it does not hold yet (`Journal`), and a
replica installing a snapshot from a peer checks every page against its
digest (`unframe`) before the state digest is compared with the
certified one.

`Pager` assigns keys to pages in the order they first appear, which is the
agreed execution order and so the same at every honest replica: new records
fill the newest page and an update touches the page its record already lives
in. A key that leaves every container leaves its page too, so a state
restored from pages (where only present keys are seen) lays out exactly as
the state that was saved.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "MAGIC",
    "Page",
    "Pager",
    "Tracked",
    "frame",
    "frames",
    "is_paged",
    "root_digest",
    "split",
    "unframe",
]

MAGIC = b"strife-bft/pages/v1\n"
_HEADER = struct.Struct(">H32sI")  # name length, page digest, body length

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Page:
    name: str
    digest: bytes
    body: bytes

    @classmethod
    def of(cls, name: str, body: bytes) -> Page:
        return cls(name, hashlib.sha256(body).digest(), body)


def frame(pages: Iterable[Page]) -> bytes:
    """The pages as one snapshot: the magic, then name, digest and body per page."""
    parts = [MAGIC]
    for page in pages:
        name = page.name.encode()
        parts += [_HEADER.pack(len(name), page.digest, len(page.body)), name, page.body]
    return b"".join(parts)


def is_paged(snapshot: bytes) -> bool:
    return snapshot.startswith(MAGIC)


def frames(snapshot: bytes) -> Iterator[tuple[str, bytes, memoryview]]:
    """Each page's name, claimed digest and body (a view: nothing is copied or checked)."""
    if not is_paged(snapshot):
        raise ValueError("not a paged snapshot")
    view = memoryview(snapshot)
    at = len(MAGIC)
    while at < len(view):
        if at + _HEADER.size > len(view):
            raise ValueError("truncated page header")
        name_len, digest, body_len = _HEADER.unpack_from(view, at)
        at += _HEADER.size
        end = at + name_len + body_len
        if end > len(view):
            raise ValueError("truncated page")
        yield bytes(view[at : at + name_len]).decode(), digest, view[at + name_len : end]
        at = end


def unframe(snapshot: bytes) -> list[Page]:
    """The pages of a snapshot from anywhere: each body must hash to its digest, and
    names must be unique and ascending."""
    pages: list[Page] = []
    for name, digest, body in frames(snapshot):
        page = Page.of(name, bytes(body))
        if page.digest != digest:
            raise ValueError(f"page {name!r} does not match its digest")
        if pages and name <= pages[-1].name:
            raise ValueError("pages out of order")
        pages.append(page)
    return pages


def split(snapshot: bytes, limit: int) -> list[bytes]:
    """A snapshot cut into pieces of at most `limit` bytes, for state transfer.

    A paged snapshot is cut between pages only, where a page's digest says so
    (about one page in eight) or the next page would not fit: boundaries follow
    the pages' content, not their offsets, so a page that changed, grew or
    shrank changes only the piece it is in, and a replica that holds an earlier
    state has most pieces already. A page larger than `limit`, or a snapshot
    that is not paged, is cut at fixed offsets."""
    if not is_paged(snapshot):
        return _fixed(snapshot, limit)
    pieces: list[bytes] = []
    start = at = len(MAGIC)
    head = snapshot[:at]
    while at < len(snapshot):
        name_len, digest, body_len = _HEADER.unpack_from(snapshot, at)
        end = at + _HEADER.size + name_len + body_len
        if end - at > limit:  # one oversized page: its own pieces
            if at > start:
                pieces.append(head + snapshot[start:at])
                head = b""
            pieces += _fixed(head + snapshot[at:end], limit)
            head, start, at = b"", end, end
            continue
        if end - start + len(head) > limit:
            pieces.append(head + snapshot[start:at])
            head, start = b"", at
        at = end
        if digest[0] < 32:
            pieces.append(head + snapshot[start:at])
            head, start = b"", at
    if at > start or head or not pieces:
        pieces.append(head + snapshot[start:at])
    return pieces


def _fixed(data: bytes, limit: int) -> list[bytes]:
    return [data[i : i + limit] for i in range(0, len(data), limit)] or [b""]


def root_digest(prefix: bytes, pages: Iterable[Page]) -> bytes:
    """The state digest: every page's name and digest, in order."""
    h = hashlib.sha256(prefix)
    for page in pages:
        name = page.name.encode()
        h.update(struct.pack(">H", len(name)) + name + page.digest)
    return h.digest()


class Pager:
    """Which page each key of one kind of record lives in, and which pages changed."""

    def __init__(self, kind: str, per_page: int) -> None:
        self.kind = kind
        self.per_page = per_page
        self.next_slot = 0
        self.page_of: dict[str, int] = {}
        self.members: dict[int, set[str]] = {}
        self.dirty: set[int] = set()
        self._rendered: dict[int, Page] = {}

    def name(self, index: int) -> str:
        return f"{self.kind}/{index:08d}"

    def touch(self, key: str, present: bool) -> None:
        """`key` changed; `present` says whether any record of it is still kept."""
        page = self.page_of.get(key)
        if page is None:
            if not present:
                return
            page = self.page_of[key] = self.next_slot // self.per_page
            self.next_slot += 1
            self.members.setdefault(page, set()).add(key)
        elif not present:
            del self.page_of[key]
            self.members[page].discard(key)
        self.dirty.add(page)

    def pages(self, render: Callable[[list[str]], bytes]) -> Iterator[Page]:
        """Every non-empty page, rendering again only those that changed."""
        for index in sorted(self.dirty):
            keys = sorted(self.members.get(index, ()))
            if keys:
                self._rendered[index] = Page.of(self.name(index), render(keys))
            else:
                self._rendered.pop(index, None)
                self.members.pop(index, None)
        self.dirty.clear()
        for index in sorted(self._rendered):
            yield self._rendered[index]

    def load(self, pages: Iterable[tuple[Page, Iterable[str]]], next_slot: int) -> None:
        """Lay out as saved: each page with the keys it holds (already verified)."""
        self.next_slot = next_slot
        self.page_of, self.members, self.dirty, self._rendered = {}, {}, set(), {}
        for page, keys in pages:
            index = int(page.name.rpartition("/")[2])
            if page.name != self.name(index) or index * self.per_page >= max(next_slot, 1):
                raise ValueError(f"page {page.name!r} is not a {self.kind} page")
            held = set(keys)
            if not held or held & self.page_of.keys():
                raise ValueError(f"page {page.name!r} holds no key, or a key twice")
            self.page_of.update(dict.fromkeys(held, index))
            self.members[index] = held
            self._rendered[index] = page


class Tracked(dict[str, V]):
    """A dict that reports each key written or deleted (values are replaced, never
    mutated in place, by the code that uses one)."""

    def __init__(self, items: Any, on_change: Callable[[str], None]) -> None:
        super().__init__(items)
        self._on_change = on_change

    def __setitem__(self, key: str, value: V) -> None:
        super().__setitem__(key, value)
        self._on_change(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._on_change(key)

    def pop(self, key: str, *default: Any) -> Any:
        value = super().pop(key, *default)
        self._on_change(key)
        return value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def popitem(self) -> tuple[str, V]:
        key, value = super().popitem()
        self._on_change(key)
        return key, value

    def clear(self) -> None:
        keys = list(self)
        super().clear()
        for key in keys:
            self._on_change(key)

    def __ior__(self, other: Any) -> Tracked[V]:  # type: ignore[override,misc]
        self.update(other)
        return self
