"""API tokens: made once, shown once, stored only as a SHA-256 hash, with a scope, an expiry and a revocation.

A token is `jg_` + 32 random bytes (secrets.token_urlsafe): guessing one is hopeless, so a plain
SHA-256 (no salt, no slow hash) is enough to make the stored value useless to whoever reads the
database, and lets a presented token be found by its hash in one indexed lookup. The hash found is
compared again with hmac.compare_digest, so nothing about the match depends on timing. Every
statement binds its parameters; the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, insert, or_, select, update

from jobgraph.errors import StoreError
from jobgraph.store.records import aware, utc
from jobgraph.store.store import Store
from jobgraph.store.tables import api_tokens

PREFIX = "jg_"
"""Every token starts so: a secret scanner (or a person) can tell what a leaked string is."""

TOUCH_EVERY = timedelta(seconds=30)
"""`last_used_at` is written at most this often per token, so reads do not each write to the store."""


class Scope(StrEnum):
    """What a token may do; each scope includes the ones before it."""

    READ = "read"  #: see pipelines, runs, graphs and logs
    OPERATE = "operate"  #: also trigger, retry, cancel, suspend and resume
    ADMIN = "admin"  #: everything (reserved for managing jobgraph itself)

    def allows(self, needed: Scope) -> bool:
        """True if this scope includes `needed`."""
        order = list(Scope)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class TokenInfo:
    """A token as the store knows it: never its secret."""

    token_id: str
    name: str
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def live(self, now: datetime) -> bool:
        """Neither revoked nor expired at `now`."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def token_hash(token: str) -> str:
    """What the store keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def parse_scope(text: str) -> Scope:
    """A scope by name; a StoreError naming the valid ones otherwise."""
    try:
        return Scope(text.strip().lower())
    except ValueError:
        raise StoreError(f"unknown token scope {text!r}; use one of {', '.join(s.value for s in Scope)}") from None


class Tokens:
    """The api_tokens table of a store (through SQLAlchemy: its connection pool is safe across threads)."""

    def __init__(self, store: Store) -> None:
        self._engine = store.engine

    def create(self, name: str, scope: Scope, now: datetime,
               expires_in: timedelta | None = None) -> tuple[str, TokenInfo]:
        """Make a token; return its secret (to show once) and its record. Names of live tokens are unique."""
        name = name.strip()
        if not name or len(name) > 255 or not name.isprintable():
            raise StoreError(f"a token name must be 1 to 255 printable characters, not {name!r}")
        if expires_in is not None and expires_in <= timedelta(0):
            raise StoreError("a token's lifetime must be positive")
        secret = PREFIX + secrets.token_urlsafe(32)
        at = utc(now)
        with self._engine.begin() as conn:
            taken = conn.execute(select(api_tokens.c.token_id).where(and_(
                api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None),
                or_(api_tokens.c.expires_at.is_(None), api_tokens.c.expires_at > at)))).first()
            if taken is not None:
                raise StoreError(f"a live token named {name!r} exists already; revoke it first "
                                 "(`jobgraph token revoke NAME`) or choose another name")
            info = TokenInfo(secrets.token_hex(16), name, scope, at, None,
                             at + expires_in if expires_in is not None else None, None)
            conn.execute(insert(api_tokens).values(
                token_id=info.token_id, name=name, scope=scope.value, token_hash=token_hash(secret),
                created_at=at, expires_at=info.expires_at))
        return secret, info

    def verify(self, presented: str, now: datetime) -> TokenInfo | None:
        """The live token whose secret this is, its use noted; None for an unknown, revoked or expired one."""
        if not presented.startswith(PREFIX) or len(presented) > 200:
            return None
        wanted = token_hash(presented)
        with self._engine.connect() as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.token_hash == wanted)).mappings().first()
        if row is None or not hmac.compare_digest(str(row["token_hash"]), wanted):
            return None
        info = _info(row)
        at = utc(now)
        if not info.live(at):
            return None
        if info.last_used_at is None or at - info.last_used_at >= TOUCH_EVERY:
            self._touch(info.token_id, at)
        return info

    def _touch(self, token_id: str, at: datetime) -> None:
        """Note a token's use if the store lets it at once: a store locked by a long write elsewhere never delays
        or fails a request (the note is a hint for `jobgraph token list`, written again at the next use)."""
        try:
            with self._engine.begin() as conn:
                sqlite = conn.dialect.name == "sqlite"
                if sqlite:
                    patience = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
                    conn.exec_driver_sql("PRAGMA busy_timeout=0")
                else:
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
                try:
                    conn.execute(update(api_tokens).where(api_tokens.c.token_id == token_id).values(last_used_at=at))
                finally:
                    if sqlite:
                        conn.exec_driver_sql(f"PRAGMA busy_timeout={int(patience or 0)}")
        except StoreError:
            return

    def all(self) -> list[TokenInfo]:
        """Every token, revoked and expired ones too, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.name)).mappings()
            return [_info(row) for row in rows]

    def any_live(self, now: datetime) -> bool:
        """True if at least one token could be used now."""
        return any(info.live(utc(now)) for info in self.all())

    def revoke(self, name: str, now: datetime) -> int:
        """Revoke every live token of that name; how many. A StoreError if there is none."""
        at = utc(now)
        with self._engine.begin() as conn:
            done = conn.execute(update(api_tokens).where(and_(
                api_tokens.c.name == name.strip(), api_tokens.c.revoked_at.is_(None))).values(revoked_at=at))
        if done.rowcount == 0:
            known = sorted({info.name for info in self.all() if info.revoked_at is None})
            listed = f"; the unrevoked ones are {', '.join(known)}" if known else "; there is none"
            raise StoreError(f"no unrevoked token named {name!r}{listed}")
        return int(done.rowcount)


def _info(row: object) -> TokenInfo:
    r = dict(row)  # type: ignore[call-overload]
    return TokenInfo(token_id=r["token_id"], name=r["name"], scope=Scope(r["scope"]),
                     created_at=aware(r["created_at"]), last_used_at=aware(r["last_used_at"]),
                     expires_at=aware(r["expires_at"]), revoked_at=aware(r["revoked_at"]))


def utcnow() -> datetime:
    """Now, aware UTC (tokens compare expiries against it)."""
    return datetime.now(UTC)
