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
* inserts go through ``COPY``, or ``INSERT ... SELECT`` from a temporary table when a conflict
  must be skipped.

Recording a run's findings (a COPY and one statement for all of them) is
:mod:`reconcile.store.record`. Other databases keep the portable SQLAlchemy statements in
:mod:`reconcile.store`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["enqueue", "cursor", "raw", "COMPACT"]


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


_OUTBOX_IN = """
CREATE TEMPORARY TABLE reconcile_outbox_in (
  ord integer, event_id text, spec text, run_id text, finding_id integer, topic text, transport text,
  message_key text, headers text, payload text, created_at timestamptz
) ON COMMIT DROP
"""
_OUTBOX_COLUMNS = (
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


def enqueue(conn: Connection, rows: Sequence[dict[str, Any]]) -> tuple[int, set[str]]:
    """Outbox rows in, in their order, skipping event ids already there: (rows written, the
    event ids already there and parked). One COPY and two statements, whatever the count.

    A concurrent correction that inserts the same ids between the check and the insert makes
    the insert fail on the unique event id (the caller says so); nothing is ever doubled.
    """
    with cursor(conn) as cur:
        cur.execute("DROP TABLE IF EXISTS reconcile_outbox_in")
        cur.execute(_OUTBOX_IN)
        names = ", ".join(("ord", *_OUTBOX_COLUMNS))
        with cur.copy(f"COPY reconcile_outbox_in ({names}) FROM STDIN") as copy:
            for i, r in enumerate(rows):
                copy.write_row((i, *(json.dumps(r[c]) if c == "headers" else r[c] for c in _OUTBOX_COLUMNS)))
        cur.execute(
            "SELECT o.event_id FROM reconcile_outbox_in t JOIN reconcile_outbox o ON o.event_id = t.event_id"
            " WHERE o.dead_at IS NOT NULL"
        )
        parked = {r[0] for r in cur}
        cols = ", ".join(_OUTBOX_COLUMNS)
        values = ", ".join(f"t.{c}::json" if c == "headers" else f"t.{c}" for c in _OUTBOX_COLUMNS)
        cur.execute(
            f"INSERT INTO reconcile_outbox ({cols}, attempts) SELECT {values}, 0 FROM reconcile_outbox_in t"
            " WHERE NOT EXISTS (SELECT 1 FROM reconcile_outbox o WHERE o.event_id = t.event_id)"
            " ORDER BY t.ord"
        )
        written = cur.rowcount
        cur.execute("DROP TABLE reconcile_outbox_in")
    return written, parked


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
