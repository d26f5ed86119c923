"""The store port's contract, run against every adapter: SQLite and the real PostgreSQL.

Lifecycle transitions, an idempotent enqueue, a guard that writes nothing, concurrent writers."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from reconcile.errors import ConcurrentRun, GuardTripped, StoreError
from reconcile.findings import Finding, FindingKind, FindingStatus, Summary
from reconcile.store import AuditStore, OutboxEntry, Store

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def finding(sku: str) -> Finding:
    return Finding(FindingKind.MISSING, {"sku": sku}, truth={"on_hand": 3})


def record(store: Store, spec: str, seen: list[Finding], **kw: object) -> str:
    run_id = str(uuid.uuid4())
    store.record_run(
        run_id=run_id,
        spec=spec,
        started_at=NOW,
        finished_at=datetime.now(UTC),
        strategy="stream",
        scope={"keys": None, "where": None},
        summary=Summary(compared=10),
        seen=seen,
        clean=set(kw.get("clean", set())),  # type: ignore[call-overload]
        pending=set(kw.get("pending", set())),  # type: ignore[call-overload]
        resolve_unseen=bool(kw.get("resolve_unseen", True)),
        confirm_runs=int(kw.get("confirm_runs", 1)),  # type: ignore[call-overload]
    )
    return run_id


def entries(found: list[Finding], tag: str = "") -> list[OutboxEntry]:
    return [
        OutboxEntry(f.key_id, f"ev-{tag}{f.key['sku']}", "t", "embedded", f.key_id, {"ce_id": "x"}, "{}", NOW)
        for f in found
    ]


class StoreContract:
    """Every audit store adapter passes these."""

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        raise NotImplementedError

    def test_a_run_opens_findings_and_a_clean_run_resolves_them(self, store: Store) -> None:
        record(store, "s", [finding("a"), finding("b")])
        assert {f.key["sku"] for f in store.active_findings("s")} == {"a", "b"}
        record(store, "s", [finding("a")])
        assert [f.times_seen for f in store.findings("s", ["open"])] == [2]
        assert [f.key["sku"] for f in store.findings("s", ["resolved"])] == ["b"]
        assert store.latest_run("s") is not None and store.latest_run("s").status == "drift"  # type: ignore[union-attr]

    def test_correct_writes_outbox_and_moves_findings_together_and_once(self, store: Store) -> None:
        run = record(store, "s", [finding("a"), finding("b")])
        decided, written = store.correct("s", run, entries, note="n")
        assert decided == written == 2 and {f.status for f in store.findings("s", ["correcting"])} == {
            FindingStatus.CORRECTING
        }
        # again: nothing open any more, nothing written
        assert store.correct("s", run, entries, note="n") == (0, 0)
        assert len(store.outbox_events("s")) == 2

    def test_enqueue_is_idempotent_by_event_id(self, store: Store) -> None:
        run = record(store, "s", [finding("a")])
        store.correct("s", run, entries, note="n")
        store.move("s", [([finding("a").key_id], FindingStatus.OPEN, "escalated")])
        _, written = store.correct("s", run, entries, note="n")  # same event ids: skipped
        assert written == 0 and len(store.outbox_events("s")) == 1

    def test_a_refusal_inside_correct_writes_nothing(self, store: Store) -> None:
        run = record(store, "s", [finding("a")])

        def refuse(found: list[Finding]) -> list[OutboxEntry]:
            raise GuardTripped("too much")

        with pytest.raises(GuardTripped):
            store.correct("s", run, refuse, note="n")
        assert store.outbox_events("s") == [] and store.findings("s", ["open"])

    def test_finding_keys_are_what_findings_give(self, store: Store) -> None:
        # the lean read of verify and of an audit's watched keys: same keys, same key ids, same
        # order as the full findings, for keys that are not plain ASCII text too
        odd = [
            Finding(FindingKind.MISSING, {"sku": s, "n": n}, truth={"on_hand": 1})
            for s, n in (("a", 1), ('é\u2603"x', -2), ("b", 10**15), ("", 0))
        ]
        run = record(store, "s", odd)
        store.correct("s", run, lambda found: entries(found[:2]), note="n")
        for statuses in (["open"], ["correcting"], ["open", "correcting", "acknowledged"], ["resolved"]):
            full = [(f.key_id, f.key) for f in store.findings("s", statuses)]
            assert store.finding_keys("s", statuses) == full
        assert len(store.finding_keys("s", ["open", "correcting"])) == 4

    # -- issue 15, case 7: a correction pages its findings inside its one transaction --------
    def test_correct_counts_first_then_pages_writing_each_page(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import reconcile.store

        monkeypatch.setattr(reconcile.store, "BATCH", 2)
        run = record(store, "s", [finding(f"k{i}") for i in range(5)])
        calls: list[object] = []

        def decide(found: list[Finding]) -> list[OutboxEntry]:
            calls.append(len(found))
            return entries(found)

        assert store.correct("s", run, decide, note="n", guard=calls.append) == (5, 5)
        assert calls == [5, 2, 2, 1]
        assert len(store.findings("s", ["correcting"])) == 5 and len(store.outbox_events("s")) == 5

    def test_a_refusal_on_a_later_page_writes_nothing(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import reconcile.store

        monkeypatch.setattr(reconcile.store, "BATCH", 2)
        run = record(store, "s", [finding(f"k{i}") for i in range(5)])
        pages: list[int] = []

        def decide(found: list[Finding]) -> list[OutboxEntry]:
            pages.append(len(found))
            if len(pages) == 3:
                raise GuardTripped("too much, found on the last page")
            return entries(found)

        with pytest.raises(GuardTripped):
            store.correct("s", run, decide, note="n")
        assert pages == [2, 2, 1]
        assert store.outbox_events("s") == [] and len(store.findings("s", ["open"])) == 5

    def test_a_guard_refusal_on_the_count_reads_no_page(self, store: Store) -> None:
        run = record(store, "s", [finding("a"), finding("b")])

        def guard(n: int) -> None:
            raise GuardTripped(f"{n} corrections")

        def decide(found: list[Finding]) -> list[OutboxEntry]:
            raise AssertionError("no page is read after the guard refused")

        with pytest.raises(GuardTripped, match="2 corrections"):
            store.correct("s", run, decide, note="n", guard=guard)
        assert store.outbox_events("s") == [] and len(store.findings("s", ["open"])) == 2

    def test_findings_decide_skips_stay_open_and_are_not_read_again(
        self, store: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import reconcile.store

        monkeypatch.setattr(reconcile.store, "BATCH", 2)
        run = record(store, "s", [finding(f"k{i}") for i in range(5)])
        seen: list[str] = []

        def decide(found: list[Finding]) -> list[OutboxEntry]:
            seen.extend(f.key["sku"] for f in found)
            return entries([f for f in found if f.key["sku"] != "k0"])  # k0: refused (too big)

        assert store.correct("s", run, decide, note="n") == (4, 4)
        assert sorted(seen) == [f"k{i}" for i in range(5)]
        assert [f.key["sku"] for f in store.findings("s", ["open"])] == ["k0"]

    def test_move_respects_from_statuses_and_acknowledge(self, store: Store) -> None:
        record(store, "s", [finding("a"), finding("b")])
        a, b = finding("a").key_id, finding("b").key_id
        assert store.move("s", [([a], FindingStatus.OPEN, "x")], only_from=["correcting"]) == [0]
        ack = store.acknowledge("s", b, "known")
        assert ack.status is FindingStatus.ACKNOWLEDGED
        with pytest.raises(StoreError, match="no open finding"):
            store.acknowledge("s", "nope", "x")
        record(store, "s", [finding("a"), finding("b")])
        statuses = {f.key["sku"]: f.status for f in store.active_findings("s")}
        assert statuses == {"a": FindingStatus.OPEN, "b": FindingStatus.ACKNOWLEDGED}

    def test_outbox_marks_sent_and_backlog(self, store: Store) -> None:
        run = record(store, "s", [finding("a"), finding("b")])
        store.correct("s", run, entries, note="n")
        rows = store.unsent(10, "s")
        assert store.outbox_backlog("s")[0] == 2
        store.mark_failed([rows[0].id], "broker down")
        store.mark_sent([rows[1].id])
        assert store.outbox_backlog("s")[0] == 1 and [r.id for r in store.unsent(10, "s")] == [rows[0].id]

    def test_concurrent_corrections_never_double_the_outbox(self, store: Store) -> None:
        run = record(store, "s", [finding(f"k{i}") for i in range(50)])
        errors: list[BaseException] = []

        def go() -> None:
            try:
                store.correct("s", run, entries, note="n")
            except StoreError as e:  # a writer that lost the race says so; it never doubles
                errors.append(e)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(store.outbox_events("s")) == 50
        assert len({r.event_id for r in store.outbox_events("s")}) == 50

    # -- issue 15, case 2: concurrent runs of one spec ----------------------------------------
    def test_concurrent_recordings_never_duplicate_and_count_every_sighting(self, store: Store) -> None:
        seen = [finding(f"k{i:04d}") for i in range(2000)]
        errors: list[BaseException] = []

        def go() -> None:
            try:
                record(store, "s", seen)
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=go) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        active = store.active_findings("s")
        assert len(active) == 2000
        assert {f.times_seen for f in active} == {3}

    def test_a_second_active_finding_of_one_entity_is_impossible(self, store: Store) -> None:
        record(store, "s", [finding("a")])
        assert isinstance(store, AuditStore)
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO reconcile_findings (spec, key_id, entity_key, kind, columns, copies, status,"
                    " times_seen, first_seen, last_seen, first_run_id, last_run_id, episode) SELECT spec,"
                    " key_id, entity_key, kind, columns, copies, 'correcting', 1, first_seen, last_seen,"
                    " first_run_id, last_run_id, 1 FROM reconcile_findings"
                )
            )

    def test_one_audit_per_spec_at_a_time(self, store: Store) -> None:
        with store.audit_lock("s"):
            with pytest.raises(ConcurrentRun, match=r"spec s: another audit is running \(pid \d+ on "):
                with store.audit_lock("s"):
                    pass
            with store.audit_lock("other"):  # other specs are not held up
                pass
            got: list[str] = []
            waiter = threading.Thread(target=lambda: _wait_for(store, got))
            waiter.start()
            waiter.join(0.6)
            assert got == [] and waiter.is_alive()
        waiter.join(10)
        assert got == ["ran"]

    # -- issue 15, case 3: drift that comes back --------------------------------------------------
    def test_drift_that_comes_back_is_a_new_episode(self, store: Store) -> None:
        record(store, "s", [finding("a")])
        record(store, "s", [])  # healed
        record(store, "s", [finding("a")])  # back, in the same form
        (again,) = store.active_findings("s")
        assert again.episode == 2 and again.times_seen == 1
        (first,) = store.findings("s", ["resolved"])
        assert first.episode == 1


def _wait_for(store: Store, got: list[str]) -> None:
    with store.audit_lock("s", wait=True):
        got.append("ran")


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        s = AuditStore(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.dispose()


@pytest.mark.integration
class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, make_pg_db) -> Iterator[Store]:  # type: ignore[no-untyped-def]
        s = AuditStore(make_pg_db("store"))
        yield s
        s.dispose()

    def test_a_claim_after_an_id_takes_only_later_rows(self, store: Store) -> None:
        run = record(store, "s", [finding(f"k{i}") for i in range(6)])
        store.correct("s", run, entries, note="n")
        ids = [r.id for r in store.outbox_events("s")]
        held = store.claim(10, "s", after=ids[1])
        try:
            assert [r.id for r in held.rows] == ids[2:]
            assert store.claim(10, "s", after=ids[-1]).rows == []
        finally:
            held.close()

    def test_relay_sends_rows_its_keyset_claims_passed_by(self, store: Store) -> None:
        # Another relay holds the two oldest rows while this one claims on from the last id it
        # took; they are released mid-pass, and the claim from the start that ends the pass
        # takes them: one pass sends everything.
        from reconcile.app import Context, relay

        run = record(store, "s", [finding(f"k{i}") for i in range(7)])
        store.correct("s", run, entries, note="n")
        other = store.claim(2, "s")
        assert len(other.rows) == 2
        released: list[int] = []

        def on_batch(sent: int) -> None:
            if not released:
                other.close()
                released.append(sent)

        ctx = Context.of(store)
        try:
            got = relay(ctx, spec_name="s", batch_size=2, on_batch=on_batch)
        finally:
            other.close()
            ctx.close()
        assert released and got.sent == 7
        assert store.outbox_backlog("s")[0] == 0 and len(store.outbox_events("s", sent=True)) == 7
