"""The audit store (state): runs, findings with their lifecycle, and the outbox.

Any SQLAlchemy database works: a SQLite file by default (``reconcile-store.db`` in the working
folder), PostgreSQL in production (``--store`` / ``RECONCILE_STORE_URL``). The store creates and
migrates its own tables on first use. Every method that changes state does so in one
transaction, so a crash leaves runs, findings and outbox consistent with each other.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from .. import lifecycle
from ..db import make_engine, map_errors
from ..errors import StoreError, mask_url
from ..findings import Finding, FindingKind, FindingStatus, Summary
from ..lifecycle import Stored, plan_run
from . import bulk, schema
from .port import (
    Claim,
    CorrectionRecord,
    FindingRecord,
    HealHistogram,
    OutboxEntry,
    OutboxRow,
    PreflightRecord,
    RunRecord,
    Store,
)
from .schema import findings as F
from .schema import locks as L
from .schema import outbox as O
from .schema import runs as R

__all__ = [
    "Store",
    "AuditStore",
    "open_store",
    "default_store_url",
    "RunRecord",
    "OutboxRow",
    "OutboxEntry",
    "PreflightRecord",
    "Claim",
    "FindingRecord",
    "CorrectionRecord",
    "HealHistogram",
    "ACTIVE",
]

DEFAULT_STORE_URL = "sqlite:///reconcile-store.db"
_MIGRATE_LOCK = threading.Lock()
_MIGRATE_KEY = 0x7265636F6E63696C  # "reconcil": the advisory lock of store migrations
BATCH = 5_000  # findings (and outbox rows) written per statement batch
KEEP_FINDINGS = 10_000  # findings a run hands back in memory; the rest stay in the store
ANALYZE_AFTER = 10_000  # new findings in one run after which PostgreSQL re-analyzes the findings table
ACTIVE = tuple(s.value for s in lifecycle.ACTIVE)


def default_store_url(url: str | None = None) -> str:
    """``--store``, else ``RECONCILE_STORE_URL``, else a SQLite file in the working folder."""
    return url or os.environ.get("RECONCILE_STORE_URL") or DEFAULT_STORE_URL


def _now() -> datetime:
    return datetime.now(UTC)


@overload
def _aware(value: datetime) -> datetime: ...
@overload
def _aware(value: None) -> None: ...
def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; the store only ever writes UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _finding(row: Any, confirm_runs: int = 1) -> Finding:
    return Finding(
        kind=FindingKind(row.kind),
        key=dict(row.entity_key),
        columns=tuple(row.columns or ()),
        truth=row.truth,
        projection=row.projection,
        copies=row.copies or 1,
        status=FindingStatus(row.status),
        confirmed=row.times_seen >= confirm_runs,
        times_seen=row.times_seen,
        first_seen=_aware(row.first_seen),
        note=row.note,
        episode=getattr(row, "episode", 1) or 1,
        cause=getattr(row, "cause", None),
        evidence=tuple(getattr(row, "evidence", None) or ()),
    )


# What a correction reads of each open finding: what its event is built from and its lifecycle,
# not the projection's side (``projection``, ``columns``, ``cause``, ``evidence``: JSON to parse
# for every finding of a 100k correction, and never used by one).
_CORRECTABLE = (
    F.c.id,
    F.c.key_id,
    F.c.entity_key,
    F.c.kind,
    F.c.truth,
    F.c.status,
    F.c.times_seen,
    F.c.first_seen,
    F.c.note,
    F.c.episode,
)
# the same with the JSON columns as their text, for PostgreSQL to parse a page in one call
_CORRECTABLE_TEXT = tuple(
    sa.cast(c, sa.Text).label(c.name) if c.name in ("entity_key", "truth") else c for c in _CORRECTABLE
)
_KINDS = {k.value: k for k in FindingKind}
_STATUSES = {s.value: s for s in FindingStatus}


def _correctable(row: Any, key: Any, truth: Any, confirm_runs: int) -> Finding:
    """A finding as :meth:`AuditStore.correct` hands it to ``decide`` (see :data:`_CORRECTABLE`),
    of its row and its parsed key and truth; its key id is the stored one, not worked out again
    from the key."""
    return Finding(
        kind=_KINDS[row.kind],
        key=dict(key),
        truth=truth,
        status=_STATUSES[row.status],
        confirmed=row.times_seen >= confirm_runs,
        times_seen=row.times_seen,
        first_seen=_aware(row.first_seen),
        note=row.note,
        episode=row.episode or 1,
        _key_id=row.key_id,
    )


def _outbox_rows(
    spec: str, run_id: str, ids: dict[str, int], entries: Sequence[OutboxEntry]
) -> list[tuple[Any, ...]]:
    """A correction's outbox entries as rows in :data:`bulk.OUTBOX_COLUMNS` order (``ids``: the
    findings' row ids by key id)."""
    return [
        (
            e.event_id,
            spec,
            run_id,
            ids[e.key_id],
            e.topic,
            e.transport,
            e.message_key,
            e.headers,
            e.payload,
            e.created_at,
        )
        for e in entries
    ]


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class AuditStore(Store):
    """The audit store in one SQL database (SQLite, PostgreSQL, MySQL), migrated on first use."""

    def __init__(self, url: str | None = None):
        self.url = default_store_url(url)
        try:
            self.engine: Engine = make_engine(self.url, sqlite_wal=True)
            # Batched INSERT ... VALUES (...), (...) for executemany: one round trip per page of
            # rows instead of one per row (recording 200k findings).
            self.engine.dialect.use_insertmanyvalues_wo_returning = True
        except Exception as e:  # noqa: BLE001 - any URL problem is the user's input
            raise StoreError(
                f"audit store {mask_url(self.url)}: cannot use this URL: {mask_url(str(e))}"
            ) from None
        self._migrated = False
        self._lock_rows: set[str] = set()
        self._parked: set[str] = set()

    @property
    def display(self) -> str:
        return mask_url(self.url)

    def _errors(self) -> Any:
        return map_errors("audit store", self.url, StoreError)

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One transaction on a migrated store (private: the store's API never hands out connections)."""
        self.migrate()
        with self._errors(), self.engine.begin() as conn:
            yield conn

    def migrate(self) -> int:
        """Create or upgrade the store's tables; idempotent."""
        if self._migrated:
            return len(schema.MIGRATIONS)
        # Two processes (or threads) opening a new store at once both try to create it: one
        # migrates, under a lock (a transaction-scoped advisory lock on PostgreSQL), and the
        # other retries once and finds the tables there.
        with _MIGRATE_LOCK:
            for attempt in (1, 2):
                try:
                    with self._errors(), self.engine.begin() as conn:
                        if conn.dialect.name == "postgresql":
                            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATE_KEY)))
                        version = schema.migrate(conn)
                    break
                except StoreError:
                    if attempt == 2:
                        raise
                    time.sleep(0.2)
        self._migrated = True
        return version

    def ping(self) -> None:
        """Raise StoreError when the store cannot be reached."""
        with self._errors(), self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- findings ------------------------------------------------------------------------
    def active_findings(self, spec: str) -> list[Finding]:
        """Findings of a spec not yet resolved (open, correcting, acknowledged)."""
        with self._begin() as conn:
            rows = conn.execute(sa.select(F).where(F.c.spec == spec, F.c.status.in_(ACTIVE)).order_by(F.c.id))
            return [_finding(r) for r in rows]

    def findings(self, spec: str, statuses: Sequence[str] = ACTIVE, confirm_runs: int = 1) -> list[Finding]:
        """Findings of a spec in the given statuses, oldest first."""
        with self._begin() as conn:
            rows = conn.execute(
                sa.select(F).where(F.c.spec == spec, F.c.status.in_(list(statuses))).order_by(F.c.id)
            )
            return [_finding(r, confirm_runs) for r in rows]

    def finding_keys(self, spec: str, statuses: Sequence[str] = ACTIVE) -> list[tuple[str, dict[str, Any]]]:
        """(key id, key) of a spec's findings in the given statuses, oldest first.

        Verify and every audit read the keys of 100,000s of findings; :meth:`findings` parses
        three JSON columns and builds a Finding per row for that (most of a 100k verify). The
        key id is the stored one (the one every finding was recorded and is moved by).
        """
        with self._begin() as conn:
            where = (F.c.spec == spec, F.c.status.in_(list(statuses)))
            if self._psycopg(conn):  # the keys as text, a whole read parsed in one call
                rows = conn.execute(
                    sa.select(F.c.key_id, sa.cast(F.c.entity_key, sa.Text)).where(*where).order_by(F.c.id)
                ).all()
                keys = json.loads("[" + ",".join([k for _, k in rows]) + "]")
                return [(r[0], dict(k)) for r, k in zip(rows, keys, strict=True)]
            rows = conn.execute(sa.select(F.c.key_id, F.c.entity_key).where(*where).order_by(F.c.id)).all()
            return [(kid, dict(k)) for kid, k in rows]

    def record_run(
        self,
        *,
        run_id: str,
        spec: str,
        started_at: datetime,
        finished_at: datetime,
        strategy: str,
        scope: dict[str, Any],
        summary: Summary,
        seen: Iterable[Finding],
        clean: set[str],
        pending: set[str],
        resolve_unseen: bool,
        confirm_runs: int,
        keep: int = KEEP_FINDINGS,
        cut: dict[str, Any] | None = None,
    ) -> tuple[list[Finding], list[Finding]]:
        """Store one run and move every finding along its lifecycle, in one transaction.

        ``seen`` are this run's findings (any iterable: they are read and written as they come,
        by COPY on PostgreSQL and in batches of :data:`BATCH` elsewhere, so memory does not grow
        with them); ``clean`` / ``pending`` the key ids of
        active findings this run compared and found equal / still in flight. An active finding
        the run did not see at all is resolved only when ``resolve_unseen`` (the run covered its
        key). The transaction first takes the spec's lock row, so runs of one spec record one
        after the other, each seeing what the previous one wrote; the unique index on active
        findings makes a second active row for one entity impossible anyway.
        Returns the first ``keep`` (confirmed, unconfirmed) findings with their lifecycle filled
        in; ``summary`` gets the counts of all of them.
        """
        now = finished_at
        lock = f"audit:{spec}"
        self._ensure_lock_row(lock)
        confirmed: list[Finding] = []
        unconfirmed: list[Finding] = []
        drift = False
        first = False  # the spec had no finding stored: none to resolve
        inserted = 0  # new finding rows (PostgreSQL)
        with self._begin() as conn:
            conn.execute(L.update().where(L.c.name == lock).values(acquired_at=now))
            if self._psycopg(conn):
                confirmed, unconfirmed, drift, first, inserted = self._record_set_based(
                    conn, spec, run_id, seen, now, confirm_runs, keep, summary
                )
            else:
                for batch in _batches(seen, BATCH):
                    plan = self._record_batch(conn, spec, run_id, batch, now, confirm_runs)
                    for f in plan.confirmed:
                        drift |= lifecycle.tally(summary, f.kind, f.status, confirmed=True)
                    summary.unconfirmed += len(plan.unconfirmed)
                    confirmed += plan.confirmed[: max(0, keep - len(confirmed))]
                    unconfirmed += plan.unconfirmed[: max(0, keep - len(unconfirmed))]
            # Active findings this run did not see (every row it saw now carries its run id):
            # the rule of lifecycle.plan_run, carried out set-wise.
            unseen = [F.c.spec == spec, F.c.status.in_(ACTIVE), F.c.last_run_id != run_id]
            done = {"status": FindingStatus.RESOLVED.value, "resolved_at": now, "last_run_id": run_id}
            for cond in () if first else self._key_lookup(sorted(clean)):
                conn.execute(F.update().where(*unseen, cond).values(done))
            if resolve_unseen and not first:
                conn.execute(
                    F.update().where(*unseen, *self._not_in(F.c.key_id, sorted(pending))).values(done)
                )
            conn.execute(
                R.insert().values(
                    id=run_id,
                    spec=spec,
                    started_at=started_at,
                    finished_at=finished_at,
                    status="drift" if drift else "clean",
                    strategy=strategy,
                    scope=scope,
                    summary=summary.to_dict(),
                    cut=_json(cut),
                )
            )
        if inserted >= ANALYZE_AFTER:
            # Fresh statistics now, not when autovacuum next looks: planned on a findings table
            # it has never analyzed (estimated at one row), the next run's statements by key
            # (resolving 100k clean keys) test every finding against every key, for minutes.
            with self._begin() as conn:
                conn.exec_driver_sql("ANALYZE reconcile_findings")
        return confirmed, unconfirmed

    @staticmethod
    def _record_set_based(
        conn: Connection,
        spec: str,
        run_id: str,
        seen: Iterable[Finding],
        now: datetime,
        confirm_runs: int,
        keep: int,
        summary: Summary,
    ) -> tuple[list[Finding], list[Finding], bool, bool, int]:
        """PostgreSQL: the run's findings by COPY, their lifecycle decided by a few set-based
        statements (:mod:`reconcile.store.record`, held equal to :func:`lifecycle.plan_run` by
        ``tests/test_record_equivalence.py``); (confirmed, unconfirmed, drift, whether the spec
        had no finding stored before, how many finding rows were inserted)."""
        from .record import record_findings

        got = record_findings(
            conn,
            spec=spec,
            run_id=run_id,
            now=now,
            seen=seen,
            confirm_runs=confirm_runs,
            keep=keep,
            rebuild=_finding,
        )
        drift = False
        inserted = 0
        for (kind, status, times_seen), n in sorted(got.counts.items()):
            ok = lifecycle.is_confirmed(times_seen, confirm_runs)
            drift |= lifecycle.tally(summary, kind, status, confirmed=ok, count=n)
            inserted += n if times_seen == 1 else 0  # seen once: a new row (or a new episode's)
        return got.confirmed, got.unconfirmed, drift, got.first, inserted

    def _record_batch(
        self, conn: Connection, spec: str, run_id: str, batch: list[Finding], now: datetime, confirm_runs: int
    ) -> lifecycle.RunPlan:
        active, before = self._active_and_episodes(conn, spec, [f.key_id for f in batch])
        plan = plan_run(
            active,
            batch,
            clean=(),
            pending=(),
            resolve_unseen=False,
            confirm_runs=confirm_runs,
            now=now,
            last_episode=before,
        )

        def values(f: Finding) -> dict[str, Any]:
            return {
                "kind": f.kind.value,
                "columns": list(f.columns),
                "truth": _json(f.truth),
                "projection": _json(f.projection),
                "copies": f.copies,
                "cause": f.cause,
                "evidence": _json(list(f.evidence)) if f.cause is not None else None,
                "last_seen": now,
                "last_run_id": run_id,
            }

        if plan.new:
            conn.execute(
                F.insert(),
                [
                    {
                        **values(f),
                        "spec": spec,
                        "key_id": f.key_id,
                        "entity_key": _json(f.key),
                        "status": FindingStatus.OPEN.value,
                        "times_seen": 1,
                        "first_seen": now,
                        "first_run_id": run_id,
                        "episode": f.episode,
                    }
                    for f in plan.new
                ],
            )
        if plan.again:
            updates = [{**values(f), "_id": row_id, "times_seen": f.times_seen} for row_id, f in plan.again]
            conn.execute(
                F.update()
                .where(F.c.id == sa.bindparam("_id"))
                .values({c: sa.bindparam(c) for c in updates[0] if c != "_id"}),
                updates,
            )
        return plan

    @staticmethod
    def _psycopg(conn: Connection) -> bool:
        return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"

    def _active_and_episodes(
        self, conn: Connection, spec: str, key_ids: Sequence[str]
    ) -> tuple[dict[str, Stored], dict[str, int]]:
        """The active stored finding of each key (by key id), and for the keys with none the
        last episode they ever had (0 or absent: never drifted)."""
        active: dict[str, Stored] = {}
        for cond in self._key_lookup(key_ids):
            for r in conn.execute(
                sa.select(
                    F.c.id, F.c.key_id, F.c.status, F.c.times_seen, F.c.first_seen, F.c.note, F.c.episode
                ).where(F.c.spec == spec, F.c.status.in_(ACTIVE), cond)
            ):
                active[r.key_id] = Stored(
                    r.id,
                    r.key_id,
                    FindingStatus(r.status),
                    r.times_seen,
                    _aware(r.first_seen),
                    r.note,
                    r.episode,
                )
        before: dict[str, int] = {}
        for cond in self._key_lookup([k for k in key_ids if k not in active]):
            before.update(
                conn.execute(
                    sa.select(F.c.key_id, sa.func.max(F.c.episode))
                    .where(F.c.spec == spec, cond)
                    .group_by(F.c.key_id)
                ).all()
            )
        return active, before

    def _ensure_lock_row(self, name: str) -> None:
        """Create a lock row once (its own transaction: a racing creator is fine)."""
        if name in self._lock_rows:
            return
        with self._begin() as conn:
            exists = conn.execute(sa.select(L.c.name).where(L.c.name == name)).first()
        if exists is None:
            try:
                with self._begin() as conn:
                    conn.execute(L.insert().values(name=name))
            except StoreError:  # another process created it first
                pass
        self._lock_rows.add(name)

    def _key_lookup(self, key_ids: Sequence[str]) -> Iterator[sa.ColumnElement[bool]]:
        """``key_id IN key_ids`` that PostgreSQL answers through the (spec, key_id) index.

        ``key_id = ANY(array)`` lets the planner pick the (spec, status) index and test every
        row of the spec against the whole array (minutes per batch at 200k findings); a
        semi-join on the unnested array is looked up key by key.
        """
        if not key_ids:
            return
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            arr = sa.bindparam(None, list(key_ids), type_=ARRAY(sa.String()))
            yield F.c.key_id.in_(sa.select(sa.func.unnest(arr)))
            return
        for i in range(0, len(key_ids), 1000):
            yield F.c.key_id.in_(key_ids[i : i + 1000])

    def _not_in(self, column: sa.Column[Any], values: Sequence[Any]) -> list[sa.ColumnElement[bool]]:
        """``column NOT IN values`` as conditions to AND together."""
        if not values:
            return []
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            return [column != sa.all_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))]
        return [column.not_in(values[i : i + 1000]) for i in range(0, len(values), 1000)]

    # -- one audit per spec --------------------------------------------------------------
    @contextmanager
    def audit_lock(self, spec: str, *, wait: bool = False) -> Iterator[None]:
        """Hold the spec's audit lock for the block: one audit of a spec at a time.

        PostgreSQL: a session advisory lock; MySQL/MariaDB: ``GET_LOCK``; SQLite: an OS file
        lock beside the database file. All three die with the process that holds them, so a
        crashed audit never leaves a stale lock. Busy: raise :class:`ConcurrentRun` naming the
        holder, or (``wait``) wait for it.
        """
        from .locks import hold

        name = f"audit:{spec}"
        self._ensure_lock_row(name)
        with hold(self, name, wait=wait, describe=lambda: self._holder(name)):
            self._set_holder(name)
            try:
                yield
            finally:
                self._set_holder(name, None)

    def _holder(self, name: str) -> str:
        with self._begin() as conn:
            r = conn.execute(sa.select(L.c.holder, L.c.acquired_at).where(L.c.name == name)).first()
        if r is None or not r.holder:
            return "another process"
        at = _aware(r.acquired_at)
        return f"{r.holder}" + (f", since {at:%Y-%m-%d %H:%M:%SZ}" if at else "")

    def _set_holder(self, name: str, holder: str | None = "") -> None:
        import socket

        if holder == "":
            holder = f"pid {os.getpid()} on {socket.gethostname()}"
        with self._begin() as conn:
            conn.execute(L.update().where(L.c.name == name).values(holder=holder, acquired_at=_now()))

    def _set_status(
        self,
        conn: Connection,
        spec: str,
        key_ids: Iterable[str],
        status: FindingStatus,
        *,
        note: str | None = None,
        only_from: Sequence[str] = ACTIVE,
    ) -> int:
        """Move findings (by key id) to a status inside a transaction of the store's own."""
        ids = list(key_ids)
        done = 0
        values: dict[str, Any] = {"status": status.value}
        if status is FindingStatus.RESOLVED:
            values["resolved_at"] = _now()
        if note is not None:
            values["note"] = note
        for keys in self._key_lookup(ids):
            res = conn.execute(
                F.update().where(F.c.spec == spec, keys, F.c.status.in_(list(only_from))).values(values)
            )
            done += res.rowcount or 0
        return done

    def acknowledge(self, spec: str, key_id: str, reason: str) -> Finding:
        """A human marks an active finding as known and not to be corrected."""
        with self._begin() as conn:
            row = conn.execute(
                sa.select(F).where(F.c.spec == spec, F.c.key_id == key_id, F.c.status.in_(ACTIVE))
            ).first()
            if row is None:
                raise StoreError(f"spec {spec}: no open finding with key {key_id}")
            conn.execute(
                F.update()
                .where(F.c.id == row.id)
                .values(status=FindingStatus.ACKNOWLEDGED.value, note=f"acknowledged: {reason}")
            )
            return _finding(row).with_lifecycle(
                status=FindingStatus.ACKNOWLEDGED, note=f"acknowledged: {reason}"
            )

    # -- runs ----------------------------------------------------------------------------
    def latest_run(self, spec: str) -> RunRecord | None:
        """The most recent stored audit of a spec."""
        with self._begin() as conn:
            r = conn.execute(
                sa.select(R)
                .where(R.c.spec == spec)
                .order_by(R.c.started_at.desc(), R.c.finished_at.desc())
                .limit(1)
            ).first()
        if r is None:
            return None
        return RunRecord(
            r.id,
            r.spec,
            _aware(r.started_at),
            _aware(r.finished_at),
            r.status,
            r.strategy,
            r.scope,
            r.summary,
            r.cut,
        )  # type: ignore[arg-type]

    def last_run_times(self) -> dict[str, datetime]:
        """Spec name -> when its latest run finished (for the health check)."""
        with self._begin() as conn:
            rows = conn.execute(sa.select(R.c.spec, sa.func.max(R.c.finished_at)).group_by(R.c.spec))
            return {spec: _aware(at) for spec, at in rows}  # type: ignore[misc]

    def _run_findings(
        self, conn: Connection, spec: str, run_id: str, status: str
    ) -> list[tuple[int, Finding]]:
        rows = conn.execute(
            sa.select(F)
            .where(F.c.spec == spec, F.c.last_run_id == run_id, F.c.status == status)
            .order_by(F.c.id)
        )
        return [(r.id, _finding(r)) for r in rows]

    def iter_run_findings(self, spec: str, run_id: str, confirm_runs: int = 1) -> Iterator[Finding]:
        """Every confirmed finding a run saw, oldest first, read page by page (flat memory)."""
        after = 0
        while True:
            with self._begin() as conn:
                rows = conn.execute(
                    sa.select(F)
                    .where(
                        F.c.spec == spec,
                        F.c.last_run_id == run_id,
                        F.c.status.in_(ACTIVE),
                        F.c.times_seen >= confirm_runs,
                        F.c.id > after,
                    )
                    .order_by(F.c.id)
                    .limit(BATCH)
                ).all()
            if not rows:
                return
            after = rows[-1].id
            for r in rows:
                yield _finding(r, confirm_runs)

    def run_findings(self, spec: str, run_id: str, status: str) -> list[Finding]:
        """A spec's findings last seen by a run, in a status, oldest first."""
        with self._begin() as conn:
            return [f for _, f in self._run_findings(conn, spec, run_id, status)]

    def correct(
        self,
        spec: str,
        run_id: str,
        decide: Callable[[list[Finding]], list[OutboxEntry]],
        *,
        note: str,
        confirm_runs: int = 1,
        guard: Callable[[int], None] | None = None,
    ) -> tuple[int, int]:
        """One correction, in one transaction: outbox rows written and findings marked correcting.

        The open findings last seen by ``run_id`` (seen in at least ``confirm_runs`` runs) are
        counted first and ``guard`` gets the count before anything is written; then they are read
        page by page (:data:`BATCH`, oldest first) and ``decide`` gets each page and returns the
        corrective events to write, each naming its finding's key id. Each page's outbox rows and
        finding moves are written while the next page is decided (PostgreSQL) or before it is read,
        so memory stays flat (two pages at most); raising (the guard) rolls everything back.
        Events whose id is already in the outbox are skipped. Returns (events ``decide``
        returned, rows written).
        """
        decided = written = 0
        with self._begin() as conn:
            opened = (
                F.c.spec == spec,
                F.c.last_run_id == run_id,
                F.c.status == FindingStatus.OPEN.value,
                F.c.times_seen >= confirm_runs,
            )
            if guard is not None:
                guard(
                    int(conn.execute(sa.select(sa.func.count()).select_from(F).where(*opened)).scalar() or 0)
                )
            after = 0
            # PostgreSQL: the JSON columns come as text, and a page's are parsed in one call (a
            # parse per value and column cost more than building the events)
            as_text = self._psycopg(conn)
            columns = _CORRECTABLE_TEXT if as_text else _CORRECTABLE

            def read() -> Sequence[Any]:
                # keyset pages by row id: a page's findings leave `open` before the next is read,
                # and `id > after` keeps the ones refused by decide (still open) from coming back
                return conn.execute(
                    sa.select(*columns).where(*opened, F.c.id > after).order_by(F.c.id).limit(BATCH)
                ).all()

            # PostgreSQL: a page's writes (outbox COPY, findings' move: server time) run on a
            # thread while the next page's events are built (Python time), one after the other on
            # the one connection: the next page is read after the writes before it, and before
            # its own writes start (its rows have ids above every page before it).
            writer = (
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="correct-write") if as_text else None
            )
            writing: Future[int] | None = None
            try:
                page = read()
                while page:
                    after = page[-1].id
                    if as_text:
                        values = json.loads(
                            "[" + ",".join([t for r in page for t in (r.entity_key, r.truth or "null")]) + "]"
                        )
                        found = [
                            (r.id, _correctable(r, values[2 * i], values[2 * i + 1], confirm_runs))
                            for i, r in enumerate(page)
                        ]
                    else:
                        found = [(r.id, _correctable(r, r.entity_key, r.truth, confirm_runs)) for r in page]
                    del page
                    entries = decide([f for _, f in found])
                    decided += len(entries)
                    ids = {f.key_id: fid for fid, f in found}
                    rows = _outbox_rows(spec, run_id, ids, entries)
                    if writer is None:
                        written += self._write_correction(conn, spec, ids, entries, rows, note)
                        page = read()
                        continue
                    # the page's COPY text, made here: the writer thread then sends it in one go
                    lines = bulk.outbox_lines(rows)
                    if writing is not None:
                        written += writing.result()
                        writing = None
                    page = read()
                    writing = writer.submit(
                        self._write_correction, conn, spec, ids, entries, rows, note, lines
                    )
                if writing is not None:
                    written += writing.result()
                    writing = None
            finally:
                if writer is not None:
                    writer.shutdown(wait=True)  # an error (the guard): its writes end before the rollback
        return decided, written

    def _write_correction(
        self,
        conn: Connection,
        spec: str,
        ids: dict[str, int],
        entries: Sequence[OutboxEntry],
        rows: Sequence[tuple[Any, ...]],
        note: str,
        lines: Sequence[str] | None = None,
    ) -> int:
        """One page of a correction: its outbox rows (``rows``, :func:`_outbox_rows` of
        ``entries``; ``lines``: their COPY text), and its findings moved; rows written."""
        if not entries:
            return 0
        written = self._enqueue(conn, rows, lines)
        if self._psycopg(conn):  # by the findings' row ids: one UPDATE through the primary key
            moving = {"status": FindingStatus.CORRECTING.value, "note": note}
            back = {
                "status": FindingStatus.OPEN.value,
                "note": "its corrective event is parked in the outbox (see `reconcile health`)",
            }
            for values, parked_ones in ((moving, False), (back, True)):
                moved = [ids[e.key_id] for e in entries if (e.event_id in self._parked) is parked_ones]
                bulk.set_status(conn, F.name, moved, values, [FindingStatus.OPEN.value])
            return written
        parked = [e.key_id for e in entries if e.event_id in self._parked]
        self._set_status(
            conn,
            spec,
            [e.key_id for e in entries if e.event_id not in self._parked],
            FindingStatus.CORRECTING,
            note=note,
            only_from=[FindingStatus.OPEN.value],
        )
        # Its event is parked (the broker refused it for good): sending it again cannot heal.
        self._set_status(
            conn,
            spec,
            parked,
            FindingStatus.OPEN,
            note="its corrective event is parked in the outbox (see `reconcile health`)",
            only_from=[FindingStatus.OPEN.value],
        )
        return written

    def move(
        self,
        spec: str,
        moves: Sequence[tuple[Iterable[str], FindingStatus, str]],
        *,
        only_from: Sequence[str] = ACTIVE,
    ) -> list[int]:
        """Move groups of findings (key ids, new status, note) in one transaction; counts moved per group."""
        with self._begin() as conn:
            return [
                self._set_status(conn, spec, list(keys), status, note=note, only_from=only_from)
                for keys, status, note in moves
            ]

    def _id_chunks(self, column: sa.Column[Any], values: Sequence[Any]) -> Iterator[sa.ColumnElement[bool]]:
        """``column IN values`` as few conditions as the database allows.

        PostgreSQL takes the whole list as one array parameter (``= ANY(:values)``): one
        statement, nothing to compile per value. Elsewhere, IN lists of 1000 (SQLite's and
        Oracle's limits on bound parameters).
        """
        if not values:
            return
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            yield column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))
            return
        for i in range(0, len(values), 1000):
            yield column.in_(values[i : i + 1000])

    # -- outbox --------------------------------------------------------------------------
    def _enqueue(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], lines: Sequence[str] | None = None
    ) -> int:
        """Insert outbox rows (tuples in :data:`bulk.OUTBOX_COLUMNS` order; ``lines``: their COPY
        text, PostgreSQL only); rows whose event id is already there are skipped (the unique
        constraint makes a repeated correction a no-op)."""
        if not rows:
            return 0
        if self._psycopg(conn):
            try:
                written, self._parked = bulk.enqueue(conn, rows, lines)
            except IntegrityError as e:  # a concurrent `correct` won the race: nothing is doubled
                raise StoreError(
                    "outbox: a concurrent correction inserted the same events; rerun `reconcile correct`"
                ) from e
            return written
        existing: set[str] = set()
        ids = [r[0] for r in rows]
        self._parked = set()
        for i in range(0, len(ids), 1000):
            for event_id, dead_at in conn.execute(
                sa.select(O.c.event_id, O.c.dead_at).where(O.c.event_id.in_(ids[i : i + 1000]))
            ):
                existing.add(event_id)
                if dead_at is not None:
                    self._parked.add(event_id)
        fresh = [r for r in rows if r[0] not in existing]
        if fresh:
            try:
                conn.execute(
                    O.insert(),
                    [{**dict(zip(bulk.OUTBOX_COLUMNS, r, strict=True)), "attempts": 0} for r in fresh],
                )
            except IntegrityError as e:  # a concurrent `correct` won the race: nothing is doubled
                raise StoreError(
                    "outbox: a concurrent correction inserted the same events; rerun `reconcile correct`"
                ) from e
        return len(fresh)

    def unsent(self, limit: int, spec: str | None = None, after_id: int = 0) -> list[OutboxRow]:
        """The oldest unsent outbox rows (optionally of one spec)."""
        with self._begin() as conn:
            q = sa.select(O).where(O.c.sent_at.is_(None), O.c.dead_at.is_(None), O.c.id > after_id)
            if spec:
                q = q.where(O.c.spec == spec)
            # fetchall in one go: iterating the result would fetch row by row
            return [_outbox_row(r) for r in conn.execute(q.order_by(O.c.id).limit(limit)).all()]

    def mark_sent(self, ids: Sequence[int], at: datetime | None = None) -> None:
        """Mark rows sent (called only for rows the broker confirmed)."""
        with self._begin() as conn:
            self._mark_sent(conn, ids, at or _now())

    def mark_failed(self, ids: Sequence[int], error: str) -> None:
        """Count a failed attempt on rows that stay unsent."""
        with self._begin() as conn:
            self._mark_failed(conn, ids, error)

    def _mark_sent(self, conn: Connection, ids: Sequence[int], at: datetime) -> None:
        if self._psycopg(conn):
            bulk.mark_outbox(conn, ids, {"sent_at": at, "last_error": None})
            return
        for where in self._id_chunks(O.c.id, ids):
            conn.execute(
                O.update().where(where).values(sent_at=at, attempts=O.c.attempts + 1, last_error=None)
            )

    def _mark_failed(self, conn: Connection, ids: Sequence[int], error: str) -> None:
        if self._psycopg(conn):
            bulk.mark_outbox(conn, ids, {"last_error": error[:2000]})
            return
        for where in self._id_chunks(O.c.id, ids):
            conn.execute(O.update().where(where).values(attempts=O.c.attempts + 1, last_error=error[:2000]))

    def outbox_events(self, spec: str | None = None, sent: bool | None = None) -> list[OutboxRow]:
        """Outbox rows (all, or only sent / unsent), oldest first."""
        with self._begin() as conn:
            q = sa.select(O)
            if spec:
                q = q.where(O.c.spec == spec)
            if sent is not None:
                q = q.where(O.c.sent_at.is_not(None) if sent else O.c.sent_at.is_(None))
            return [_outbox_row(r) for r in conn.execute(q.order_by(O.c.id))]

    def outbox_backlog(self, spec: str | None = None) -> tuple[int, datetime | None]:
        """(number of unsent rows, creation time of the oldest) — the relay's health."""
        with self._begin() as conn:
            q = sa.select(sa.func.count(), sa.func.min(O.c.created_at)).where(
                O.c.sent_at.is_(None), O.c.dead_at.is_(None)
            )
            if spec:
                q = q.where(O.c.spec == spec)
            n, oldest = conn.execute(q).one()
            return int(n), _aware(oldest)

    def dead_letters(self, spec: str | None = None, limit: int = 20) -> tuple[int, list[OutboxRow]]:
        """(parked rows, the oldest ``limit`` of them with their errors)."""
        with self._begin() as conn:
            q = sa.select(sa.func.count()).select_from(O).where(O.c.dead_at.is_not(None))
            rows = sa.select(O).where(O.c.dead_at.is_not(None))
            if spec:
                q, rows = q.where(O.c.spec == spec), rows.where(O.c.spec == spec)
            n = int(conn.execute(q).scalar() or 0)
            return n, [_outbox_row(r) for r in conn.execute(rows.order_by(O.c.id).limit(limit)).all()]

    def claim(self, limit: int, spec: str | None = None, *, after: int = 0) -> Claim:
        """Take up to ``limit`` unsent rows for one relay, so no other relay takes them too.

        PostgreSQL/MySQL: the rows are locked (``FOR UPDATE SKIP LOCKED``) in a transaction the
        claim holds until :meth:`Claim.close`; other relays skip them, and a relay that dies
        releases them at once. SQLite: relays take turns, one claim at a time, under an OS file
        lock beside the database.
        """
        from .claims import open_claim

        self.migrate()
        return open_claim(self, limit, spec, after)

    def _reject(
        self, conn: Connection, errors: dict[int, str], max_attempts: int, now: datetime
    ) -> list[int]:
        """Count a refused attempt on each row (with its error); park the rows that reached
        ``max_attempts`` (``dead_at``) and send their findings back to ``open`` with the reason.
        Returns the ids parked."""
        if not errors:
            return []
        conn.execute(
            O.update()
            .where(O.c.id == sa.bindparam("_id"))
            .values(attempts=O.c.attempts + 1, last_error=sa.bindparam("_error")),
            [{"_id": i, "_error": e[:2000]} for i, e in errors.items()],
        )
        dead = conn.execute(
            sa.select(O.c.id, O.c.spec, O.c.finding_id, O.c.last_error).where(
                O.c.id.in_(list(errors)), O.c.attempts >= max_attempts
            )
        ).all()
        if not dead:
            return []
        conn.execute(O.update().where(O.c.id.in_([d.id for d in dead])).values(dead_at=now))
        for d in dead:
            if d.finding_id is not None:
                conn.execute(
                    F.update()
                    .where(F.c.id == d.finding_id, F.c.status == FindingStatus.CORRECTING.value)
                    .values(
                        status=FindingStatus.OPEN.value,
                        note=f"correction parked in the outbox (row {d.id}): {d.last_error}"[:2000],
                    )
                )
        return [d.id for d in dead]

    # -- preflight gates -----------------------------------------------------------------
    def record_preflight(
        self,
        *,
        check_id: str,
        spec: str,
        checked_at: datetime,
        success: bool,
        results: dict[str, Any],
        docs: str | None,
    ) -> None:
        from .preflight import record_preflight

        record_preflight(
            self,
            check_id=check_id,
            spec=spec,
            checked_at=checked_at,
            success=success,
            results=results,
            docs=docs,
        )

    def preflight_history(self, spec: str, limit: int = 20) -> list[PreflightRecord]:
        from .preflight import preflight_history

        return preflight_history(self, spec, limit)

    def baseline_run(self, spec: str) -> RunRecord | None:
        from .preflight import baseline_run

        return baseline_run(self, spec)

    # -- read-only queries for the dashboard and /metrics (reconcile.store.queries) -------
    def spec_names(self) -> list[str]:
        from .queries import spec_names

        return spec_names(self)

    def runs(
        self,
        spec: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        from .queries import runs

        return runs(self, spec, since=since, until=until, limit=limit)

    def latest_runs(self) -> dict[str, RunRecord]:
        from .queries import latest_runs

        return latest_runs(self)

    def run_counts(self) -> dict[tuple[str, str], int]:
        from .queries import run_counts

        return run_counts(self)

    def finding_counts(self) -> dict[tuple[str, str, str], int]:
        from .queries import finding_counts

        return finding_counts(self)

    def finding_records(
        self,
        spec: str,
        *,
        statuses: Sequence[str] | None = None,
        since: datetime | None = None,
        key_ids: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[FindingRecord]:
        from .queries import finding_records

        return finding_records(self, spec, statuses=statuses, since=since, key_ids=key_ids, limit=limit)

    def corrections(self, spec: str, finding_ids: Sequence[int]) -> list[CorrectionRecord]:
        from .queries import corrections

        return corrections(self, spec, finding_ids)

    def outbox_backlogs(self) -> dict[str, tuple[int, datetime | None]]:
        from .queries import outbox_backlogs

        return outbox_backlogs(self)

    def outbox_dead(self) -> dict[str, int]:
        from .queries import outbox_dead

        return outbox_dead(self)

    def heal_histograms(
        self, bounds: Sequence[float], specs: Sequence[str] | None = None
    ) -> dict[str, HealHistogram]:
        from .queries import heal_histograms

        return heal_histograms(self, bounds, specs)


def _outbox_row(r: Any) -> OutboxRow:
    return OutboxRow(
        id=r.id,
        event_id=r.event_id,
        spec=r.spec,
        run_id=r.run_id,
        topic=r.topic,
        transport=r.transport,
        message_key=r.message_key,
        headers=dict(r.headers or {}),
        payload=r.payload,
        created_at=_aware(r.created_at),  # type: ignore[arg-type]
        sent_at=_aware(r.sent_at),
        attempts=r.attempts or 0,
        last_error=r.last_error,
        dead_at=_aware(r.dead_at),
    )


def _json(value: Any) -> Any:
    from ..compare import jsonable

    return jsonable(value)


def open_store(url: str | None = None) -> Store:
    """The audit store at ``url`` (``--store``), else ``$RECONCILE_STORE_URL``, else the SQLite default."""
    return AuditStore(url)
