"""Set-based statements of the PostgreSQL (psycopg) audit store: one statement per batch of rows.

Recording a run and correcting it touch every finding; row-at-a-time statements, or a
lookup the planner turns into a scan, make that quadratic (issue 14/15: 100k findings took
minutes). Here every batch is one statement over arrays bound as parameters (``unnest``), or a
``COPY``:

* lookups go key by key through the ``(spec, key_id)`` indexes whatever the table's statistics
  say: a ``LATERAL`` subquery with ``LIMIT 1`` cannot be flattened into a join, so the planner
  cannot start from the findings table. (Inside a run's own transaction the table has grown by
  rows ANALYZE never saw; the ``IN (SELECT unnest(...))`` form then scanned every active finding
  of the spec once per batch.)
* updates join the table to ``unnest`` of the new values, by primary key;
* inserts go through ``COPY``; outbox rows whose event id is already there are looked up first
  (through the unique index) and left out of it.

Other databases keep the portable SQLAlchemy statements in :mod:`reconcile.store`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..compare import jsonable
from ..findings import Finding, FindingStatus
from ..lifecycle import Stored
from .schema import ACTIVE_STATUSES

__all__ = [
    "active_and_episodes",
    "update_seen_again",
    "copy_rows",
    "enqueue",
    "cursor",
    "raw",
    "OUTBOX_COLUMNS",
]


def raw(conn: Connection) -> Any:
    """The psycopg connection under a SQLAlchemy connection (same transaction)."""
    return conn.connection.driver_connection


@contextmanager
def cursor(conn: Connection) -> Iterator[Any]:
    """A psycopg cursor in the connection's transaction; psycopg's errors come out as
    SQLAlchemy's (``IntegrityError``...), as from any other statement of the store."""
    import psycopg

    try:
        with raw(conn).cursor() as cur:
            yield cur
    except psycopg.Error as e:
        raise sa.exc.DBAPIError.instance("", None, e, psycopg.Error) from e


# json.dumps(value, separators=(",", ":")) without a new encoder per call (four per finding)
COMPACT = json.JSONEncoder(separators=(",", ":"))


def _json(value: Any) -> str | None:
    return None if value is None else COMPACT.encode(jsonable(value))


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


_ACTIVE_AND_EPISODES = """
SELECT k.key_id, a.id, a.status, a.times_seen, a.first_seen, a.note, a.episode,
       CASE WHEN a.id IS NULL THEN
         (SELECT max(e.episode) FROM reconcile_findings e WHERE e.spec = %(spec)s AND e.key_id = k.key_id)
       END AS last_episode
FROM unnest(%(keys)s::text[]) AS k(key_id)
LEFT JOIN LATERAL (
  SELECT f.id, f.status, f.times_seen, f.first_seen, f.note, f.episode
  FROM reconcile_findings f
  WHERE f.spec = %(spec)s AND f.key_id = k.key_id AND f.status = ANY(%(active)s::text[])
  LIMIT 1
) a ON true
"""


def active_and_episodes(
    conn: Connection, spec: str, key_ids: Sequence[str]
) -> tuple[dict[str, Stored], dict[str, int]]:
    """Each key's active finding (at most one: a unique index), and for keys with none the last
    episode they had. One statement, one index lookup per key."""
    active: dict[str, Stored] = {}
    before: dict[str, int] = {}
    if not key_ids:
        return active, before
    with cursor(conn) as cur:
        # A generic plan: a spec whose rows this very transaction inserted is one ANALYZE never
        # saw, and a plan for its name as a value estimates it at 1 row, scans the (spec, status)
        # index and filters every row of the spec per key (measured: 143 s for 5,000 keys against
        # 50,000 rows, 24 ms with the generic plan, which estimates a spec by the number of specs).
        cur.execute("SELECT current_setting('plan_cache_mode')")
        (mode,) = cur.fetchone()
        cur.execute("SELECT set_config('plan_cache_mode', 'force_generic_plan', true)")
        cur.execute(
            _ACTIVE_AND_EPISODES,
            {"spec": spec, "keys": list(key_ids), "active": list(ACTIVE_STATUSES)},
            prepare=False,  # planned again each batch: the table grows within the transaction
        )
        rows = cur.fetchall()
        cur.execute("SELECT set_config('plan_cache_mode', %s, true)", (mode,))
        for key_id, row_id, status, times_seen, first_seen, note, episode, last in rows:
            if row_id is not None:
                active[key_id] = Stored(
                    row_id, key_id, FindingStatus(status), times_seen, _aware(first_seen), note, episode
                )
            elif last is not None:
                before[key_id] = int(last)
    return active, before


