"""Fixtures of the alerting tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stores import BACKENDS, pg_database


@pytest.fixture(params=BACKENDS)
def outbox_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where an outbox lives, on each backend in turn."""
    if request.param == "sqlite":
        yield str(tmp_path / "lookout.db")
        return
    with pg_database() as url:
        yield url
