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

__all__ = ["enqueue", "outbox_lines", "copy_text", "text_array", "cursor", "raw", "COMPACT", "OUTBOX_COLUMNS"]


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


def enqueue(
    conn: Connection, rows: Sequence[Sequence[Any]], lines: Sequence[str] | None = None
) -> tuple[int, set[str]]:
    """Outbox rows in (tuples in :data:`OUTBOX_COLUMNS` order, headers as a dict), in their
    order, skipping event ids already there: (rows written, the event ids already there and
    parked). One lookup of the ids through their unique index, then one COPY of the new rows
    straight into the outbox. ``lines`` are the rows as :func:`outbox_lines` gives them, worked
    out beforehand (by the thread that built the rows): then the COPY is one write.

    A concurrent correction that inserts the same ids between the lookup and the COPY makes the
    COPY fail on the unique event id (the caller says so); nothing is ever doubled.
    """
    with cursor(conn) as cur:
        cur.execute(
            "SELECT event_id, dead_at IS NOT NULL FROM reconcile_outbox WHERE event_id = ANY(%s::text[])",
            (text_array([r[0] for r in rows]),),
        )
        there = dict(cur.fetchall())
        parked = {event_id for event_id, dead in there.items() if dead}
        fresh = [r for r in rows if r[0] not in there] if there else rows
        if fresh:
            names = ", ".join((*OUTBOX_COLUMNS, "attempts"))
            with cur.copy(f"COPY reconcile_outbox ({names}) FROM STDIN") as copy:
                if lines is not None:
                    # One write of the page's text: a row at a time, the copy gives the GIL up and
                    # waits for it again on every buffer it sends, while another thread builds.
                    page = (
                        lines
                        if not there
                        else [ln for r, ln in zip(rows, lines, strict=True) if r[0] not in there]
                    )
                    copy.write("".join(page))
                else:
                    dumps, h = json.dumps, _HEADERS
                    for r in fresh:
                        copy.write_row((*r[:h], dumps(r[h]), *r[h + 1 :], 0))
    return len(fresh), parked


# COPY's text format: a tab between columns, a newline after the row, \N for NULL, and a
# backslash before a backslash, tab, newline or carriage return in a value.
_NULL = "\\N"


def copy_text(value: str | None) -> str:
    """A text value (or NULL) as a column of COPY's text format."""
    if value is None:
        return _NULL
    if "\\" in value:  # JSON's own escapes: one C pass each (str.translate is a lookup per char)
        value = value.replace("\\", "\\\\")
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def outbox_lines(rows: Sequence[Sequence[Any]]) -> list[str]:
    """Outbox rows (as :func:`enqueue` takes them) as lines of COPY's text format, ``attempts``
    0 at the end: what ``copy.write_row`` sends for each, put together in one pass (the JSON of
    the headers included)."""
    esc, dumps = copy_text, _dumps
    consts: dict[str, str] = {}  # spec, run, topic, transport: the same on every row of a page

    def const(v: str) -> str:
        e = consts.get(v)
        if e is None:
            e = consts[v] = esc(v)
        return e

    return [
        f"{esc(eid)}\t{const(sp)}\t{const(run)}\t{_NULL if fid is None else int(fid)}\t{const(t)}\t"
        f"{const(tr)}\t{esc(key)}\t{esc(dumps(h))}\t{esc(payload)}\t{created.isoformat()}\t0\n"
        for eid, sp, run, fid, t, tr, key, h, payload, created in rows
    ]


def _json_dumps_encoder() -> Any:
    """``json.dumps(value)`` with its defaults, for the headers of every outbox row: ``dumps``
    builds a new C encoder on each call (about half the cost of a small dict's JSON); this one is
    built once. Without the circular-reference check, which a dict of texts does not need."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: json.dumps itself
        return json.dumps
    enc = make(
        None,
        json.JSONEncoder().default,
        json.encoder.encode_basestring_ascii,
        None,
        ": ",
        ", ",
        False,
        False,
        True,
    )
    return lambda value: "".join(enc(value, 0))


_dumps = _json_dumps_encoder()


def int_array(ids: Iterable[int]) -> str:
    """Row ids as one PostgreSQL array literal: psycopg dumps a 20,000-item list in Python one
    item at a time; the server parses this text in a fraction of that."""
    return "{" + ",".join(str(int(i)) for i in ids) + "}"


def text_array(values: Iterable[str]) -> str:
    """Texts as one PostgreSQL array literal (each quoted), for the same reason as
    :func:`int_array`."""
    return "{" + ",".join(['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]) + "}"


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
