"""The healing loop on the embedded default: SQLite truth/projection, table-backed event log."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from reconcile.app import Context, Projector, audit, correct, heal, relay, verify
from reconcile.errors import GuardTripped
from reconcile.events.embedded import EmbeddedLog
from reconcile.findings import FindingStatus
from reconcile.store import AuditStore

from .builders import execute
from .heal_cases import build_pair, expected_findings, heal_spec


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    t, p, s = (f"sqlite:///{tmp_path / n}" for n in ("truth.db", "proj.db", "store.db"))
    build_pair(t, p)
    spec = heal_spec(t, p, topic="stock.reconciled", group="stock-projector", transport="embedded")
    return spec, AuditStore(s), p


def test_audit_correct_relay_project_verify(world) -> None:  # type: ignore[no-untyped-def]
    spec, store, proj_url = world
    first = audit(Context.of(store), spec)
    assert len(first.findings) == expected_findings()

    dry = correct(Context.of(store), spec, dry_run=True)
    assert len(dry.events) == expected_findings() and dry.written == 0
    assert store.outbox_events() == []
    assert {f.status for f in store.findings(spec.name)} == {FindingStatus.OPEN}

    done = correct(Context.of(store), spec)
    assert done.written == expected_findings()
    assert {f.status for f in store.findings(spec.name)} == {FindingStatus.CORRECTING}
    again = correct(Context.of(store), spec)  # nothing open any more: nothing new
    assert again.written == 0 and len(store.outbox_events()) == expected_findings()

    sent = relay(Context.of(store), spec_name=spec.name)
    assert sent.sent == expected_findings()
    assert store.outbox_backlog(spec.name)[0] == 0

    log = EmbeddedLog(store.url)
    assert log.lag("stock-projector", "stock.reconciled") == expected_findings()
    projector = Projector(Context.of(store), spec)
    stats = projector.run(idle_timeout_s=0.2)
    projector.close()
    assert stats.applied == expected_findings() and stats.duplicates == 0
    assert log.lag("stock-projector", "stock.reconciled") == 0

    v = verify(Context.of(store), spec)
    assert (v.checked, v.resolved, v.escalated, v.exit_code) == (
        expected_findings(),
        expected_findings(),
        0,
        0,
    )
    final = audit(Context.of(store), spec)
    assert final.findings == [] and final.exit_code == 0
    assert store.findings(spec.name) == []


def test_rerun_of_correct_after_a_new_audit_writes_no_duplicate_rows(world) -> None:  # type: ignore[no-untyped-def]
    spec, store, _ = world
    audit(Context.of(store), spec)
    correct(Context.of(store), spec)
    # Simulate "crashed after the outbox write": findings back to open, the same drift audited again.
    store.move(spec.name, [([f.key_id for f in store.findings(spec.name)], FindingStatus.OPEN, "test")])
    audit(Context.of(store), spec)
    again = correct(Context.of(store), spec)
    assert again.written == 0 and len(again.events) == expected_findings()
    ids = [r.event_id for r in store.outbox_events()]
    assert len(ids) == len(set(ids)) == expected_findings()


def test_verify_escalates_what_did_not_heal(world) -> None:  # type: ignore[no-untyped-def]
    spec, store, proj_url = world
    audit(Context.of(store), spec)
    correct(Context.of(store), spec)
    relay(Context.of(store), spec_name=spec.name)
    projector = Projector(Context.of(store), spec)
    projector.run(idle_timeout_s=0.2)
    projector.close()
    execute(proj_url, "UPDATE stock_view SET on_hand = -1 WHERE product_id = 'S00005'")  # a projector bug
    v = verify(Context.of(store), spec)
    assert v.escalated == 1 and v.exit_code == 1
    open_now = store.findings(spec.name, [FindingStatus.OPEN.value])
    assert [f.key["sku"] for f in open_now] == ["S00005"]
    assert "escalated by verify" in (open_now[0].note or "")


def test_guard_trips_on_an_empty_projection_and_writes_nothing(world) -> None:  # type: ignore[no-untyped-def]
    spec, store, proj_url = world
    execute(proj_url, "DELETE FROM stock_view")
    audit(Context.of(store), spec)
    with pytest.raises(GuardTripped, match=r"\(ratio 1\) exceed correction.max_ratio 0.5"):
        correct(Context.of(store), spec)
    assert store.outbox_events() == []
    assert {f.status for f in store.findings(spec.name)} == {FindingStatus.OPEN}
    refused = heal(Context.of(store), spec, preflight=False)  # the audit is kept, the refusal reported
    assert isinstance(refused.error, GuardTripped) and refused.exit_code == 1
    assert refused.to_dict()["error"]["type"] == "GuardTripped" and refused.audit.findings
    assert store.outbox_events() == []
    forced = correct(Context.of(store), spec, force=True)
    assert forced.written == 200


def test_guard_max_count(world) -> None:  # type: ignore[no-untyped-def]
    spec, store, _ = world
    spec = spec.model_copy(update={"correction": spec.correction.model_copy(update={"max_count": 5})})
    audit(Context.of(store), spec)
    with pytest.raises(GuardTripped, match=r"exceed correction.max_count 5"):
        correct(Context.of(store), spec)


def test_acknowledged_findings_are_not_corrected(world) -> None:  # type: ignore[no-untyped-def]
    spec, store, _ = world
    first = audit(Context.of(store), spec)
    store.acknowledge(spec.name, first.findings[0].key_id, "known")
    audit(Context.of(store), spec)
    result = correct(Context.of(store), spec)
    assert result.written == expected_findings() - 1


def test_run_heals_in_one_command(world) -> None:  # type: ignore[no-untyped-def]
    spec, store, proj_url = world
    outcome = heal(Context.of(store), spec, preflight=False)
    assert outcome.exit_code == 1 and outcome.relay is not None and outcome.relay.sent == expected_findings()
    projector = Projector(Context.of(store), spec)
    projector.run(idle_timeout_s=0.2)
    projector.close()
    second = heal(Context.of(store), spec, verify=True, preflight=False)
    assert second.exit_code == 0 and second.audit.findings == []
    e = sa.create_engine(proj_url)
    with e.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM stock_view")).scalar() == 200
    e.dispose()


# -- issue 15, case 7: a huge correction keeps the first events and the total -----------------
def test_correct_lists_the_first_events_and_counts_them_all(world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib

    import reconcile.store

    spec, store, _ = world
    # reconcile.app.heal is also the name of a function: take the module itself
    monkeypatch.setattr(importlib.import_module("reconcile.app.heal"), "LISTED_EVENTS", 2)
    monkeypatch.setattr(reconcile.store, "BATCH", 2)  # and several pages in the one transaction
    audit(Context.of(store), spec)
    n = expected_findings()
    assert n > 2

    dry = correct(Context.of(store), spec, dry_run=True)
    assert (len(dry.events), dry.count, dry.written) == (2, n, 0) and store.outbox_events() == []
    doc = dry.to_dict()
    assert (doc["events"], len(doc["corrections"]), doc["corrections_listed"]) == (n, 2, 2)
    assert doc["corrections_truncated"] == n - 2

    done = correct(Context.of(store), spec)
    assert (len(done.events), done.count, done.written) == (2, n, n)
    assert [e.id for e in done.events] == [e.id for e in dry.events]  # deterministic, oldest first
    assert len(store.outbox_events(spec.name)) == n
    assert {f.status for f in store.findings(spec.name)} == {FindingStatus.CORRECTING}
    assert done.to_dict()["already_in_outbox"] == 0