_SEEN_AGAIN = """
UPDATE reconcile_findings AS f
SET kind = u.kind, columns = u.columns::json, truth = u.truth::json, projection = u.projection::json,
    copies = u.copies, times_seen = u.times_seen, last_seen = %(now)s, last_run_id = %(run_id)s
FROM unnest(%(ids)s::int[], %(kinds)s::text[], %(columns)s::text[], %(truth)s::text[],
            %(projection)s::text[], %(copies)s::int[], %(times_seen)s::int[])
     AS u(id, kind, columns, truth, projection, copies, times_seen)
WHERE f.id = u.id
"""


def update_seen_again(
    conn: Connection, again: Sequence[tuple[int, Finding]], *, now: datetime, run_id: str
) -> None:
    """Findings seen again by a run: their values, one more sighting, this run's id."""
    if not again:
        return
    params = {
        "now": now,
        "run_id": run_id,
        "ids": [row_id for row_id, _ in again],
        "kinds": [f.kind.value for _, f in again],
        "columns": [COMPACT.encode(list(f.columns)) for _, f in again],
        "truth": [_json(f.truth) for _, f in again],
        "projection": [_json(f.projection) for _, f in again],
        "copies": [f.copies for _, f in again],
        "times_seen": [f.times_seen for _, f in again],
    }
    with cursor(conn) as cur:
        cur.execute(_SEEN_AGAIN, params)


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``COPY table (columns) FROM STDIN`` of rows already in column order (JSON as text)."""
    names = ", ".join(f'"{c}"' for c in columns)
    with cursor(conn) as cur, cur.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row(row)


OUTBOX_COLUMNS = (
    "event_id",
    "spec",
    "run_id",
    "finding_id",
    "topic",
    "transport",
    "message_key",
    "headers",
    "payload",
    "created_at",
)
_HEADERS = OUTBOX_COLUMNS.index("headers")


def enqueue(conn: Connection, rows: Sequence[Sequence[Any]]) -> tuple[int, set[str]]:
    """Outbox rows in (tuples in :data:`OUTBOX_COLUMNS` order, headers as a dict), in their
    order, skipping event ids already there: (rows written, the event ids already there and
    parked). One lookup of the ids through their unique index, then one COPY of the new rows
    straight into the outbox.

    A concurrent correction that inserts the same ids between the lookup and the COPY makes the
    COPY fail on the unique event id (the caller says so); nothing is ever doubled.
    """
    with cursor(conn) as cur:
        cur.execute(
            "SELECT event_id, dead_at IS NOT NULL FROM reconcile_outbox WHERE event_id = ANY(%s::text[])",
            ([r[0] for r in rows],),
        )
        there = dict(cur.fetchall())
        parked = {event_id for event_id, dead in there.items() if dead}
        fresh = [r for r in rows if r[0] not in there] if there else rows
        if fresh:
            names = ", ".join((*OUTBOX_COLUMNS, "attempts"))
            dumps, h = json.dumps, _HEADERS
            with cur.copy(f"COPY reconcile_outbox ({names}) FROM STDIN") as copy:
                for r in fresh:
                    copy.write_row((*r[:h], dumps(r[h]), *r[h + 1 :], 0))
    return len(fresh), parked


def int_array(ids: Iterable[int]) -> str:
    """Row ids as one PostgreSQL array literal: psycopg dumps a 20,000-item list in Python one
    item at a time; the server parses this text in a fraction of that."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def set_status(
    conn: Connection, table: str, ids: Sequence[int], values: dict[str, Any], only_from: Sequence[str]
) -> int:
    """``UPDATE table SET values WHERE id = ANY(ids) AND status IN only_from``: rows moved."""
    if not ids:
        return 0
    sets = ", ".join(f'"{c}" = %({c})s' for c in values)
    with cursor(conn) as cur:
        cur.execute(
            f'UPDATE "{table}" SET {sets}'
            " WHERE id = ANY(%(_ids)s::int[]) AND status = ANY(%(_from)s::text[])",
            {**values, "_ids": int_array(ids), "_from": list(only_from)},
        )
        return int(cur.rowcount or 0)


def mark_outbox(conn: Connection, ids: Sequence[int], values: dict[str, Any]) -> None:
    """Outbox rows (by id) get ``values``, each counting one more attempt."""
    if not ids:
        return
    sets = ", ".join(f'"{c}" = %({c})s' for c in values)
    with cursor(conn) as cur:
        cur.execute(
            f"UPDATE reconcile_outbox SET {sets}, attempts = attempts + 1 WHERE id = ANY(%(_ids)s::int[])",
            {**values, "_ids": int_array(ids)},
        )
