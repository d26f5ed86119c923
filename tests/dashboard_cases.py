"""A store with a story, for the dashboard's tests: real audits of small SQLite pairs.

    stock   drift found, corrected, relayed, projected and verified (16 findings resolved); then
            new drift: 2 missing being corrected (2 events unsent in the outbox), 1 mismatch
            acknowledged, 1 mismatch open, and 1 missing open again (its second episode)
    clean   one audit, no drift: healthy
    gated   never audited; its last preflight failed

Built once per test module (about a second); the expected numbers are constants below.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from reconcile.app import Context, Projector, acknowledge, audit, correct, relay, verify
from reconcile.spec import Spec, spec_from_dict
from reconcile.store import AuditStore, Store

from .builders import execute
from .heal_cases import build_pair, expected_findings, heal_spec, write_spec_file

N = 60
HEALED = expected_findings(N)  # 16: the first drift, resolved by verify
OPEN_MISMATCH = "S00020"  # open (its on_hand changed in the projection)
ACKED = "S00021"  # acknowledged mismatch
CORRECTING = ("S00030", "S00031")  # missing: corrective events written, not relayed
RETURNED = "S00013"  # missing in the first drift (healed), missing again now: open


@dataclass(frozen=True)
class World:
    root: Path
    store_url: str
    specs_dir: Path
    stock: Spec
    clean: Spec
    gated: Spec

    def store(self) -> Store:
        return AuditStore(self.store_url)


def _pair(root: Path, name: str) -> tuple[str, str]:
    t, p = (f"sqlite:///{root / f'{name}-{side}.db'}" for side in ("truth", "proj"))
    build_pair(t, p, n=N)
    return t, p


def build_world(root: Path, store_url: str | None = None) -> World:
    """Run the story into a fresh store (a SQLite file under ``root`` unless ``store_url``);
    truth and projection files and the spec files (``root/specs``) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    store_url = store_url or f"sqlite:///{root / 'store.db'}"
    specs_dir = root / "specs"
    specs_dir.mkdir()
    store = AuditStore(store_url)
    ctx = Context.of(store, started_by="schedule")

    t, p = _pair(root, "stock")
    stock = heal_spec(t, p, topic="stock.reconciled", group="stock-projector", transport="embedded")
    stock = stock.model_copy(update={"name": "stock", "description": "stock levels vs stock_view"})
    audit(ctx, stock)
    correct(ctx, stock)
    relay(ctx, spec_name=stock.name)
    projector = Projector(ctx, stock)
    projector.run(idle_timeout_s=0.2)
    projector.close()
    verify(ctx, stock)
    # New drift after the heal: two rows lost, two values off.
    execute(p, "DELETE FROM stock_view WHERE product_id IN (:a, :b)", a=CORRECTING[0], b=CORRECTING[1])
    execute(p, "UPDATE stock_view SET on_hand = on_hand + 5 WHERE product_id = :k", k=ACKED)
    audit(Context.of(store, started_by="cli"), stock)
    acknowledge(ctx, stock, ACKED, "known: a manual stock count")
    correct(ctx, stock)  # the two missing: events in the outbox, not relayed
    execute(p, "UPDATE stock_view SET on_hand = on_hand + 7 WHERE product_id = :k", k=OPEN_MISMATCH)
    execute(p, "DELETE FROM stock_view WHERE product_id = :k", k=RETURNED)
    audit(Context.of(store, started_by="on demand"), stock)

    t, _ = _pair(root, "clean")
    import shutil

    shutil.copy(root / "clean-truth.db", root / "clean-copy.db")
    clean = spec_from_dict(  # truth against an exact copy of itself: never drifts
        {
            "name": "clean",
            "description": "a pair that never drifts",
            "truth": {"url": t, "table": "stock"},
            "projection": {"url": f"sqlite:///{root / 'clean-copy.db'}", "table": "stock"},
            "key": ["sku"],
            "columns": {"on_hand": {}, "title": {}},
        }
    )
    audit(ctx, clean)

    t, p = _pair(root, "gated")
    gated = heal_spec(t, p, topic="gated.reconciled", group="gated-projector", transport="embedded")
    gated = gated.model_copy(update={"name": "gated", "correction": None})
    failure = "projection: expect_table_row_count_to_be_between failed (observed 0, min 30)"
    store.record_preflight(
        check_id=str(uuid.uuid4()),
        spec="gated",
        checked_at=datetime.now(UTC),
        success=False,
        results=json.loads(json.dumps({"failures": [failure], "sides": {}})),
        docs=None,
    )
    for spec in (stock, clean, gated):
        write_spec_file(specs_dir / f"{spec.name}.yaml", spec)
    ctx.close()  # the embedded log's engine too, and the store
    return World(root, store_url, specs_dir, stock, clean, gated)
