"""Store tests run on both backends: `store_url` is SQLite in tmp_path or a database on a real PostgreSQL server."""

from __future__ import annotations

import pytest


@pytest.fixture
def store_url(any_store_url: str) -> str:
    """A fresh, empty store URL (parametrized over SQLite and PostgreSQL in tests/conftest.py)."""
    return any_store_url
