"""One cluster of real processes for the whole attack suite; its logs are scanned last."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from ..conftest import Pki
from .harness import Session, World, running_world, session
from .logscan import secrets_in


@pytest.fixture(scope="package")
def world(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_world(pki, tmp_path_factory.mktemp("attacks")) as w:
        yield w
    # Stopped now, so every line is on disk: the complete logs, scanned once more.
    assert secrets_in(w.log_paths(), list(w.tokens.values())) == []


@pytest.fixture
async def s(world: World) -> AsyncIterator[Session]:
    async with session(world) as opened:
        yield opened
