"""Causes against the real broker and PostgreSQL: each stage of the path broken on purpose, the cut
recorded with the run, and a projector that lags far behind `grace` producing no false drift."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconcile.app import Context, audit
from reconcile.events.kafka import KafkaSettings
from reconcile.findings import RunResult

from .causes_cases import Shop
from .topic_cases import delete_topic, make_topic, spec, write

pytestmark = pytest.mark.integration
RECONCILE = [sys.executable, "-m", "reconcile"]


@pytest.fixture
def shop(make_pg_db, kafka_bootstrap: str) -> Iterator[Shop]:  # type: ignore[no-untyped-def]
    topic = make_topic(kafka_bootstrap, 1)
    yield Shop(make_pg_db("truth"), make_pg_db("proj"), kafka_bootstrap, topic).create()
    delete_topic(kafka_bootstrap, topic)


@pytest.fixture
def ctx(make_pg_db, kafka_bootstrap: str) -> Iterator[Context]:  # type: ignore[no-untyped-def]
    c = Context(store_url=make_pg_db("store"), kafka=KafkaSettings(kafka_bootstrap), kafka_timeout_s=15)
    yield c
    c.close()


def causes(result: RunResult) -> dict[str, str | None]:
    return {f.key["sku"]: f.cause for f in result.findings}


def broken_shop(shop: Shop) -> None:
    """One entity per cause, two in flight, one clean."""
    old, young = shop.ago(minutes=10), shop.ago(seconds=5)
    for sku in "ABCDEFGHIJ":
        shop.truth(sku, 9, at=old)
        shop.view(sku, 10)
    shop.view("J", 9)  # clean
    shop.written("e-a", "A", at=old, published=False)  # relay stopped: not_published
    shop.written("e-b", "B", at=young, published=False)  # relay a little behind: pending
    shop.written("e-c", "C", at=old, published=True)  # broker blip: lost
    for eid, sku in (("e-d", "D"), ("e-e", "E"), ("e-h", "H")):
        shop.written(eid, sku, at=old, published=True)
        shop.publish(eid, sku, at=old)
    shop.applied("e-e", "e-h")  # e-d consumed, never applied; E and H applied
    shop.view("E", 7)  # applied wrong: misapplied
    shop.truth("H", 9, at=shop.now)  # a manual UPDATE after its last event: unexplained
    # F: no event at all (unexplained); G: an event on the topic the projector has not consumed
    shop.written("e-g", "G", at=old, published=True)
    shop.publish("e-g", "G", at=old)
    shop.commit(3)  # e-d, e-e, e-h consumed; e-g (offset 3) not yet
    shop.truth("I", 10, at=old)
    shop.view("I", 10)


def test_every_cause_from_its_broken_stage(shop: Shop, ctx: Context) -> None:
    broken_shop(shop)
    s = spec(shop.spec(settle="1s"))
    result = audit(ctx, s)
    assert causes(result) == {
        "A": "not_published",
        "C": "lost",
        "D": "not_applied",
        "E": "misapplied",
        "F": "unexplained",
        "H": "unexplained",
    }
    assert result.summary.pending == 2  # B (unpublished, young) and G (on the topic, not consumed)
    assert result.causes == {
        "not_published": 1,
        "lost": 1,
        "not_applied": 1,
        "misapplied": 1,
        "unexplained": 2,
    }
    d = next(f for f in result.findings if f.key["sku"] == "D")
    assert d.evidence[0]["event_id"] == "e-d" and d.evidence[0]["stage"] == "not_applied"
    assert (d.evidence[0]["partition"], d.evidence[0]["offset"]) == (0, 0)
    a = next(f for f in result.findings if f.key["sku"] == "A")
    assert a.evidence[0]["source_row"]["event_id"] == "e-a" and a.evidence[0]["stage"] == "not_published"

    cut = result.cut
    assert cut is not None
    assert cut["truth"]["engine"] == "postgresql" and "/" in cut["truth"]["lsn"]
    assert ":" in cut["truth"]["snapshot"]
    assert cut["end_offsets"] == {"0": 4} and cut["committed"] == {"0": 3}
    assert cut["reached"] is False and cut["waited_s"] >= 1.0

    # stored: the run's cut, each finding's cause and evidence
    run = ctx.store.latest_run(s.name)
    assert run is not None and run.cut is not None and run.cut["end_offsets"] == {"0": 4}
    stored = {f.key["sku"]: f for f in ctx.store.active_findings(s.name)}
    assert stored["C"].cause == "lost" and stored["C"].evidence[0]["event_id"] == "e-c"
    assert "B" not in stored and "G" not in stored


def test_lagging_projector_is_waited_for_not_drift(shop: Shop, ctx: Context) -> None:
    """A projector far behind `freshness.grace` (1s): the audit waits for it to reach the cut."""
    old = shop.ago(minutes=30)
    for i in range(5):
        sku = f"S{i}"
        shop.truth(sku, 5, at=old)
        shop.view(sku, 6)
        shop.written(f"e{i}", sku, at=old, published=True)
        shop.publish(f"e{i}", sku, at=old)
    shop.commit(0)

    committed: list[float] = []

    def projector() -> None:
        time.sleep(2.0)
        for i in range(5):
            shop.view(f"S{i}", 5)
            shop.applied(f"e{i}")
        shop.commit(5)
        committed.append(time.monotonic())

    t = threading.Thread(target=projector)
    t.start()
    try:
        result = audit(ctx, spec(shop.spec(settle="20s")))
        returned = time.monotonic()
    finally:
        t.join()
    assert result.findings == [] and result.exit_code == 0
    # Reached: the group's offsets got to the cut, which only the projector's commit does. (Not
    # a lower bound on waited_s: on a loaded machine the audit may start waiting late.)
    assert result.cut is not None and result.cut["reached"] is True and result.cut["waited_s"] < 20
    assert committed and committed[0] <= returned


def test_lagging_projector_past_the_settle_is_pending(shop: Shop, ctx: Context) -> None:
    old = shop.ago(minutes=30)
    shop.truth("S", 5, at=old)
    shop.view("S", 6)
    shop.written("e1", "S", at=old, published=True)
    shop.publish("e1", "S", at=old)
    shop.commit(0)
    result = audit(ctx, spec(shop.spec(settle="0s")))
    assert result.findings == [] and result.summary.pending == 1
    assert result.cut is not None and result.cut["reached"] is False


def test_settle_override_and_json_output(shop: Shop, tmp_path: Path) -> None:
    broken_shop(shop)
    path = write(tmp_path / "inv.yaml", shop.spec(settle="30s"))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"KAFKA_BOOTSTRAP_SERVERS": shop.bootstrap}
    started = time.monotonic()
    out = _cli(["audit", str(path), "--store", store, "--format", "json", "--settle", "0s"], env)
    assert time.monotonic() - started < 25  # the spec's 30s settle was overridden
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["cut"]["settle_s"] == 0 and doc["cut"]["truth"]["engine"] == "postgresql"
    got = {f["key"]["sku"]: f["cause"] for f in doc["findings"]}
    assert got["C"] == "lost" and got["A"] == "not_published"
    assert all(isinstance(f["evidence"], list) for f in doc["findings"])
    table = _cli(["audit", str(path), "--store", store, "--settle", "0s"], env)
    assert "cause" in table.stdout and "not_applied" in table.stdout
    bad = _cli(["audit", str(path), "--store", store, "--settle", "soon"], env)
    assert bad.returncode == 2 and "--settle" in bad.stderr


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*RECONCILE, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )


def test_trace_tells_one_entitys_story(shop: Shop, ctx: Context, tmp_path: Path) -> None:
    from reconcile.app import trace

    broken_shop(shop)
    s = spec(shop.spec())
    d = trace(ctx, s, "W1:D")
    assert d.state == "drift" and d.kind == "mismatch" and d.cause == "not_applied"
    assert d.truth is not None and d.truth["on_hand"] == 9
    assert d.projection is not None and d.projection["on_hand"] == 10
    (ev,) = d.events
    assert ev["event_id"] == "e-d" and ev["published"] is True and ev["written"] is not None
    assert ev["topic"]["offset"] == 0 and ev["consumed"] is True and ev["applied"] is False
    assert ev["stage"] == "not_applied"
    g = trace(ctx, s, '{"warehouse": "W1", "sku": "G"}')
    assert g.state == "pending" and g.events[0]["consumed"] is False and g.exit_code == 0
    j = trace(ctx, s, "W1:J")
    assert j.state == "consistent" and j.events == [] and j.cause is None

    path = write(tmp_path / "inv.yaml", shop.spec())
    env = {"KAFKA_BOOTSTRAP_SERVERS": shop.bootstrap}
    store = f"sqlite:///{tmp_path / 'store.db'}"
    out = _cli(["trace", str(path), "W1:C", "--store", store, "--format", "json"], env)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["verdict"] == {"state": "drift", "kind": "mismatch", "cause": "lost"}
    assert doc["events"][0]["stage"] == "lost" and doc["events"][0]["topic"] is None
    table = _cli(["trace", str(path), "W1:A", "--store", store, "--format", "table"], env)
    assert table.returncode == 1 and "not_published" in table.stdout and "e-a" in table.stdout
    bad = _cli(["trace", str(path), "W1:A,W1:B", "--store", store], env)
    assert bad.returncode == 2 and "exactly one" in bad.stderr
    assert "trace" in _cli(["--help"], env).stdout


def test_dashboard_shows_the_cause_evidence_and_cut(shop: Shop, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from reconcile.app import dashboard as D
    from reconcile.serve import ServeSettings, create_app
    from reconcile.spec import load_spec

    broken_shop(shop)
    folder = tmp_path / "specs"
    folder.mkdir()
    s = load_spec(write(folder / "inv.yaml", shop.spec(settle="0s")))
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    with Context(store_url=store_url, kafka=KafkaSettings(shop.bootstrap)) as ctx:
        audit(ctx, s)
    app = create_app(ServeSettings(store_url=store_url, specs=(str(folder),)))
    with TestClient(app) as client:
        page = client.get(f"/specs/{s.name}")
        assert page.status_code == 200
        assert 'class="cause cause-lost"' in page.text and 'id="cut"' in page.text
        assert "not reached" in page.text
        key = D.key_text({"warehouse": "W1", "sku": "D"})
        finding = client.get(f"/specs/{s.name}/findings/{key}")
        assert finding.status_code == 200
        assert 'cause-not_applied">not_applied' in finding.text and 'data-event="e-d"' in finding.text
        api = client.get(f"/api/specs/{s.name}").json()
        assert api["cut"]["end_offsets"] == {"0": 4}
        assert {f["key"]["sku"]: f["cause"] for f in api["findings"]}["A"] == "not_published"


def test_validate_checks_the_path_and_names_the_field(shop: Shop, ctx: Context, tmp_path: Path) -> None:
    from reconcile.app import validate
    from reconcile.errors import SpecError

    with pytest.raises(SpecError, match=r"path.consumer_group: group '.*' is not known"):
        validate(ctx, spec(shop.spec()))  # the projector never joined nor committed
    shop.commit(0)  # the group exists from here on
    info = validate(ctx, spec(shop.spec()))
    assert info["path"]["topic"] == shop.topic and info["path"]["partitions"] == 1
    assert "shop_outbox" in info["path"]["source"] and "applied_events" in info["path"]["applied"]
    bad_column = shop.spec()
    bad_column["path"]["source"]["published"] = "sent_at"
    with pytest.raises(SpecError, match=r"path.source.published: table shop_outbox has no column 'sent_at'"):
        validate(ctx, spec(bad_column))
    bad_table = shop.spec()
    bad_table["path"]["applied"]["table"] = "journal"
    with pytest.raises(SpecError, match=r"path.applied.table: table 'journal' does not exist"):
        audit(ctx, spec(bad_table))
    bad_group = shop.spec(consumer_group="nobody-reads-this")
    with pytest.raises(SpecError, match=r"path.consumer_group: group 'nobody-reads-this' is not known"):
        audit(ctx, spec(bad_group))
    path = write(tmp_path / "bad.yaml", bad_column)
    out = _cli(
        ["audit", str(path), "--store", f"sqlite:///{tmp_path / 's.db'}"],
        {"KAFKA_BOOTSTRAP_SERVERS": shop.bootstrap},
    )
    assert (
        out.returncode == 2
        and "path.source.published" in out.stderr
        and len(out.stderr.strip().splitlines()) == 1
    )
