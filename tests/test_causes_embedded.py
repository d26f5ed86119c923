"""Causes without any service: SQLite truth and projection, the embedded log as the topic. Every
cause from its broken stage, the cut with no truth position (not PostgreSQL), and `trace`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconcile.app import Context, audit, trace
from reconcile.events.embedded import EmbeddedLog

from .causes_cases import Shop, order_event
from .test_causes_kafka import broken_shop, causes
from .topic_cases import spec


@dataclass
class EmbeddedShop(Shop):
    """The same shop with its topic on the embedded log (offsets as the log numbers them)."""

    log: EmbeddedLog | None = None
    offsets: list[int] = field(default_factory=list)

    def publish(self, eid: str, *skus: str, at: object = None) -> int:
        assert self.log is not None
        m = order_event(eid, *skus)
        self.log.append([(self.topic, m.key, m.headers, m.text_value())])
        self.offsets.append(self.log.end_offset(self.topic) - 1)
        return self.offsets[-1]

    def commit(self, offset: int) -> None:
        """Commit as if the first ``offset`` messages were consumed."""
        assert self.log is not None
        nxt = self.offsets[offset] if offset < len(self.offsets) else self.log.end_offset(self.topic)
        with self.log.engine.begin() as conn:
            self.log.commit(conn, self.group, self.topic, nxt)

    def spec(self, **path: object) -> dict[str, object]:
        doc = super().spec(**path)
        doc["path"]["transport"] = "embedded"  # type: ignore[index]
        return doc


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[EmbeddedShop, Context]]:
    log_url = f"sqlite:///{tmp_path / 'log.db'}"
    log = EmbeddedLog(log_url)
    shop = EmbeddedShop(
        f"sqlite:///{tmp_path / 'truth.db'}",
        f"sqlite:///{tmp_path / 'proj.db'}",
        "",
        f"shop.orders.{uuid.uuid4().hex[:8]}",
        log=log,
    )
    shop.create()
    ctx = Context(store_url=f"sqlite:///{tmp_path / 'store.db'}", embedded_url=log_url)
    yield shop, ctx
    ctx.close()
    log.dispose()


def test_every_cause_on_sqlite_and_the_embedded_log(world: tuple[EmbeddedShop, Context]) -> None:
    shop, ctx = world
    broken_shop(shop)
    s = spec(shop.spec(settle="0s"))
    result = audit(ctx, s)
    assert causes(result) == {
        "A": "not_published",
        "C": "lost",
        "D": "not_applied",
        "E": "misapplied",
        "F": "unexplained",
        "H": "unexplained",
    }
    assert result.summary.pending == 2
    assert result.cut is not None and result.cut["truth"] is None  # SQLite: no position to record
    assert result.cut["reached"] is False
    d = trace(ctx, s, "W1:D")
    assert d.cause == "not_applied" and d.events[0]["topic"]["offset"] == shop.offsets[0]


def test_a_run_too_large_to_hold_still_gets_its_causes(
    world: tuple[EmbeddedShop, Context], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the in-memory limit findings stream from a spill into the store: causes as they pass."""
    import sys

    monkeypatch.setattr(sys.modules["reconcile.app.audit"], "RECHECK_LIMIT", 3)
    shop, ctx = world
    broken_shop(shop)
    s = spec(shop.spec(settle="0s"))
    result = audit(ctx, s)
    assert result.summary.pending == 2 and result.summary.mismatch == 6
    assert result.causes == {
        "not_published": 1,
        "lost": 1,
        "not_applied": 1,
        "misapplied": 1,
        "unexplained": 2,
    }
    stored = {f.key["sku"]: f.cause for f in ctx.store.active_findings(s.name)}
    assert stored == {
        "A": "not_published",
        "C": "lost",
        "D": "not_applied",
        "E": "misapplied",
        "F": "unexplained",
        "H": "unexplained",
    }
