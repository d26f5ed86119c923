"""Cause attribution in memory: the path's stages decided by positions, the earliest broken stage
wins, and the `path:` spec's one-line errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconcile.causes import Collector, EntityExtractor, Positions, attribute
from reconcile.errors import SpecError
from reconcile.findings import Finding, FindingKind
from reconcile.spec import spec_from_dict

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
KEY = ["warehouse", "sku"]


def order(*lines: str, warehouse: str = "W1") -> dict[str, Any]:
    return {"data": {"warehouse": warehouse, "lines": [{"sku": s, "quantity": 1} for s in lines]}}


def collector(*skus: str) -> Collector:
    ex = EntityExtractor({"warehouse": "$.data.warehouse", "sku": "sku"}, KEY, each="$.data.lines[*]")
    return Collector({("W1", s) for s in skus}, ex)


def finding(sku: str, kind: FindingKind = FindingKind.MISMATCH) -> Finding:
    return Finding(kind, {"warehouse": "W1", "sku": sku}, columns=("on_hand",))


def pos(committed: dict[int, int], *, applied: bool = True, **kw: Any) -> Positions:
    return Positions(committed, NOW, timedelta(minutes=1), has_applied=applied, **kw)


def causes(c: Collector, p: Positions, *skus: str) -> dict[str, str | None]:
    got = attribute([finding(s) for s in skus], c, p, KEY)
    out: dict[str, str | None] = {f.key["sku"]: f.cause for f in got.findings}
    out.update({f.key["sku"]: "pending" for f in got.pending})
    return out


def test_each_cause_by_its_first_broken_stage() -> None:
    c = collector("A", "B", "C", "D", "E", "F", "G")
    old, young = NOW - timedelta(minutes=5), NOW - timedelta(seconds=5)
    c.source_row("e1", order("A"), published=False, written_at=old)  # relay stopped
    c.source_row("e2", order("B"), published=False, written_at=young)  # relay a little behind
    c.source_row("e3", order("C"), published=True, written_at=old)  # never reached the topic
    for eid, sku, off in (("e4", "D", 0), ("e5", "E", 1), ("e6", "F", 2)):
        c.source_row(eid, order(sku), published=True, written_at=old)
        c.message(eid, 0, off, old, lambda: None)
    c.applied(["e5"], c.wanted_applied())
    got = causes(c, pos({0: 2}), "A", "B", "C", "D", "E", "F", "G")
    assert got == {
        "A": "not_published",
        "B": "pending",
        "C": "lost",
        "D": "not_applied",  # consumed (offset 0 < 2), not in the journal
        "E": "misapplied",  # applied, still differs
        "F": "pending",  # offset 2 is at the committed offset: in flight
        "G": "unexplained",  # no event touches it
    }
    f = attribute([finding("D")], c, pos({0: 2}), KEY).findings[0]
    assert f.evidence[0]["event_id"] == "e4" and f.evidence[0]["stage"] == "not_applied"
    assert (f.evidence[0]["partition"], f.evidence[0]["offset"]) == (0, 0)
    assert f.to_dict()["cause"] == "not_applied"


def test_earliest_broken_stage_wins() -> None:
    c = collector("A")
    old = NOW - timedelta(hours=1)
    c.source_row("e1", order("A"), published=True, written_at=old)
    c.message("e1", 0, 0, old, None)  # consumed, never applied
    c.source_row("e2", order("A"), published=True, written_at=old)  # lost
    c.source_row("e3", order("A"), published=False, written_at=old)  # not published
    c.applied([], c.wanted_applied())
    assert causes(c, pos({0: 5}), "A") == {"A": "not_published"}


def test_in_flight_event_makes_pending_even_beside_a_broken_one() -> None:
    c = collector("A")
    old = NOW - timedelta(hours=1)
    c.source_row("e1", order("A"), published=True, written_at=old)  # lost
    c.message("e2", 1, 10, NOW, lambda: order("A"))  # on the topic, not consumed yet
    assert causes(c, pos({1: 10}), "A") == {"A": "pending"}


def test_no_journal_consumed_means_reached() -> None:
    c = collector("A")
    c.message("e1", 0, 0, NOW, lambda: order("A"))
    assert causes(c, pos({0: 1}, applied=False), "A") == {"A": "misapplied"}
    assert causes(c, pos({0: -1}, applied=False), "A") == {"A": "pending"}  # group never committed


def test_truth_written_after_every_event_is_unexplained() -> None:
    c = collector("A")
    t = NOW - timedelta(minutes=10)
    c.source_row("e1", order("A"), published=True, written_at=t)
    c.message("e1", 0, 0, t, None)
    c.applied(["e1"], c.wanted_applied())
    p = pos({0: 1})
    same = attribute([finding("A")], c, p, KEY, truth_time=lambda f: t)
    later = attribute([finding("A")], c, p, KEY, truth_time=lambda f: NOW)
    assert same.findings[0].cause == "misapplied"
    assert later.findings[0].cause == "unexplained"


def test_source_rows_outside_the_window_are_not_called_lost() -> None:
    c = collector("A", "B")
    c.source_row("e1", order("A"), published=True, written_at=NOW - timedelta(days=2))
    c.source_row("e2", order("B"), published=True, written_at=None)
    p = pos({0: 0}, window_start=NOW - timedelta(days=1))
    assert causes(c, p, "A", "B") == {"A": "unexplained", "B": "unexplained"}
    p = pos({0: 0}, window_start=NOW - timedelta(days=1), topic_from_earliest=True)
    assert causes(c, p, "B") == {"B": "lost"}


def test_only_events_touching_findings_are_kept() -> None:
    c = collector("A")
    decoded = []

    def lazy(v: Any) -> Any:
        def decode() -> Any:
            decoded.append(1)
            return v

        return decode

    for i in range(1000):
        c.message(f"x{i}", 0, i, NOW, lazy(order("Z")))
    c.message("hit", 0, 1000, NOW, lazy(order("Z", "A")))
    assert list(c.events) == ["hit"] and c.messages == 1001 and len(decoded) == 1001
    c.source_row("s1", order("A"), published=True)
    c.message("s1", 0, 1001, NOW, lazy(order("A")))  # known from the source: not decoded again
    assert len(decoded) == 1001 and c.events["s1"].offset == 1001


def test_entities_without_each_and_with_canonical_keys() -> None:
    ex = EntityExtractor({"id": "$.data.order_id"}, ["id"], canon=lambda parts: (int(parts[0]),))
    assert ex({"data": {"order_id": "7"}}) == [(7,)]
    assert ex({"order_id": 7}) == [(7,)]  # a bare value (an outbox payload): $.data.x reads x
    assert ex({"data": {}}) == [] and ex(None) == []
    assert ex({"data": {"order_id": "x"}}) == []  # unreadable as the key's kind


BASE: dict[str, Any] = {
    "name": "inv",
    "truth": {"url": "sqlite://", "table": "a"},
    "projection": {"url": "sqlite://", "table": "b"},
    "key": KEY,
}
PATH: dict[str, Any] = {
    "topic": "shop.orders",
    "consumer_group": "inventory-projector",
    "event_id": "header:ce_id",
    "window": "24h",
    "entities": {"each": "$.data.lines[*]", "key": {"warehouse": "$.data.warehouse", "sku": "sku"}},
    "source": {
        "table": "shop_outbox",
        "event_id": "event_id",
        "payload": "payload",
        "published": "published_at",
    },
    "applied": {"table": "applied_events", "event_id": "event_id"},
    "publish_grace": "1m",
    "settle": "30s",
}


def test_path_spec_parses() -> None:
    s = spec_from_dict({**BASE, "path": PATH})
    assert s.path is not None
    assert s.path.window == timedelta(hours=24)
    assert s.path.publish_grace == timedelta(minutes=1) and s.path.settle == timedelta(seconds=30)
    assert s.path.source is not None and s.path.source.published == "published_at"
    minimal = spec_from_dict(
        {
            **BASE,
            "path": {
                "topic": "t",
                "consumer_group": "g",
                "entities": {"key": {"warehouse": "$.w", "sku": "$.s"}},
            },
        }
    )
    assert minimal.path is not None and minimal.path.event_id == "header:ce_id"
    assert minimal.path.source is None and minimal.path.applied is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"window": "soon"}, "path.window: not a duration: 'soon'"),
        ({"window": "0s"}, "window: must be a positive duration"),
        ({"settle": "later"}, "path.settle: not a duration"),
        ({"publish_grace": "1 fortnight"}, "path.publish_grace: not a duration"),
        ({"event_id": "ce_id"}, "path.event_id: 'ce_id' is not a field"),
        ({"consumer_group": ""}, "path.consumer_group: needs a name"),
        ({"typo": 1}, "path.typo: unknown key"),
        ({"entities": {"key": {"sku": "sku"}}}, "path.entities.key: needs a path for key column 'warehouse'"),
        (
            {"entities": {"key": {"warehouse": "$.w", "sku": "$.s", "bin": "$.b"}}},
            "path.entities.key: 'bin' is not a key column",
        ),
        (
            {"entities": {"key": {"warehouse": "$.w", "sku": "sku"}}},
            "path.entities.key.sku: 'sku' is relative",
        ),
        ({"entities": {"each": "lines", "key": {"warehouse": "$.w", "sku": "s"}}}, "path.entities.each:"),
        ({"source": {"event_id": "id"}}, "path.source.table: required key is missing"),
    ],
)
def test_path_spec_errors_are_one_line(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as e:
        spec_from_dict({**BASE, "path": {**PATH, **change}}, "inv.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("spec inv.yaml: ")


def test_each_on_a_bare_value_reads_inside_data() -> None:
    ex = EntityExtractor({"warehouse": "$.data.warehouse", "sku": "sku"}, KEY, each="$.data.lines[*]")
    bare = {"warehouse": "W1", "lines": [{"sku": "A"}, {"sku": "B"}]}
    assert ex(bare) == [("W1", "A"), ("W1", "B")]
    assert ex(order("A", "B")) == [("W1", "A"), ("W1", "B")]


def test_drift_alert_quotes_each_findings_cause_and_the_counts() -> None:
    from reconcile.alerts import drift_alert

    f = finding("A")
    f = Finding(
        f.kind,
        f.key,
        columns=f.columns,
        truth={"on_hand": 9},
        projection={"on_hand": 10},
        cause="lost",
        evidence=({"event_id": "e-9", "stage": "lost"},),
    )
    run = {
        "run_id": "r1",
        "summary": {"compared": 10, "mismatch": 1},
        "findings": [f.to_dict()],
        "causes": {"not_published": 0, "lost": 1, "not_applied": 0, "misapplied": 0, "unexplained": 0},
    }
    text = drift_alert("inv", run).text()
    assert "causes: lost 1" in text and "cause: lost (event e-9 lost)" in text
    assert "not_published" not in text


class _Group:
    """A consumer group that commits one more offset each time it is asked (a projector catching up)."""

    def __init__(self, start: int) -> None:
        self.at = start
        self.asked = 0

    def committed(self, group: str, topic: str, partitions: Any) -> dict[int, int]:
        self.asked += 1
        self.at += 1
        return {p: self.at for p in partitions}


def test_settle_waits_for_the_group_to_reach_the_cut_and_records_it() -> None:
    from reconcile.sources.path import Cut, settle

    def cut(committed: int) -> Cut:
        return Cut(NOW, None, "t", {0: 5, 1: 0}, {0: committed, 1: -1}, "g")

    group = _Group(2)
    got = settle(cut(2), group, 10.0, poll_s=0.0, sleep=lambda s: None)  # type: ignore[arg-type]
    assert got.reached and group.asked == 3 and got.projection_committed == {0: 5, 1: 5}
    assert got.to_dict()["reached"] is True and got.to_dict()["settle_s"] == 10.0
    never = settle(cut(0), _Group(-100), 0.0, sleep=lambda s: None)  # type: ignore[arg-type]
    assert not never.reached and never.projection_committed == {0: 0, 1: -1}
    assert never.to_dict()["end_offsets"] == {"0": 5, "1": 0}


# The text pre-filter: an event whose raw JSON holds none of a text key part's values as a string
# is rejected undecoded. It must never reject one the decoded check would keep.
TRICKY = [
    '{"warehouse":"W1","lines":[{"sku":"S1","quantity":1}]}',
    '{ "warehouse" : "W1" , "lines" : [ { "sku" : "S1" } ] }',
    '{"warehouse":"W1","lines":[{"sku":"\\u00531"}]}',  # S1 spelled with an escape
    '{"warehouse":"W1","lines":[{"sku":"S\\u00e9"}]}',  # Sé escaped
    '{"warehouse":"W1","lines":[{"sku":"Sé"}]}',  # Sé as it is
    '{"warehouse":"W1","lines":[{"sku":"a\\"b"}]}',  # a"b
    '{"data":{"warehouse":"W1","lines":[{"sku":"S2"}]}}',  # a structured CloudEvent
    '{"warehouse":"W1","lines":[{"sku":12}]}',  # a number for a text key: "12"
    '{"warehouse":"W1","lines":[{"sku":12.0}]}',  # "12.0"
    '{"warehouse":"W1","lines":[{"sku":1e2}]}',  # "100.0"
    '{"warehouse":"W1","lines":[{"sku":true}]}',  # "True"
    '{"warehouse":"W1","lines":[{"sku":["S1"]}]}',  # "['S1']"
    '{"warehouse":"W1","lines":[{"sku":"S1 "}, {"sku":"xS1"}, {"S1": "sku"}]}',
    '{"warehouse":"W1","lines":[{"sku":"S3"},{"sku":"S1"}]}',
    '{"warehouse":"W2","lines":[{"sku":"S1"}]}',
    '{"warehouse":"W1","lines":[{"sku":"S1"}]',  # not JSON
    '"S1"',
    "",
]


def _extractor(texts: bool = True) -> EntityExtractor:
    from reconcile.app.path import canon_for

    return EntityExtractor(
        {"warehouse": "$.data.warehouse", "sku": "sku"},
        KEY,
        each="$.data.lines[*]",
        canon=canon_for(["text", "text"]),
        simple=[str, str],
        texts=[True, True] if texts else None,
    )


@pytest.mark.parametrize(
    "skus",
    [
        {"S1", "S2", "Sé", 'a"b'},  # sku values all plain: the filter reads sku
        {"S1", "12", "True", "100.0", "['S1']"},  # not plain (the text of a number...): reads warehouse
        {"S1", "100.0"},  # the text of a float is not plain either
    ],
)
def test_text_prefilter_never_rejects_what_the_decoded_check_keeps(skus: set[str]) -> None:
    import msgspec

    def decode(raw: Any) -> Any:
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return None

    ex = _extractor()
    ex.restrict({("W1", s) for s in skus}, [str, str])
    assert ex.maybe is not None
    kept = 0
    for text in TRICKY:
        for raw in (text, text.encode()):
            touched = ex.touching(decode(raw))
            kept += bool(touched)
            if not ex.maybe(raw):
                assert touched == (), raw
    assert kept >= 8  # the set exercises both outcomes
    # and the collector gives the same events with the filter as without it
    keys = {("W1", s) for s in skus}
    fast, slow = Collector(keys, _extractor()), Collector(keys, _extractor(texts=False))
    assert slow.extract.maybe is None
    batch = [(f"e{i}", 0, i, -1, t.encode()) for i, t in enumerate(TRICKY)]
    fast.message_batch(batch, decode)
    slow.message_batch(batch, decode)
    assert fast.events == slow.events and fast.messages == slow.messages == len(TRICKY)


def test_text_prefilter_off_without_plain_text_parts() -> None:
    ex = _extractor()
    ex.restrict({("W1", "12")}, [str, str])
    assert ex.maybe is not None  # warehouse "W1" is plain
    ex.restrict({("1", "12")}, [str, str])
    assert ex.maybe is None  # neither part is
    assert collector("S1").extract.maybe is None  # canon unknown (no texts): never filtered
