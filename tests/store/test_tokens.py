"""API tokens on both backends: shown once, stored hashed, scoped, expiring, revocable."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from jobgraph.errors import StoreError
from jobgraph.store import Store
from jobgraph.store.tables import api_tokens
from jobgraph.store.tokens import PREFIX, Scope, Tokens, token_hash

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_token_is_stored_only_as_its_hash_and_verifies(store_url: str, tmp_path: Path) -> None:
    with Store(store_url) as records:
        tokens = Tokens(records)
        secret, _ = tokens.create("ci", Scope.OPERATE, NOW)
        assert secret.startswith(PREFIX) and len(secret) > 40
        with records.engine.connect() as conn:
            rows = conn.execute(select(api_tokens)).mappings().all()
        assert [row["token_hash"] for row in rows] == [token_hash(secret)]
        assert all(secret not in str(value) for row in rows for value in row.values())
        found = tokens.verify(secret, NOW + timedelta(minutes=1))
        assert found is not None and (found.name, found.scope) == ("ci", Scope.OPERATE)
        assert tokens.all()[0].last_used_at == NOW + timedelta(minutes=1)
        assert tokens.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"), NOW) is None
        assert tokens.verify("not-a-token", NOW) is None
    if store_url.startswith("sqlite:///"):
        database = Path(store_url.removeprefix("sqlite:///"))
        raw = b"".join(path.read_bytes() for path in database.parent.glob(database.name + "*"))
        assert secret.encode() not in raw and token_hash(secret).encode() in raw


def test_revoked_and_expired_tokens_are_refused(store_url: str) -> None:
    with Store(store_url) as records:
        tokens = Tokens(records)
        short, _ = tokens.create("short", Scope.READ, NOW, expires_in=timedelta(days=1))
        revoked, _ = tokens.create("gone", Scope.ADMIN, NOW)
        assert tokens.verify(short, NOW + timedelta(hours=23)) is not None
        assert tokens.verify(short, NOW + timedelta(days=1, seconds=1)) is None
        assert tokens.revoke("gone", NOW) == 1
        assert tokens.verify(revoked, NOW) is None
        assert sorted((t.name, t.revoked_at) for t in tokens.all()) == [("gone", NOW), ("short", None)]
        assert tokens.any_live(NOW) and not tokens.any_live(NOW + timedelta(days=2))
        with pytest.raises(StoreError, match="no unrevoked token named 'gone'; the unrevoked ones are short"):
            tokens.revoke("gone", NOW)


def test_a_live_name_is_unique_and_bad_names_are_refused(store_url: str) -> None:
    with Store(store_url) as records:
        tokens = Tokens(records)
        tokens.create("ci", Scope.READ, NOW)
        with pytest.raises(StoreError, match="a live token named 'ci' exists already"):
            tokens.create("ci", Scope.READ, NOW)
        tokens.revoke("ci", NOW)
        tokens.create("ci", Scope.OPERATE, NOW)  # the name is free again once revoked
        for bad in ("", " ", "a\nb", "x" * 256):
            with pytest.raises(StoreError, match="a token name must be"):
                tokens.create(bad, Scope.READ, NOW)


def test_scopes_include_the_lower_ones() -> None:
    assert Scope.ADMIN.allows(Scope.OPERATE) and Scope.OPERATE.allows(Scope.READ)
    assert not Scope.READ.allows(Scope.OPERATE) and not Scope.OPERATE.allows(Scope.ADMIN)


def test_a_store_locked_by_a_long_write_never_delays_or_fails_a_verify(store_url: str) -> None:
    """Noting a token's use is a write: while another writer holds the store, verify answers at once without it."""
    with Store(store_url) as records:
        tokens = Tokens(records)
        secret, _ = tokens.create("ci", Scope.READ, NOW)
        with records.engine.connect() as locker:
            held = locker.begin()
            if locker.dialect.name == "sqlite":
                locker.execute(update(api_tokens).values(name=api_tokens.c.name))  # takes the store's write lock
            else:
                locker.execute(select(api_tokens).with_for_update())  # locks the token's row
            started = time.monotonic()
            found = tokens.verify(secret, NOW + timedelta(minutes=1))
            took = time.monotonic() - started
            held.rollback()
        assert found is not None and found.name == "ci"
        assert took < 5, f"verify waited {took:.1f} s for the lock (the store's patience is 10 s)"
        assert tokens.all()[0].last_used_at is None  # not noted while locked: noted at the next use
        assert tokens.verify(secret, NOW + timedelta(minutes=2)) is not None
        assert tokens.all()[0].last_used_at == NOW + timedelta(minutes=2)
