"""Topic sides without services: the embedded log as the topic, SQLite tables as the other side.

The spec rules of a topic side, every finding kind in both directions, the in-flight rule, the
latest-per-key view, poison messages and keys that cannot be read, the spill staying on disk
and going away, and the preflight note.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconcile.app import Context, audit, validate
from reconcile.errors import SpecError
from reconcile.events.embedded import EmbeddedLog
from reconcile.sources.topic import TopicSource

from .topic_cases import Msg, event, journal, outbox, spec


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Context, EmbeddedLog, str, str]]:
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    ctx = Context(store_url=f"sqlite:///{tmp_path / 'store.db'}", embedded_url=log_url)
    log = EmbeddedLog(log_url)
    yield ctx, log, db, f"t.{uuid.uuid4().hex[:8]}"
    log.dispose()
    ctx.close()


def put(log: EmbeddedLog, topic: str, msgs: list[Msg]) -> None:
    log.append([(topic, m.key, m.headers, m.text_value()) for m in msgs])  # type: ignore[union-attr]


def side(topic: str, **more: Any) -> dict[str, Any]:
    return {"topic": topic, "transport": "embedded", **more}


# -- the spec --------------------------------------------------------------------------------------
def base(projection: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "name": "s",
        "truth": {"url": "sqlite://", "table": "t"},
        "projection": projection,
        "key": ["event_id"],
        **more,
    }


@pytest.mark.parametrize(
    ("projection", "more", "message"),
    [
        ({"topic": "t"}, {}, "a topic side needs `fields:`"),
        ({"topic": "t", "table": "x", "fields": {"event_id": "key"}}, {}, "`table:` cannot go with `topic:`"),
        ({"topic": "t", "url": "sqlite://", "fields": {"event_id": "key"}}, {}, "`url:` cannot go"),
        ({"topic": "t", "since": "1h", "from": "earliest", "fields": {"event_id": "key"}}, {}, "not both"),
        ({"topic": "t", "since": "0s", "fields": {"event_id": "key"}}, {}, "positive duration"),
        ({"topic": "t", "from": "latest", "fields": {"event_id": "key"}}, {}, "projection.from"),
        ({"topic": "t", "fields": {"event_id": "body.id"}}, {}, "is not a field"),
        ({"topic": "t", "fields": {"event_id": "$..id"}}, {}, "recursive descent"),
        ({"topic": "t", "fields": {"_offset": "offset", "event_id": "key"}}, {}, "built-in column"),
        ({"topic": "t", "fields": {"id": "key"}}, {}, "no field 'event_id' on topic t"),
        ({"topic": "t", "fields": {"event_id": "key"}}, {"columns": ["amount"]}, "no field 'amount'"),
        ({"topic": "t", "fields": {"event_id": "key"}}, {"fanout": 4}, "fanout: a topic side"),
        ({"url": "sqlite://", "table": "p", "since": "1h"}, {}, "`since:` is only for a topic side"),
        (
            {"url": "sqlite://", "table": "p"},
            {"freshness": {"consumer_group": "g"}},
            "only applies to a topic",
        ),
    ],
)
def test_spec_rules_of_a_topic_side(projection: dict[str, Any], more: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("`", "`")):
        spec(base(projection, **more))


def test_a_topic_spec_loads_as_the_issue_writes_it() -> None:
    s = spec(
        {
            "name": "orders-published",
            "truth": {"url": "sqlite://", "table": "shop_outbox"},
            "projection": {
                "topic": "shop.orders",
                "bootstrap": "127.0.0.1:9092",
                "since": "24h",
                "latest_per_key": False,
                "fields": {"event_id": "header:ce_id", "order_id": "$.data.order_id", "at": "_timestamp"[1:]},
            },
            "key": ["event_id"],
            "columns": {"order_id": {}},
            "freshness": {"consumer_group": "inventory-projector", "projection_column": "_timestamp"},
        }
    )
    p = s.projection
    assert p.is_topic and p.since is not None and p.since.total_seconds() == 86400
    assert p.columns == ("event_id", "order_id", "at", "_partition", "_offset", "_timestamp")
    assert p.display == "topic shop.orders at 127.0.0.1:9092"
    assert not s.truth.is_topic and s.truth.columns == ()


# -- audits on the embedded log ------------------------------------------------------------------
def test_outbox_vs_topic_on_the_embedded_log(world: tuple[Context, EmbeddedLog, str, str]) -> None:
    ctx, log, db, topic = world
    outbox(db, [{"event_id": f"e{i}", "order_id": i, "amount": i} for i in range(8)])
    msgs = [event(f"e{i}", {"order_id": i, "amount": 5 if i == 2 else i}) for i in range(8) if i != 6]
    put(log, topic, [*msgs, msgs[0], event("ghost", {"order_id": 99, "amount": 1})])
    doc = base(
        side(
            topic,
            fields={"event_id": "header:ce_id", "order_id": "$.data.order_id", "amount": "$.data.amount"},
        ),
        columns=["order_id", "amount"],
    )
    doc["truth"] = {"url": db, "table": "shop_outbox"}
    result = audit(ctx, spec(doc))
    got = sorted((f.kind.value, f.key["event_id"]) for f in result.findings)
    assert got == [("duplicate", "e0"), ("mismatch", "e2"), ("missing", "e6"), ("orphan", "ghost")]
    assert all(f.projection is None or f.projection["_partition"] == 0 for f in result.findings)
    assert result.scope["topics"]["projection"]["transport"] == "embedded"


def test_topic_truth_vs_journal_with_the_groups_offsets(world: tuple[Context, EmbeddedLog, str, str]) -> None:
    ctx, log, db, topic = world
    put(log, topic, [event(f"e{i}", {"n": i}) for i in range(10)])
    first = ctx.topic_reader(spec(base(side(topic, fields={"event_id": "key"}))).projection)
    start = first.extent(topic, None).start[0]
    first.close()
    with log.engine.begin() as conn:  # the projector consumed 6 events (offsets start..start+5)
        log.commit(conn, "projector", topic, start + 6)
    journal(db, [f"e{i}" for i in range(6) if i != 4])
    doc = {
        "name": "applied",
        "truth": side(topic, fields={"event_id": "header:ce_id"}),
        "projection": {"url": db, "table": "applied_events"},
        "key": ["event_id"],
        "freshness": {"consumer_group": "projector"},
    }
    result = audit(ctx, spec(doc))
    assert [f.key["event_id"] for f in result.findings] == ["e4"]  # consumed, never applied
    assert result.summary.pending == 4  # e6..e9 are still in flight
    with pytest.raises(SpecError, match="group 'nope' is not known"):
        validate(ctx, spec({**doc, "freshness": {"consumer_group": "nope"}}))


def test_latest_per_key_tombstones_and_unkeyed(world: tuple[Context, EmbeddedLog, str, str]) -> None:
    from .builders import make_table

    ctx, log, db, topic = world
    import sqlalchemy as sa

    make_table(
        db,
        "stock",
        [sa.Column("sku", sa.String, primary_key=True), sa.Column("on_hand", sa.Integer)],
        [{"sku": "A", "on_hand": 2}, {"sku": "C", "on_hand": 1}],
    )
    put(
        log,
        topic,
        [
            Msg({"on_hand": 1}, "A"),
            Msg({"on_hand": 1}, "C"),
            Msg({"on_hand": 2}, "A"),
            Msg(None, "C"),
            Msg({"on_hand": 7}, None),
        ],
    )
    doc = {
        "name": "stock",
        "truth": {"url": db, "table": "stock"},
        "projection": side(topic, latest_per_key=True, fields={"sku": "key", "on_hand": "$.on_hand"}),
        "key": ["sku"],
        "columns": ["on_hand"],
    }
    result = audit(ctx, spec(doc))
    assert [(f.kind.value, f.key["sku"]) for f in result.findings] == [("missing", "C")]
    read = result.scope["topics"]["projection"]["read"]
    assert read["unkeyed"] == 1 and read["tombstones"] == 1 and read["rows"] == 1


def test_unreadable_messages_are_counted_not_fatal(world: tuple[Context, EmbeddedLog, str, str]) -> None:
    ctx, log, db, topic = world
    journal(db, ["1", "2"])
    put(
        log,
        topic,
        [
            Msg({"id": 1}, "a"),
            Msg("{broken", "b"),
            Msg({"id": "two"}, "c"),  # the key column is an integer on the other side
            Msg({"other": True}, "d"),  # no key field at all: another kind of event
            Msg({"id": 2}, "e"),
        ],
    )
    doc = {
        "name": "ids",
        "truth": {"url": db, "table": "applied_events"},
        "projection": side(topic, fields={"event_id": "$.id"}),
        "key": ["event_id"],
    }
    # The journal's event_id is text; make the key an integer on both sides with a query.
    doc["truth"] = {"url": db, "query": "SELECT CAST(event_id AS INTEGER) AS event_id FROM applied_events"}
    result = audit(ctx, spec(doc))
    assert result.findings == [] and result.summary.projection_rows == 2
    read = result.scope["topics"]["projection"]["read"]
    assert read["invalid_json"] == 1 and read["invalid"][0]["offset"] > 0
    assert read["bad_key"] == 1 and "not an integer" in read["bad_keys"][0]["error"]
    assert read["no_key"] == 1
    problems = result.scope["topics"]["projection"]["problems"]
    assert len(problems) == 3 and all(f"topic {topic}" in p for p in problems)
    assert json.loads(json.dumps(result.to_dict(), default=str))["scope"]["topics"]


def test_the_spill_is_a_temporary_file_removed_on_close(world: tuple[Context, EmbeddedLog, str, str]) -> None:
    from reconcile.sources.sql import ReadPlan

    ctx, log, _db, topic = world
    put(log, topic, [Msg({"id": i}, str(i)) for i in range(50)])
    s = spec(base(side(topic, fields={"event_id": "$.id"})))
    src = TopicSource(s.projection, "projection", ctx.topic_reader(s.projection), cache_mb=1)
    rows = list(src.stream(ReadPlan(["event_id"], ["int"], [])))
    assert [r.key for r in rows] == [(i,) for i in range(50)]
    assert os.path.exists(src.path) and src.stats.spill_bytes > 0
    src.dispose()
    assert not os.path.exists(os.path.dirname(src.path))


def test_preflight_skips_a_topic_side_with_a_note(
    world: tuple[Context, EmbeddedLog, str, str], tmp_path: Path
) -> None:
    from reconcile.app import preflight

    ctx, log, db, topic = world
    journal(db, ["a"])
    put(log, topic, [Msg({"id": "a"}, "a")])
    doc = {
        "name": "skip",
        "truth": {"url": db, "table": "applied_events"},
        "projection": side(topic, fields={"event_id": "$.id"}),
        "key": ["event_id"],
    }
    result = preflight(ctx, spec(doc), build_docs=False)
    assert result.success
    proj = result.side("projection")
    assert proj.outcomes == () and proj.note and "topic side" in proj.note
    assert result.side("truth").outcomes and result.to_dict()["sides"]["projection"]["skipped"]


def test_the_shops_stage_specs_load_as_shipped() -> None:
    from reconcile.shop import stage_spec_paths
    from reconcile.spec import load_spec

    published = load_spec(stage_spec_paths()["published"])
    applied = load_spec(stage_spec_paths()["applied"])
    assert published.projection.is_topic and published.projection.transport == "embedded"
    assert published.key_truth == ["order_id"] and published.projection.where == "type = 'OrderPlaced'"
    assert applied.truth.is_topic and applied.freshness.consumer_group == "inventory-projector"
    for name in ("shop-orders-published.yaml", "shop-orders-applied.yaml"):
        assert (Path(__file__).resolve().parent.parent / "specs" / name).resolve().is_file()


def test_json_objects_and_lists_compare_with_a_json_column(
    world: tuple[Context, EmbeddedLog, str, str],
) -> None:
    import sqlalchemy as sa

    from .builders import make_table

    ctx, log, db, topic = world
    payloads: dict[str, dict[str, Any]] = {
        f"e{i}": {"order_id": i, "lines": [{"sku": "A"}, {"sku": f"S{i}"}]} for i in range(3)
    }
    make_table(
        db,
        "outbox_json",
        [
            sa.Column("event_id", sa.String, primary_key=True),
            sa.Column("payload", sa.Text),
            sa.Column("skus", sa.Text),
        ],
        [
            {"event_id": k, "payload": json.dumps(v), "skus": json.dumps([ln["sku"] for ln in v["lines"]])}
            for k, v in payloads.items()
        ],
    )
    changed = {**payloads["e2"], "lines": [{"sku": "A"}]}
    put(log, topic, [event(k, changed if k == "e2" else v) for k, v in payloads.items()])
    doc = {
        "name": "json",
        "truth": {"url": db, "table": "outbox_json"},
        "projection": side(
            topic, fields={"event_id": "header:ce_id", "payload": "$.data", "skus": "$.data.lines[*].sku"}
        ),
        "key": ["event_id"],
        "columns": ["payload", "skus"],
    }
    result = audit(ctx, spec(doc))
    assert [(f.key["event_id"], f.columns) for f in result.findings] == [("e2", ("payload", "skus"))]
    f = result.findings[0]
    assert f.projection is not None and f.projection["payload"] == changed and f.projection["skus"] == ["A"]


def test_a_corrective_event_from_a_topic_truth_carries_only_compared_columns() -> None:
    from datetime import UTC, datetime

    from reconcile.events.cloudevent import build_event
    from reconcile.findings import Finding, FindingKind

    s = spec(
        {
            "name": "stock-from-cdc",
            "truth": {
                "topic": "stock.cdc",
                "latest_per_key": True,
                "fields": {"sku": "key", "on_hand": "$.on_hand"},
            },
            "projection": {"url": "sqlite://", "table": "stock_view"},
            "key": ["sku"],
            "columns": ["on_hand"],
            "correction": {"topic": "stock.reconciled", "event_type": "StockReconciled"},
        }
    )
    plain = Finding(FindingKind.MISSING, {"sku": "A"}, truth={"on_hand": 3})
    located = Finding(
        FindingKind.MISSING,
        {"sku": "A"},
        truth={"on_hand": 3, "_partition": 1, "_offset": 9, "_timestamp": datetime.now(UTC)},
    )
    a, b = build_event(s, plain, "run-1"), build_event(s, located, "run-1")
    assert b.data["state"] == {"on_hand": 3} and a.id == b.id


def test_a_timestamp_field_can_be_the_key(world: tuple[Context, EmbeddedLog, str, str]) -> None:
    import time
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from .builders import make_table

    ctx, log, db, topic = world
    for i in range(3):
        put(log, topic, [Msg({"n": i}, str(i))])
        time.sleep(0.01)
    reader = ctx.topic_reader(spec(base(side(topic, fields={"event_id": "key"}))).projection)
    got = [m for b in reader.read(reader.extent(topic, None)) for m in b]
    reader.close()
    times = [datetime.fromtimestamp(m[2] / 1000, UTC) for m in got]
    make_table(
        db,
        "ticks",
        [sa.Column("at", sa.DateTime(timezone=True), primary_key=True), sa.Column("n", sa.Integer)],
        [{"at": t, "n": 5 if i == 1 else i} for i, t in enumerate(times)],
    )
    doc = {
        "name": "ticks",
        "truth": {"url": db, "table": "ticks"},
        "projection": side(topic, fields={"at": "timestamp", "n": "$.n"}),
        "key": ["at"],
        "columns": ["n"],
    }
    result = audit(ctx, spec(doc))
    assert [(f.kind.value, f.key["at"]) for f in result.findings] == [("mismatch", times[1])]
    assert result.findings[0].projection is not None and result.findings[0].projection["_offset"] >= 0
    again = audit(ctx, spec(doc), keys=[(times[1].isoformat(),)])
    assert len(again.findings) == 1 and again.summary.compared == 1
