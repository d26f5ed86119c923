"""`reconcile demo`: the inventory-desync incident, caught and healed, in about a minute.

On the embedded default (no services): truth and projection are SQLite files under ``.demo/``,
the event channel is reconcile's embedded table-backed log. With ``--real`` the same story runs
on the local PostgreSQL and Kafka of ``make services``. The blip is injected at the order
service's producer: for its duration every publish fails as if the broker were unreachable.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from ..events.kafka import KafkaSettings, ensure_topic
from ..findings import Finding
from ..shop import EmbeddedChannel, KafkaChannel, spec_path, stage_spec_paths
from ..shop.channel import Channel
from ..shop.service import ORDERS_TOPIC
from ..spec import load_spec
from ..store import AuditStore
from .incident import Faults, Incident

__all__ = ["DemoSettings", "run_demo"]


@dataclass
class DemoSettings:
    """Knobs of the demo (defaults tell the story in well under a minute)."""

    real: bool = False
    workdir: Path = Path(".demo")
    rate: float = 80.0
    seconds: float = 5.0
    blip_at: float = 1.5
    blip_seconds: float = 0.4
    warehouses: int = 3
    per_warehouse: int = 200
    grace_s: float = 2.0
    pg_url: str = os.environ.get(
        "RECONCILE_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
    )
    bootstrap: str | None = None
    store_url: str | None = None  # where the run left its audit store (set by run_demo)


def _fmt(values: dict[str, Any] | None) -> str:
    if values is None:
        return "(absent)"
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _row(f: Finding) -> str:
    key = f"{f.key['warehouse']}/{f.key['sku']}"
    cols = ",".join(f.columns) or "-"
    return (
        f"   {f.kind.value:<9} {key:<14} {cols:<16} truth {_fmt(f.truth):<28} projection {_fmt(f.projection)}"
    )


def _stages(incident: Incident, say: Callable[[str], None]) -> bool:
    """Audit the event path stage by stage, the topic read as a table; True when the publish stage
    found exactly the lost OrderPlaced events and the apply stage no drift."""
    from .audit import audit

    paths = stage_spec_paths()
    published = audit(incident.ctx, load_spec(paths["published"]))
    applied = audit(incident.ctx, load_spec(paths["applied"]))
    lost = set(incident.truth.lost_orders)
    missing = {int(f.key["order_id"]) for f in published.findings if f.kind.value == "missing"}
    hits = len(lost & missing)
    exact = missing == lost and len(published.findings) == len(missing)
    topic = published.scope.get("topics", {}).get("projection", {})
    read = topic.get("read", {})
    name = topic.get("topic", "the topic")
    precision = hits / len(missing) if missing else 1.0
    recall = hits / len(lost) if lost else 1.0
    say("4. The event path, stage by stage (the orders topic read as a table):")
    say(
        f"   orders -> {name}: {read.get('messages', 0)} messages read, {len(missing)} orders without "
        "their OrderPlaced event"
        + (f" (e.g. order {min(missing)})" if missing else "")
        + f"; against the ground truth: {hits} of {len(lost)} lost events, "
        f"precision {precision:.2f}, recall {recall:.2f}"
    )
    s = applied.summary
    if applied.findings:
        say(f"   {name} -> projector journal: {len(applied.findings)} events consumed but not applied")
    else:
        say(
            f"   {name} -> projector journal: no drift, {s.pending} in flight (past the projector's "
            "committed offsets): every event it consumed was applied"
        )
    return exact and not applied.findings


def _causes(incident: Incident, say: Callable[[str], None]) -> bool:
    """Audit again with the shop's event path: every finding's cause, decided by positions; True
    when every lost entity (and nothing else) is called ``lost``."""
    from ..causes import Cause
    from ..shop.paths import shop_path, with_path
    from .audit import audit

    c = incident.spec.correction
    assert c is not None and c.consumer_group
    transport: Literal["kafka", "embedded"] = "kafka" if incident.kafka is not None else "embedded"
    path = shop_path(
        incident.mode,
        incident.orders_topic,
        c.consumer_group,
        transport=transport,
        settle=timedelta(seconds=10),
    )
    result = audit(incident.ctx, with_path(incident.spec, path))
    lost = set(incident.truth.lost_entities)
    by_cause: dict[str, set[tuple[str, str]]] = {x.value: set() for x in Cause}
    for f in result.findings:
        by_cause[f.cause or Cause.UNEXPLAINED.value].add((f.key["warehouse"], f.key["sku"]))
    hits = len(by_cause[Cause.LOST.value] & lost)
    found = len(by_cause[Cause.LOST.value])
    precision = hits / found if found else 1.0
    recall = hits / len(lost) if lost else 1.0
    others = sum(len(v) for k, v in by_cause.items() if k != Cause.LOST.value)
    breakdown = ", ".join(f"{k} {len(v)}" for k, v in by_cause.items())
    cut = result.cut or {}
    say(
        f"   why, from the event path (orders -> {incident.orders_topic} -> projector group -> its journal; "
        f"pending by offsets, not the clock): {breakdown}; {result.summary.pending} pending"
    )
    say(
        f"   cause against the ground truth: lost precision {precision:.2f}, recall {recall:.2f} "
        f"({hits} of {len(lost)} entities with a lost event), {others} given another cause; "
        f"the projector reached the cut after {cut.get('waited_s', 0):.1f}s"
    )
    return precision == 1.0 and recall == 1.0 and others == 0


def _pg_databases(base_url: str, suffix: str) -> tuple[str, str, str]:
    import sqlalchemy as sa

    from ..db import normalize_url

    admin = sa.create_engine(normalize_url(base_url), isolation_level="AUTOCOMMIT")
    names = [f"demo_shop_{suffix}", f"demo_inventory_{suffix}", f"demo_store_{suffix}"]
    with admin.connect() as conn:
        for n in names:
            conn.execute(sa.text(f'CREATE DATABASE "{n}"'))
    admin.dispose()
    u = sa.make_url(base_url)
    return tuple(u.set(database=n).render_as_string(hide_password=False) for n in names)  # type: ignore[return-value]


def run_demo(settings: DemoSettings, say: Callable[[str], None] = print) -> int:
    """Tell the story; return 0 when the drift was found exactly and healed, else 1."""
    t0 = time.monotonic()
    suffix = uuid.uuid4().hex[:8]
    os.environ["SHOP_GRACE"] = f"{settings.grace_s:g}s"
    channel: Channel
    kafka = None
    if settings.real:
        truth_url, proj_url, store_url = _pg_databases(settings.pg_url, suffix)
        os.environ.update(
            SHOP_TRUTH_URL=truth_url,
            SHOP_PROJECTION_URL=proj_url,
            SHOP_TRANSPORT="kafka",
            SHOP_TOPIC_SUFFIX=f".{suffix}",
        )
        kafka = KafkaSettings.from_env(settings.bootstrap)
        orders_topic = f"{ORDERS_TOPIC}.{suffix}"
        channel = KafkaChannel(kafka)
        where = f"PostgreSQL databases demo_*_{suffix}, Kafka at {kafka.bootstrap_servers}"
    else:
        wd = settings.workdir
        shutil.rmtree(wd, ignore_errors=True)
        wd.mkdir(parents=True)
        truth_url, proj_url, store_url = (
            f"sqlite:///{wd / n}" for n in ("shop.db", "inventory.db", "store.db")
        )
        os.environ.update(SHOP_TRUTH_URL=truth_url, SHOP_PROJECTION_URL=proj_url, SHOP_TRANSPORT="embedded")
        os.environ.pop("SHOP_TOPIC_SUFFIX", None)
        os.environ["RECONCILE_EMBEDDED_LOG_URL"] = store_url
        orders_topic = ORDERS_TOPIC
        channel = EmbeddedChannel(store_url)
        where = f"SQLite files in {wd}/, events on the embedded log ({wd}/store.db)"
    settings.store_url = store_url
    spec = load_spec(spec_path())
    assert spec.correction is not None
    if kafka is not None:
        for topic in (orders_topic, spec.correction.topic):
            ensure_topic(kafka, topic)

    say("reconcile demo: the inventory-desync incident, replayed")
    say(f"   {where}")
    incident = Incident(
        spec=spec,
        store=AuditStore(store_url),
        channel=channel,
        mode="direct",
        rate=settings.rate,
        seconds=settings.seconds,
        orders_topic=orders_topic,
        kafka=kafka,
        warehouses=settings.warehouses,
        per_warehouse=settings.per_warehouse,
        faults=Faults(blip_at=settings.blip_at, blip_seconds=settings.blip_seconds),
    )
    try:
        n = len(incident.entities)
        say(
            f"1. The shop opens: {n} stock levels ({incident.warehouses} warehouses). The inventory service "
            "builds its stock_view from OrderPlaced events."
        )
        say(
            f"2. Orders flow for {settings.seconds:g}s at {settings.rate:g}/s. The order service commits, "
            f"then publishes from the request handler. At {settings.blip_at:g}s the broker blips for "
            f"{settings.blip_seconds:g}s..."
        )
        truth = incident.play()
        blip_at = next((t for t, what in incident.events if what.startswith("broker blip")), time.monotonic())
        incident.caught_up()
        lost = len(truth.lost_events)
        say(
            f"   {truth.orders} orders committed; {lost} OrderPlaced events lost in the blip. No customer "
            f"saw an error, the projector never noticed: {len(truth.lost_entities)} stock levels now wrong."
        )
        time.sleep(settings.grace_s + 1.2)  # let the last orders leave the freshness grace

        say(f"3. reconcile audit (freshness grace {settings.grace_s:g}s):")
        result, score = incident.audit(settings.grace_s)
        s = result.summary
        say(
            f"   compared {s.compared}, pending {s.pending}, missing {s.missing}, orphan {s.orphan}, "
            f"mismatch {s.mismatch}, duplicate {s.duplicate}"
        )
        for f in result.findings[:5]:
            say(_row(f))
        if len(result.findings) > 5:
            say(f"   ... and {len(result.findings) - 5} more")
        say(
            f"   against the ground truth: precision {score.precision:.2f}, recall {score.recall:.2f} "
            f"({score.true_positives} of {score.expected} lost entities found, {score.found} reported)"
        )

        causes_ok = _causes(incident, say)
        stages_ok = _stages(incident, say)

        say("5. reconcile run --verify: corrective events -> outbox -> relay -> projector -> verify")
        outcome = incident.heal()
        v = outcome.verify
        sent = outcome.relay.sent if outcome.relay else 0
        say(
            f"   {sent} corrective events relayed; verified: {v.resolved if v else 0} resolved, "
            f"{v.escalated if v else 0} escalated"
        )

        final, _ = incident.audit(settings.grace_s)
        healed_at = time.monotonic()
        ok = (
            not final.findings
            and score.precision == 1.0
            and score.recall == 1.0
            and outcome.exit_code == 0
            and stages_ok
            and causes_ok
        )
        say(
            f"6. Final audit: {'no drift' if not final.findings else f'{len(final.findings)} findings left'}."
            " "
            f"From the blip to verified zero drift: {healed_at - blip_at:.1f}s "
            f"(the incident this replays went unnoticed for hours)."
        )
        store_at = store_url.split("///")[-1]
        say(f"   demo finished in {time.monotonic() - t0:.1f}s; the audit store is {store_at}")
        from ..errors import mask_url

        say(
            "7. See it on the dashboard: reconcile serve --store "
            f"{mask_url(store_url) if settings.real else store_url} (then http://127.0.0.1:8765/), "
            "or run the demo with --serve."
        )
        return 0 if ok else 1
    finally:
        incident.close()
