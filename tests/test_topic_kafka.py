"""Topics as a side, against the real broker and PostgreSQL: the event path audited stage by stage.

Outbox rows vs the topic (missing = not published, orphan = phantom event, duplicate = one event
id twice, mismatch = payload differs), the topic vs the projector's journal with the in-flight
rule of a consumer group, CloudEvents in both content modes, a compacted topic's latest-per-key
view with tombstones, since windows, poison messages, and the one-line errors of an unreachable
broker and a missing topic.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from reconcile.app import Context, audit, validate
from reconcile.errors import SourceError, SpecError
from reconcile.events.kafka import KafkaSettings
from reconcile.findings import FindingKind, RunResult

from .topic_cases import (
    Msg,
    commit_group,
    delete_topic,
    event,
    journal,
    make_topic,
    outbox,
    produce,
    spec,
    topic_names,
    write,
)

pytestmark = pytest.mark.integration
RECONCILE = [sys.executable, "-m", "reconcile"]


@pytest.fixture
def topic3(kafka_bootstrap: str) -> Iterator[str]:
    name = make_topic(kafka_bootstrap, 3)
    yield name
    delete_topic(kafka_bootstrap, name)


@pytest.fixture
def ctx(make_pg_db, kafka_bootstrap: str) -> Iterator[Context]:  # type: ignore[no-untyped-def]
    c = Context(store_url=make_pg_db("store"), kafka=KafkaSettings(kafka_bootstrap), kafka_timeout_s=15)
    yield c
    c.close()


def by_kind(result: RunResult) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for f in result.findings:
        out.setdefault(f.kind.value, []).append(f)
    return {k: sorted(v, key=lambda f: f.key_id) for k, v in out.items()}


def outbox_spec(truth_url: str, topic: str, **projection: Any) -> dict[str, Any]:
    return {
        "name": f"orders-published-{uuid.uuid4().hex[:6]}",
        "truth": {"url": truth_url, "table": "shop_outbox"},
        "projection": {
            "topic": topic,
            "fields": {"event_id": "header:ce_id", "order_id": "$.data.order_id", "amount": "$.data.amount"},
            **projection,
        },
        "key": ["event_id"],
        "columns": {"order_id": {}, "amount": {}},
    }


def rows(n: int) -> list[dict[str, Any]]:
    return [{"event_id": f"ev-{i:04d}", "order_id": i, "amount": Decimal(i) / 4} for i in range(n)]


def test_outbox_vs_topic_finds_every_kind_with_positions(ctx: Context, pg_url: str, topic3: str) -> None:
    truth = rows(60)
    outbox(pg_url, truth)
    msgs = []
    for r in truth:
        i = r["order_id"]
        if i in (3, 17):  # written, never published
            continue
        amount = 999 if i == 25 else float(r["amount"])  # the event says something else
        msgs.append(event(r["event_id"], {"order_id": i, "amount": amount}, key=str(i)))
        if i == 40:  # delivered twice (a producer retry without idempotence)
            msgs.append(event(r["event_id"], {"order_id": i, "amount": amount}, key=str(i)))
    msgs.append(event("ev-phantom", {"order_id": 1000, "amount": 1}, key="1000"))  # never written
    produce(ctx.kafka_settings().bootstrap_servers, topic3, msgs)

    result = audit(ctx, spec(outbox_spec(pg_url, topic3)))
    kinds = by_kind(result)
    assert [f.key["event_id"] for f in kinds["missing"]] == ["ev-0003", "ev-0017"]
    assert [f.key["event_id"] for f in kinds["orphan"]] == ["ev-phantom"]
    assert [f.key["event_id"] for f in kinds["duplicate"]] == ["ev-0040"]
    assert [(f.key["event_id"], f.columns) for f in kinds["mismatch"]] == [("ev-0025", ("amount",))]
    assert result.exit_code == 1
    s = result.summary
    assert (s.truth_rows, s.projection_rows, s.compared) == (60, 60, 61)

    # Every finding on the topic side says where its message sits; a duplicate lists both copies.
    dup = kinds["duplicate"][0]
    assert dup.copies == 2 and len(dup.projection["_copies"]) == 2
    orphan = kinds["orphan"][0].projection
    assert orphan["order_id"] == 1000 and isinstance(orphan["_partition"], int) and orphan["_offset"] >= 0
    assert orphan["_timestamp"] > datetime.now(UTC) - timedelta(minutes=5)
    mm = kinds["mismatch"][0]
    assert mm.truth == {"order_id": 25, "amount": Decimal("6.25")} and mm.projection["amount"] == 999

    # The run records the extent it read: every partition, up to the end offsets at its start.
    t = result.scope["topics"]["projection"]
    assert t["topic"] == topic3 and set(t["partitions"]) == {"0", "1", "2"} and t["offsets"] == 60
    assert t["read"]["messages"] == 60 and t["read"]["rows"] == 60 and t["read"]["invalid_json"] == 0
    doc = json.loads(json.dumps(result.to_dict(), default=str))
    assert doc["findings"][0]["kind"] and doc["scope"]["topics"]["projection"]["since"] is None

    # --keys reads just those entities on both sides; the recheck found the same.
    only = audit(ctx, spec(outbox_spec(pg_url, topic3)), keys=[("ev-0003",), ("ev-0004",), ("ev-0040",)])
    assert sorted(f.kind.value for f in only.findings) == ["duplicate", "missing"]
    assert only.summary.compared == 3


def test_topic_as_truth_vs_the_projectors_journal(ctx: Context, pg_url: str, topic3: str) -> None:
    bootstrap = ctx.kafka_settings().bootstrap_servers
    ids = [f"ev-{i:03d}" for i in range(30)]
    msgs = [event(i, {"order_id": n}, key=str(n)) for n, i in enumerate(ids)]
    msgs.append(event("ev-005", {"order_id": 5}, key="5"))  # redelivered: the truth topic has it twice
    produce(bootstrap, topic3, msgs)
    applied = [i for i in ids if i not in ("ev-007", "ev-011")] + [
        "ev-999",
        "ev-020",
    ]  # a ghost, a double apply
    journal(pg_url, applied)
    doc = {
        "name": "orders-applied",
        "truth": {"topic": topic3, "fields": {"event_id": "header:ce_id"}},
        "projection": {"url": pg_url, "table": "applied_events"},
        "key": ["event_id"],
    }
    result = audit(ctx, spec(doc))
    kinds = by_kind(result)
    assert [f.key["event_id"] for f in kinds["missing"]] == ["ev-007", "ev-011"]  # consumed, never applied
    assert [f.key["event_id"] for f in kinds["orphan"]] == ["ev-999"]
    assert [f.key["event_id"] for f in kinds["duplicate"]] == ["ev-020"]
    assert all("_offset" in f.truth for f in kinds["missing"])
    read = result.scope["topics"]["truth"]["read"]
    assert read["duplicate_keys"] == 1 and result.summary.truth_rows == 30


def test_messages_past_the_groups_committed_offsets_are_pending(ctx: Context, pg_url: str) -> None:
    bootstrap = ctx.kafka_settings().bootstrap_servers
    topic = make_topic(bootstrap, 2)
    try:
        # Partition 0: offsets 0..9; partition 1: offsets 0..9. The projector committed 6 and 4.
        msgs = [event(f"p{p}-{o}", {"order_id": o}, partition=p) for p in (0, 1) for o in range(10)]
        produce(bootstrap, topic, msgs)
        group = f"projector-{uuid.uuid4().hex[:6]}"
        commit_group(bootstrap, topic, group, {0: 6, 1: 4})
        # It applied what it consumed except p0-2 (lost in a crash); nothing past its offsets yet.
        journal(pg_url, [f"p0-{o}" for o in range(6) if o != 2] + [f"p1-{o}" for o in range(4)])
        doc = {
            "name": "orders-applied-lag",
            "truth": {"topic": topic, "fields": {"event_id": "header:ce_id"}},
            "projection": {"url": pg_url, "table": "applied_events"},
            "key": ["event_id"],
            "freshness": {"consumer_group": group},
        }
        result = audit(ctx, spec(doc))
        assert [f.key["event_id"] for f in result.findings] == ["p0-2"]
        assert result.summary.pending == 4 + 6  # in flight: p0 offsets 6..9, p1 offsets 4..9
        t = result.scope["topics"]["truth"]
        assert t["consumer_group"] == group and t["committed"] == {"0": 6, "1": 4}
        assert t["read"]["in_flight"] == 10

        info = validate(ctx, spec(doc))
        assert info["topics"]["truth"]["committed"] == {"0": 6, "1": 4}
        with pytest.raises(SpecError, match="consumer_group: group 'nobody' is not known"):
            validate(ctx, spec({**doc, "freshness": {"consumer_group": "nobody"}}))
    finally:
        delete_topic(bootstrap, topic)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_cloudevents_in_either_content_mode(ctx: Context, pg_url: str, topic3: str, mode: str) -> None:
    truth = rows(12)
    outbox(pg_url, truth)
    msgs = [
        event(r["event_id"], {"order_id": r["order_id"], "amount": float(r["amount"])}, key=str(i), mode=mode)
        for i, r in enumerate(truth)
        if r["order_id"] != 4
    ]
    produce(ctx.kafka_settings().bootstrap_servers, topic3, msgs)
    for fields in (
        {"event_id": "header:ce_id", "order_id": "$.data.order_id", "amount": "$.data.amount"},
        {"event_id": "$.id", "order_id": "$.order_id", "amount": "$.amount"},
    ):
        result = audit(ctx, spec(outbox_spec(pg_url, topic3, fields=fields)))
        assert [(f.kind, f.key["event_id"]) for f in result.findings] == [(FindingKind.MISSING, "ev-0004")]


def test_latest_per_key_on_a_compacted_topic(ctx: Context, pg_url: str, kafka_bootstrap: str) -> None:
    from .builders import make_table

    topic = make_topic(kafka_bootstrap, 3, {"cleanup.policy": "compact"})
    try:
        import sqlalchemy as sa

        make_table(
            pg_url,
            "stock_levels",
            [sa.Column("sku", sa.String(20), primary_key=True), sa.Column("on_hand", sa.Integer)],
            [{"sku": s, "on_hand": n} for s, n in [("A", 3), ("B", 5), ("C", 1), ("E", 9)]],
        )

        def state(sku: str, n: int) -> Msg:
            return Msg({"sku": sku, "on_hand": n}, sku)

        produce(
            kafka_bootstrap,
            topic,
            [
                state("A", 1), state("B", 5), state("A", 2), state("C", 1), state("D", 4),
                state("A", 3),  # A: the last of three states matches the truth
                state("B", 6),  # B: the last state differs
                Msg(None, "C"),  # C: deleted on the topic, still in truth
                state("E", 1), Msg(None, "E"), state("E", 9),  # E: deleted, then back
            ],
        )  # fmt: skip
        doc = {
            "name": "stock-compacted",
            "truth": {"url": pg_url, "table": "stock_levels"},
            "projection": {
                "topic": topic,
                "from": "earliest",
                "latest_per_key": True,
                "fields": {"sku": "key", "on_hand": "$.on_hand"},
            },
            "key": ["sku"],
            "columns": ["on_hand"],
        }
        result = audit(ctx, spec(doc))
        assert sorted((f.kind.value, f.key["sku"]) for f in result.findings) == [
            ("mismatch", "B"),
            ("missing", "C"),
            ("orphan", "D"),
        ]
        b = next(f for f in result.findings if f.key["sku"] == "B")
        assert b.projection is not None and b.projection["on_hand"] == 6 and b.truth == {"on_hand": 5}
        read = result.scope["topics"]["projection"]["read"]
        assert read["tombstones"] == 2 and read["messages"] == 11 and read["rows"] == 4
        assert result.scope["topics"]["projection"]["latest_per_key"] is True
    finally:
        delete_topic(kafka_bootstrap, topic)


def test_since_windows_and_an_empty_window(ctx: Context, pg_url: str, topic3: str) -> None:
    now = datetime.now(UTC)
    old = int((now - timedelta(days=3)).timestamp() * 1000)
    truth = rows(10)
    for r in truth:  # the outbox of the last 24 h holds orders 5..9
        r["created_at"] = now - (timedelta(days=3) if r["order_id"] < 5 else timedelta(hours=1))
    outbox(pg_url, truth)
    msgs = [
        event(
            r["event_id"],
            {"order_id": r["order_id"], "amount": float(r["amount"])},
            partition=0,
            timestamp_ms=old,
        )
        for r in truth
        if r["order_id"] < 5
    ] + [
        event(r["event_id"], {"order_id": r["order_id"], "amount": float(r["amount"])}, partition=0)
        for r in truth
        if r["order_id"] >= 5 and r["order_id"] != 8
    ]
    produce(ctx.kafka_settings().bootstrap_servers, topic3, msgs)
    doc = outbox_spec(pg_url, topic3, since="24h")
    doc["truth"]["where"] = "created_at > now() - interval '24 hours'"
    result = audit(ctx, spec(doc))
    assert [(f.kind.value, f.key["event_id"]) for f in result.findings] == [("missing", "ev-0008")]
    t = result.scope["topics"]["projection"]
    assert t["partitions"]["0"] == [5, 9] and t["read"]["messages"] == 4 and t["since"] is not None

    # The whole topic (from: earliest) against the whole outbox: only the unpublished one.
    whole = audit(ctx, spec(outbox_spec(pg_url, topic3, **{"from": "earliest"})))
    assert [f.key["event_id"] for f in whole.findings] == ["ev-0008"]

    # A window with no message: the topic side is empty, every recent outbox row is missing.
    outbox(pg_url, [], name="empty_outbox")
    empty = {**outbox_spec(pg_url, topic3, since="1s"), "truth": {"url": pg_url, "table": "empty_outbox"}}
    time.sleep(1.5)
    got = audit(ctx, spec(empty))
    assert got.exit_code == 0 and got.summary.projection_rows == 0 and got.summary.compared == 0
    assert got.scope["topics"]["projection"]["offsets"] == 0


def test_poison_messages_are_counted_with_their_position(ctx: Context, pg_url: str, topic3: str) -> None:
    truth = rows(5)
    outbox(pg_url, truth)
    msgs = [
        event(r["event_id"], {"order_id": r["order_id"], "amount": float(r["amount"])}, partition=1)
        for r in truth
    ]
    msgs.insert(2, Msg(b"{not json", "x", {"ce_id": "ev-poison"}, partition=1))
    msgs.append(Msg(b"\xff\xfe", "y", {"ce_id": "ev-binary"}, partition=2))
    produce(ctx.kafka_settings().bootstrap_servers, topic3, msgs)
    result = audit(ctx, spec(outbox_spec(pg_url, topic3)))
    assert result.exit_code == 0 and result.summary.projection_rows == 5
    read = result.scope["topics"]["projection"]["read"]
    assert read["invalid_json"] == 2
    assert sorted((x["partition"], x["offset"]) for x in read["invalid"]) == [(1, 2), (2, 0)]
    assert any(
        "not valid JSON" in p and "partition 1 offset 2" in p
        for p in result.scope["topics"]["projection"]["problems"]
    )


def test_a_where_filter_on_the_topic_fields(ctx: Context, pg_url: str, topic3: str) -> None:
    truth = rows(4)
    outbox(pg_url, truth)
    msgs = [event(r["event_id"], {"order_id": r["order_id"], "amount": float(r["amount"])}) for r in truth]
    other = event("ev-other", {"order_id": 77, "amount": 1})
    other.headers["ce_type"] = "OrderCancelled"  # another event type on the same topic
    produce(ctx.kafka_settings().bootstrap_servers, topic3, [*msgs, other])
    doc = outbox_spec(pg_url, topic3)
    doc["projection"]["fields"]["type"] = "header:ce_type"
    assert [f.key["event_id"] for f in audit(ctx, spec(doc)).findings] == ["ev-other"]
    doc["projection"]["where"] = "type = 'OrderPlaced'"  # SQLite SQL over the topic's fields
    assert audit(ctx, spec(doc)).findings == []


def test_missing_topic_and_missing_field_are_spec_errors(
    ctx: Context, pg_url: str, kafka_bootstrap: str
) -> None:
    outbox(pg_url, rows(1))
    name = f"test.nope.{uuid.uuid4().hex[:8]}"
    with pytest.raises(SpecError, match=f"spec test.yaml: projection.topic: topic '{name}' does not exist"):
        audit(ctx, spec(outbox_spec(pg_url, name)))
    assert name not in topic_names(kafka_bootstrap)
    bad = outbox_spec(pg_url, name)
    bad["columns"]["missing_col"] = {}
    with pytest.raises(SpecError, match="no field 'missing_col'"):
        spec(bad)


def test_a_conn_id_topic_side_resolves_through_the_context(
    ctx: Context, pg_url: str, topic3: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox(pg_url, rows(2))
    produce(kafka_bootstrap, topic3, [event("ev-0000", {"order_id": 0, "amount": 0.0})])
    doc = outbox_spec(pg_url, topic3, conn_id="events_broker")
    monkeypatch.setenv(
        "AIRFLOW_CONN_EVENTS_BROKER",
        json.dumps(
            {"conn_type": "kafka", "extra": {"bootstrap.servers": kafka_bootstrap, "client.id": "rc"}}
        ),
    )
    away = Context(store_url=ctx.store_url, kafka=KafkaSettings("127.0.0.1:1"), kafka_timeout_s=5)
    try:  # the context's own broker is wrong: only the side's connection can make this work
        assert [f.key["event_id"] for f in audit(away, spec(doc)).findings] == ["ev-0001"]
    finally:
        away.close()
    seen: list[str] = []

    def resolve(conn_id: str) -> str:  # what the DAGs pass: Airflow's own connection lookup
        seen.append(conn_id)
        return f"kafka:///?bootstrap.servers={kafka_bootstrap}"

    airflow_like = Context(store_url=ctx.store_url, resolve_conn=resolve)
    try:
        assert len(audit(airflow_like, spec(doc)).findings) == 1 and seen == ["events_broker"]
    finally:
        airflow_like.close()


def test_an_unreachable_broker_is_a_source_error(ctx: Context, pg_url: str) -> None:
    outbox(pg_url, rows(1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceError, match=f"kafka 127.0.0.1:{port}: cannot reach the broker"):
        audit(ctx, spec(outbox_spec(pg_url, "whatever", bootstrap=f"127.0.0.1:{port}")))


# -- the command line ---------------------------------------------------------------------------
def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RECONCILE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RECONCILE_STORE_URL": f"sqlite:///{cwd / 'store.db'}", "COLUMNS": "200"},
    )


def test_cli_audit_and_validate_on_a_topic_spec(
    tmp_path: Path, pg_url: str, topic3: str, kafka_bootstrap: str
) -> None:
    truth = rows(6)
    outbox(pg_url, truth)
    msgs = [
        event(r["event_id"], {"order_id": r["order_id"], "amount": float(r["amount"])}) for r in truth[1:]
    ]
    msgs.append(Msg(b"oops", "k", {"ce_id": "ev-x"}, partition=0))
    produce(kafka_bootstrap, topic3, msgs)
    path = write(
        tmp_path / "published.yaml", outbox_spec(pg_url, topic3, bootstrap="${KAFKA_BOOTSTRAP_SERVERS}")
    )

    v = cli("validate", str(path), "--format", "table", cwd=tmp_path)
    assert v.returncode == 0, v.stderr
    assert f"topic {topic3}" in v.stdout and "3 partition(s)" in v.stdout
    vj = json.loads(cli("validate", str(path), "--format", "json", cwd=tmp_path).stdout)
    assert vj["valid"] and vj["topics"]["projection"]["offsets"] == 6

    a = cli("audit", str(path), "--format", "table", cwd=tmp_path)
    assert a.returncode == 1, a.stderr
    assert "missing" in a.stdout and "ev-0000" in a.stdout
    assert "1 message(s) not valid JSON" in a.stdout and "partition 0 offset" in a.stdout
    j = json.loads(cli("audit", str(path), "--format", "json", cwd=tmp_path).stdout)
    assert j["summary"]["missing"] == 1 and j["scope"]["topics"]["projection"]["read"]["invalid_json"] == 1


def test_cli_one_line_errors_exit_2(tmp_path: Path, pg_url: str, kafka_bootstrap: str) -> None:
    outbox(pg_url, rows(1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = write(tmp_path / "down.yaml", outbox_spec(pg_url, "shop.orders", bootstrap=f"127.0.0.1:{port}"))
    name = f"test.absent.{uuid.uuid4().hex[:8]}"
    absent = write(tmp_path / "absent.yaml", outbox_spec(pg_url, name, bootstrap=kafka_bootstrap))
    for command in ("audit", "validate"):
        t0 = time.monotonic()
        r = cli(command, str(down), cwd=tmp_path)
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.count("\n") == 1 and "cannot reach the broker" in r.stderr, r.stderr
        assert time.monotonic() - t0 < 30
        r = cli(command, str(absent), cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"projection.topic: topic '{name}' does not exist" in r.stderr
    assert name not in topic_names(kafka_bootstrap)


def test_cli_check_skips_the_topic_side_with_a_note(
    tmp_path: Path, pg_url: str, topic3: str, kafka_bootstrap: str
) -> None:
    outbox(pg_url, rows(3))
    path = write(tmp_path / "published.yaml", outbox_spec(pg_url, topic3, bootstrap=kafka_bootstrap))
    r = cli(
        "check", str(path), "--format", "json", "--docs", str(tmp_path / "docs"), cwd=tmp_path, timeout=300
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["sides"]["projection"]["evaluated"] == 0
    assert "does not apply to a topic side" in doc["sides"]["projection"]["skipped"]
    assert doc["sides"]["truth"]["evaluated"] > 0 and doc["success"]
