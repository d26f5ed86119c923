"""The outbox COPY written as text by ``bulk.outbox_lines`` stores what psycopg's ``write_row``
stores, value for value (the fast path of ``correct`` on PostgreSQL), and the event-id lookup
bound as one array literal finds ids with quotes and backslashes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.store import AuditStore, bulk

pytestmark = pytest.mark.integration

AT = datetime(2026, 11, 28, 12, 30, 1, 123456, tzinfo=UTC)
TRICKY = [
    "plain",
    "back\\slash",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    'quote"d',
    "\\N",
    "ünïcødé ✓",
    "",
    "\\t literal",
    "{curly,comma}",
]


def rows(tag: str, texts: list[str]) -> list[tuple[Any, ...]]:
    out = []
    for i, t in enumerate(texts):
        out.append(
            (
                f"{tag}-{i}-{t}",
                f"spec {t}",
                f"run\t{t}",
                None if i % 3 == 0 else i,
                f"topic{t}",
                "kafka" if i % 2 else t[:20],
                json.dumps({"sku": t}),
                {"ce_id": t, "h\n": f"v{t}"},
                None if i % 4 == 1 else t + json.dumps({"state": t}),
                AT + timedelta(seconds=i) if i % 5 else AT.astimezone(timezone(timedelta(hours=-7))),
            )
        )
    return out


@pytest.fixture
def store(make_pg_db) -> Iterator[AuditStore]:  # type: ignore[no-untyped-def]
    s = AuditStore(make_pg_db("store"))
    s.migrate()
    yield s
    s.dispose()


def stored(store: AuditStore, prefix: str) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        got = conn.execute(
            sa.text(
                "SELECT substr(event_id, length(:p) + 1), spec, run_id, finding_id, topic, transport,"
                " message_key, headers::text, payload, created_at, attempts, sent_at, dead_at, last_error"
                " FROM reconcile_outbox WHERE event_id LIKE :p || '%' ORDER BY id"
            ),
            {"p": prefix},
        ).all()
    return [(*r[:7], json.loads(r[7]), *r[8:]) for r in got]


def write(store: AuditStore, data: list[tuple[Any, ...]], as_text: bool) -> tuple[int, set[str]]:
    with store.engine.begin() as conn:
        return bulk.enqueue(conn, data, bulk.outbox_lines(data) if as_text else None)


def test_copy_text_rows_are_what_write_row_stores(store: AuditStore) -> None:
    assert write(store, rows("a", TRICKY), as_text=False)[0] == len(TRICKY)
    assert write(store, rows("b", TRICKY), as_text=True)[0] == len(TRICKY)
    old, new = stored(store, "a"), stored(store, "b")
    assert new == old
    assert len(new) == len(TRICKY)


def test_ids_already_there_are_skipped_whatever_their_characters(store: AuditStore) -> None:
    data = rows("c", TRICKY)
    assert write(store, data[:5], as_text=True) == (5, set())
    with store.engine.begin() as conn:  # one of them parked: the lookup says so
        conn.execute(
            sa.text("UPDATE reconcile_outbox SET dead_at = now() WHERE event_id = :e"), {"e": data[2][0]}
        )
    written, parked = write(store, data, as_text=True)
    assert (written, parked) == (len(TRICKY) - 5, {data[2][0]})
    assert [r[0] for r in stored(store, "c")] == [r[0][1:] for r in data]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20),
        min_size=1,
        max_size=6,
    )
)
def test_any_text_round_trips_like_write_row(store: AuditStore, texts: list[str]) -> None:
    tag = uuid.uuid4().hex[:12]
    assert write(store, rows(tag + "x", texts), as_text=False)[0] == len(texts)
    assert write(store, rows(tag + "y", texts), as_text=True)[0] == len(texts)
    assert stored(store, tag + "y") == stored(store, tag + "x")


@settings(deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=10))
def test_outbox_lines_headers_json_is_json_dumps(headers: dict[str, str]) -> None:
    # the COPY text's headers column: the encoder built once gives json.dumps' text, byte for byte
    assert bulk._dumps(headers) == json.dumps(headers)
    line = bulk.outbox_lines(
        [("e", "s", "r", 1, "t", "kafka", "k", headers, None, datetime(2026, 1, 1, tzinfo=UTC))]
    )
    assert line[0].split("\t")[7] == bulk.copy_text(json.dumps(headers))
