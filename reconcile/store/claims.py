"""Claims: the outbox rows one relay publishes, taken so that no other relay publishes them too.

PostgreSQL and MySQL lock the claimed rows in a transaction held while they are published
(``SELECT ... FOR UPDATE SKIP LOCKED``): a second relay skips them and takes the next ones, and a
relay that dies releases them with its connection, so a rerun loses nothing. SQLite has no row
locks: relays on one SQLite store take turns, one claim at a time, under an OS file lock beside
the database (released by the kernel if the relay dies).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .port import Claim, OutboxRow
from .schema import outbox as O

if TYPE_CHECKING:
    from . import AuditStore

__all__ = ["open_claim"]

_memory = threading.Lock()


def open_claim(store: AuditStore, limit: int, spec: str | None, after: int = 0) -> Claim:
    if store.engine.dialect.name in ("postgresql", "mysql", "mariadb"):
        return _RowLockClaim(store, limit, spec, after)
    return _TurnClaim(store, limit, spec, after)


# What a relay reads of a claimed row: not sent_at / dead_at, NULL in every unsent row.
_CLAIMED = (
    O.c.id,
    O.c.event_id,
    O.c.spec,
    O.c.run_id,
    O.c.topic,
    O.c.transport,
    O.c.message_key,
    O.c.headers,
    O.c.payload,
    O.c.created_at,
    O.c.attempts,
    O.c.last_error,
)


def _unsent(spec: str | None, limit: int, after: int = 0) -> sa.Select[Any]:
    q = sa.select(*_CLAIMED).where(O.c.sent_at.is_(None), O.c.dead_at.is_(None))
    if after:
        q = q.where(O.c.id > after)
    if spec:
        q = q.where(O.c.spec == spec)
    return q.order_by(O.c.id).limit(limit)


def _locked_then_read(spec: str | None, limit: int, after: int = 0) -> sa.Select[Any]:
    """PostgreSQL's claim: lock the ids first, then read the rows they name.

    Locking ``SELECT *`` sorted the wide rows of every unsent candidate (headers, payload) to
    keep the first ``limit``; here only ids are sorted, and in the unsent index's own order
    (``sent_at`` is NULL in every one of them, so ``sent_at, id`` is id order) a scan can stop
    at ``limit``; with ``after`` (the last id a relay claimed) it starts past the rows that
    relay still holds or is marking, instead of stepping over each of their index entries. The
    headers come as text, for a claim's to be parsed in one call.
    """
    unsent = [O.c.sent_at.is_(None), O.c.dead_at.is_(None)] + ([O.c.spec == spec] if spec else [])
    if after:
        unsent.append(O.c.id > after)
    ids = (
        sa.select(O.c.id)
        .where(*unsent)
        .order_by(O.c.sent_at, O.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    columns = [sa.cast(c, sa.Text).label(c.name) if c is O.c.headers else c for c in _CLAIMED]
    return sa.select(*columns).where(O.c.id.in_(ids.scalar_subquery())).order_by(O.c.id)


def _claimed(r: Any) -> OutboxRow:
    """An unsent row as :data:`_CLAIMED` reads it (the headers are a fresh dict already)."""
    created = r.created_at
    if created.tzinfo is None:  # SQLite hands timestamps back naive; the store only writes UTC
        created = created.replace(tzinfo=UTC)
    return OutboxRow(
        r.id,
        r.event_id,
        r.spec,
        r.run_id,
        r.topic,
        r.transport,
        r.message_key,
        r.headers if r.headers is not None else {},
        r.payload,
        created,
        None,
        r.attempts or 0,
        r.last_error,
        None,
    )


class _RowLockClaim(Claim):
    def __init__(self, store: AuditStore, limit: int, spec: str | None, after: int = 0):
        self.store = store
        with store._errors():
            self.conn = store.engine.connect()
            try:
                self.tx = self.conn.begin()
                if self.conn.dialect.name == "postgresql":
                    got = self.conn.execute(_locked_then_read(spec, limit, after)).all()
                    headers = json.loads("[" + ",".join([r.headers or "null" for r in got]) + "]")
                    self.rows: list[OutboxRow] = [
                        OutboxRow(i, e, sp, run, t, tr, key, h or {}, p, at, None, n or 0, err, None)
                        for (i, e, sp, run, t, tr, key, _, p, at, n, err), h in zip(got, headers, strict=True)
                    ]
                else:  # MySQL takes no LIMIT in an IN subquery
                    got = self.conn.execute(
                        _unsent(spec, limit, after).with_for_update(skip_locked=True)
                    ).all()
                    self.rows = [_claimed(r) for r in got]
            except BaseException:
                self.conn.close()
                raise

    def sent(self, ids: Sequence[int]) -> None:
        with self.store._errors():
            self.store._mark_sent(self.conn, ids, datetime.now(UTC))

    def failed(self, ids: Sequence[int], error: str) -> None:
        with self.store._errors():
            self.store._mark_failed(self.conn, ids, error)

    def rejected(self, errors: dict[int, str], max_attempts: int) -> list[int]:
        with self.store._errors():
            return self.store._reject(self.conn, errors, max_attempts, datetime.now(UTC))

    def close(self) -> None:
        try:
            with self.store._errors():
                if self.tx.is_active:
                    self.tx.commit()
        finally:
            self.conn.close()


class _TurnClaim(Claim):
    def __init__(self, store: AuditStore, limit: int, spec: str | None, after: int = 0):
        import fcntl

        self.store = store
        self._fd: int | None = None
        self._memory = False
        database = store.engine.url.database or ""
        if not database or database == ":memory:" or database.startswith("file:"):
            _memory.acquire()
            self._memory = True
        else:
            key = hashlib.sha1(b"relay").hexdigest()[:16]  # noqa: S324 - a file name, not a secret
            self._fd = os.open(f"{os.path.abspath(database)}.{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # our turn: the claim before ours was closed
        try:
            with store._begin() as conn:
                self.rows = [_claimed(r) for r in conn.execute(_unsent(spec, limit, after)).all()]
        except BaseException:
            self.close()
            raise

    def sent(self, ids: Sequence[int]) -> None:
        self.store.mark_sent(ids)

    def failed(self, ids: Sequence[int], error: str) -> None:
        self.store.mark_failed(ids, error)

    def rejected(self, errors: dict[int, str], max_attempts: int) -> list[int]:
        with self.store._begin() as conn:
            return self.store._reject(conn, errors, max_attempts, datetime.now(UTC))

    def close(self) -> None:
        import fcntl

        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if self._memory:
            self._memory = False
            _memory.release()
