"""Paged state: framing, page layout, change tracking, and a journal that keeps each page once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from strife.bft.journal import Journal, Saved
from strife.bft.pages import Page, Pager, Tracked, frame, root_digest, split, unframe


def _pages(*bodies: bytes) -> list[Page]:
    return [Page.of(f"p/{i:08d}", body) for i, body in enumerate(bodies)]


def test_a_framed_snapshot_gives_back_its_pages() -> None:
    pages = _pages(b"one", b"", b"three" * 1000)
    assert unframe(frame(pages)) == pages
    assert unframe(frame([])) == []


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.replace(b"three", b"thre3", 1),  # a body that no longer matches
        lambda s: s[:-1],  # truncated
        lambda s: s[: len(s) - 3000],  # truncated inside a header
        lambda s: b"x" + s,  # not a paged snapshot
    ],
)
def test_a_damaged_snapshot_is_refused(damage: object) -> None:
    snapshot = frame(_pages(b"one", b"two", b"three" * 1000))
    with pytest.raises(ValueError):
        unframe(damage(snapshot))  # type: ignore[operator]


def test_pages_out_of_order_are_refused() -> None:
    a, b = _pages(b"a", b"b")
    with pytest.raises(ValueError, match="order"):
        unframe(frame([b, a]))


def test_the_root_digest_covers_names_and_bodies() -> None:
    pages = _pages(b"a", b"b")
    base = root_digest(b"x", pages)
    assert root_digest(b"x", _pages(b"a", b"c")) != base
    assert root_digest(b"x", [Page.of("q/00000000", b"a"), pages[1]]) != base
    assert root_digest(b"y", pages) != base


def _render_counting(rendered: list[list[str]]) -> object:
    def render(keys: list[str]) -> bytes:
        rendered.append(keys)
        return ",".join(keys).encode()

    return render


def test_keys_fill_pages_in_order_and_a_change_renders_only_its_page() -> None:
    pager = Pager("t", per_page=2)
    for key in ("k1", "k2", "k3"):
        pager.touch(key, present=True)
    rendered: list[list[str]] = []
    render = _render_counting(rendered)
    names = [p.name for p in pager.pages(render)]  # type: ignore[arg-type]
    assert names == ["t/00000000", "t/00000001"]
    assert rendered == [["k1", "k2"], ["k3"]]
    rendered.clear()
    pager.touch("k2", present=True)
    assert [p.body for p in pager.pages(render)] == [b"k1,k2", b"k3"]  # type: ignore[arg-type]
    assert rendered == [["k1", "k2"]]
    rendered.clear()
    assert list(pager.pages(render)) != [] and rendered == []  # type: ignore[arg-type]
    # A key that leaves goes from its page; an emptied page goes altogether.
    pager.touch("k3", present=False)
    assert [p.body for p in pager.pages(render)] == [b"k1,k2"]  # type: ignore[arg-type]
    # A key coming back is a new key: it takes the next slot (3, on page 1), not its old one.
    pager.touch("k3", present=True)
    pager.touch("k4", present=True)
    assert [p.body for p in pager.pages(render)] == [b"k1,k2", b"k3", b"k4"]  # type: ignore[arg-type]


def test_a_pager_loaded_from_its_pages_lays_out_as_the_one_that_made_them() -> None:
    def render(keys: list[str]) -> bytes:
        return ",".join(keys).encode()

    made = Pager("t", per_page=3)
    for i in range(10):
        made.touch(f"k{i}", present=True)
    made.touch("k4", present=False)
    pages = list(made.pages(render))
    loaded = Pager("t", per_page=3)
    loaded.load([(p, p.body.decode().split(",")) for p in pages], made.next_slot)
    for pager in (made, loaded):
        pager.touch("k5", present=True)
        pager.touch("new", present=True)
    assert list(loaded.pages(render)) == list(made.pages(render))


def test_a_pager_refuses_pages_that_are_not_its_own() -> None:
    pager = Pager("t", per_page=2)
    with pytest.raises(ValueError):
        pager.load([(Page.of("u/00000000", b"a"), ["a"])], 1)
    with pytest.raises(ValueError):  # beyond the slots handed out
        pager.load([(Page.of("t/00000005", b"a"), ["a"])], 1)
    with pytest.raises(ValueError):  # one key in two pages
        pager.load([(Page.of("t/00000000", b"a"), ["a"]), (Page.of("t/00000001", b"a"), ["a"])], 4)


def test_a_tracked_dict_reports_every_write() -> None:
    seen: list[str] = []
    d: Tracked[int] = Tracked({"a": 1}, seen.append)
    d["b"] = 2
    del d["a"]
    d.pop("b")
    d.pop("zz", None)
    d.setdefault("c", 3)
    d.setdefault("c", 4)
    d.update({"e": 5})
    d |= {"f": 6}
    d.clear()
    assert seen == ["b", "a", "b", "zz", "c", "e", "f", "c", "e", "f"]
    assert d == {}


def _saved(seq: int, snapshot: bytes) -> Saved:
    return Saved(seq, bytes(32), (), snapshot, (), ())


def _page_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM page").fetchone()[0]
    return count


def test_a_journal_writes_only_new_pages_and_keeps_only_listed_ones(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "r.db", synchronous="NORMAL")
    first = frame(_pages(b"a" * 100, b"b" * 100, b"c" * 100))
    journal.write([], _saved(4, first))
    assert _page_rows(tmp_path / "r.db") == 3
    second = frame(_pages(b"a" * 100, b"B" * 100, b"c" * 100))
    journal.write([], _saved(8, second))
    # The changed page replaced its old self; the others were not written again.
    assert _page_rows(tmp_path / "r.db") == 3
    journal.close()
    reopened = Journal(tmp_path / "r.db", synchronous="NORMAL")
    saved = reopened.load()
    assert saved is not None and (saved.seq, saved.snapshot) == (8, second)
    # A snapshot that is not paged is kept whole, as before.
    reopened.write([], _saved(12, b'{"plain":1}'))
    loaded = reopened.load()
    assert loaded is not None and loaded.snapshot == b'{"plain":1}'
    assert _page_rows(tmp_path / "r.db") == 0


def test_a_journal_missing_a_page_of_its_checkpoint_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "r.db", synchronous="NORMAL")
    journal.write([], _saved(4, frame(_pages(b"a", b"b"))))
    journal.close()
    with sqlite3.connect(tmp_path / "r.db") as db:
        db.execute("DELETE FROM page WHERE digest = (SELECT min(digest) FROM page)")
    with pytest.raises(ValueError, match="missing"):
        Journal(tmp_path / "r.db", synchronous="NORMAL").load()


def test_a_snapshot_is_cut_between_pages_and_a_changed_page_changes_one_piece() -> None:
    bodies = [bytes([i % 251]) * (50 + (i * 37) % 900) for i in range(300)]
    pages = [Page.of(f"p/{i:08d}", body) for i, body in enumerate(bodies)]
    snapshot = frame(pages)
    for limit in (64, 4_000, 50_000, 10**9):
        pieces = split(snapshot, limit)
        assert b"".join(pieces) == snapshot
        assert all(len(piece) <= limit for piece in pieces)
    before = set(split(snapshot, 20_000))
    pages[150] = Page.of(pages[150].name, b"grown" * 300)
    after = split(frame(pages), 20_000)
    assert sum(piece not in before for piece in after) == 1
    # Not paged: fixed pieces; nothing at all: one empty piece.
    assert split(b"abcde", 2) == [b"ab", b"cd", b"e"]
    assert split(b"", 8) == [b""]
