"""The reference projector's writer (issue 14): a batch applied with a handful of statements
(one array parameter on PostgreSQL, multi-row INSERTs) leaves the table, the applied ids and the
counts exactly as applying each event alone, in order, would (the model below)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.sources.writer import Incoming, ProjectionWriter, ProjectorStats, applied_events

from .builders import make_table

COLUMNS = ("on_hand", "title")


def _batches(seed: int, mixed: bool) -> list[list[Incoming]]:
    """Batches with states, tombstones, an entity twice in a batch, redelivered ids, non-ASCII
    text and large ints; ``mixed``: states of two shapes (a column left out: NULL) in a batch,
    which an executemany of the first row's shape refused (before issue 14's writer)."""
    rnd = random.Random(seed)
    made = [Incoming("first", {"product_id": "K0001"}, {"on_hand": 5, "title": "x"})]  # the duplicated one
    out: list[list[Incoming]] = [list(made)]
    for b in range(6):
        batch = out[0] if b == 0 else []
        for _ in range(rnd.randint(1, 700)):
            if made and rnd.random() < 0.1:
                batch.append(rnd.choice(made))  # redelivered: the same id again
                continue
            sku = f"K{rnd.randint(0, 300):04d}" + ("é" if rnd.random() < 0.1 else "")
            n = len(made)
            roll = rnd.random()
            if roll < 0.1:
                ev = Incoming(f"e{b}-{n}", {"product_id": sku}, None)
            elif roll < 0.2 and mixed:
                ev = Incoming(f"e{b}-{n}", {"product_id": sku}, {"on_hand": 2**40 + n})
            elif roll < 0.3:  # what an array literal quotes: quotes, backslashes, braces, NULL
                title = rnd.choice(['q"', "b\\s", "{a,b}", "NULL", "", " sp ", None])
                tricky = rnd.choice(['"', "\\", ",", "}"])
                ev = Incoming(
                    f"e{b}-{n}{tricky}", {"product_id": sku + tricky}, {"on_hand": n, "title": title}
                )
            else:
                ev = Incoming(f"e{b}-{n}", {"product_id": sku}, {"on_hand": n, "title": f"t☃{n}"})
            made.append(ev)
            batch.append(ev)
        if b:
            out.append(batch)
    return out


def _model(
    batches: list[list[Incoming]], start: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], int, int]:
    """Each event alone, in order: a new id replaces (or deletes) its entity's row."""
    rows = {k: dict(v) for k, v in start.items()}
    seen: set[str] = set()
    for batch in batches:
        for ev in batch:
            if ev.event_id in seen:
                continue
            seen.add(ev.event_id)
            sku = ev.key["product_id"]
            rows.pop(sku, None)
            if ev.state is not None:
                rows[sku] = {c: ev.state.get(c) for c in COLUMNS}
    applied = len(seen)
    return rows, applied, sum(len(b) for b in batches) - applied


def _table(url: str) -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            got = conn.execute(sa.text("SELECT product_id, on_hand, title FROM stock_view")).all()
            assert len({r[0] for r in got}) == len(got), "an entity has two rows"
            return {r[0]: {"on_hand": r[1], "title": r[2]} for r in got}
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'proj.db'}"
    else:
        yield request.getfixturevalue("make_pg_db")("proj")


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_batch_applies_like_each_event_alone(url: str, seed: int, mixed: bool) -> None:
    start = {"K0001": {"on_hand": 1, "title": "old"}, "K0002": {"on_hand": 2, "title": "old"}}
    make_table(
        url,
        "stock_view",
        [
            sa.Column("product_id", sa.String(20)),
            sa.Column("on_hand", sa.BigInteger),
            sa.Column("title", sa.Text),
        ],
        [{"product_id": k, **v} for k, v in start.items()]
        + [{"product_id": "K0001", "on_hand": 9, "title": "dup"}],
    )
    batches = _batches(seed, mixed)  # its first event is of K0001, whose two rows it replaces
    writer = ProjectionWriter(url, "stock_view")
    stats = ProjectorStats()
    try:
        for b in batches:
            writer.apply(b, stats)
        for b in batches:  # everything redelivered: nothing changes
            writer.apply(b, stats)
        with writer.engine.connect() as conn:
            ids = set(conn.execute(sa.select(applied_events.c.event_id)).scalars())
    finally:
        writer.dispose()
    rows, applied, duplicates = _model(batches, start)
    assert _table(url) == rows
    assert ids == {ev.event_id for b in batches for ev in b}
    assert stats.applied == applied
    assert stats.duplicates == duplicates + sum(len(b) for b in batches)
    assert stats.messages == 2 * sum(len(b) for b in batches)
