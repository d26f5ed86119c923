"""Benchmark: attributing causes to 1,000 findings over a window of N events (default 1M).

    .venv/bin/python bench/causes.py --events 1000000

Builds, in two fresh PostgreSQL databases:

* truth: ``stock_levels`` of E entities (``warehouse``, ``sku``; default 100,000) and
  ``shop_outbox`` of N rows (``event_id``, ``payload`` JSON text with one order line, ``created_at``,
  ``published_at``); each entity is touched by N/E events;
* projection: ``stock_view`` (a copy of truth) and ``applied_events`` (every published event id);

and a fresh topic (``--partitions``, default 3) with one binary-mode CloudEvent per published row.
Planted, 200 entities each (1,000 findings): ``not_published`` (one row unpublished for an hour),
``lost`` (one row published, no message), ``not_applied`` (one message consumed, not in the
journal), ``misapplied`` (the view's count off by one), ``unexplained`` (truth changed after its
last event). The group's offsets are committed at the topic's end.

Then it runs ``python -m reconcile audit SPEC --format json --settle 0s`` once as a child
process and reports its wall time, its CPU time and peak RSS (``os.wait4``), the attribution
pass's own time (``cut.read.seconds``: the source table, the topic window and the journal), and
whether every finding got its planted cause. Exit status 0 only when it did. Everything it
creates is dropped/deleted at the end unless --keep. Prints a markdown table and writes it to
``bench/results/causes-<stamp>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_PG = os.environ.get("RECONCILE_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
DEFAULT_KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
CAUSES = ("not_published", "lost", "not_applied", "misapplied", "unexplained")
PER_CAUSE = 200


def _sa(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _database(base_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(_sa(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return sa.make_url(base_url).set(database=name).render_as_string(hide_password=False)


def _drop(base_url: str, url: str) -> None:
    name = sa.make_url(url).database
    admin = sa.create_engine(_sa(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def sku(g: int, entities: int) -> str:
    return f"S{g % entities:06d}"


def plant(n: int, entities: int, rng: random.Random) -> dict[str, dict[str, object]]:
    """Which entities get which cause, and the event (outbox row number) that breaks it."""
    chosen = rng.sample(range(entities), PER_CAUSE * len(CAUSES))
    out: dict[str, dict[str, object]] = {}
    for i, cause in enumerate(CAUSES):
        ents = chosen[i * PER_CAUSE : (i + 1) * PER_CAUSE]
        # the entity's last event: g = e + k*entities for the largest k with g <= n
        events = [
            e + ((n - e) // entities) * entities if e > 0 else ((n // entities) * entities) for e in ents
        ]
        out[cause] = {"entities": {f"S{e:06d}" for e in ents}, "events": set(events)}
    return out


def build(base_url: str, n: int, entities: int, planted: dict[str, dict[str, object]]) -> tuple[str, str]:
    truth, proj = _database(base_url, "bench_causes_t"), _database(base_url, "bench_causes_p")
    unpublished = sorted(planted["not_published"]["events"])  # type: ignore[arg-type]
    not_applied = sorted(planted["not_applied"]["events"])  # type: ignore[arg-type]
    lost = sorted(planted["lost"]["events"])  # type: ignore[arg-type]
    misapplied = sorted(planted["misapplied"]["entities"])  # type: ignore[arg-type]
    unexplained = sorted(planted["unexplained"]["entities"])  # type: ignore[arg-type]
    e = sa.create_engine(_sa(truth))
    with e.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE stock_levels (warehouse text, sku text, on_hand int NOT NULL, "
                "updated_at timestamptz NOT NULL, PRIMARY KEY (warehouse, sku))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO stock_levels SELECT 'W1', 'S' || lpad(g::text, 6, '0'), 100, "
                f"now() - interval '2 hours' FROM generate_series(0, {entities - 1}) g"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE shop_outbox (id bigint PRIMARY KEY, event_id text NOT NULL UNIQUE, "
                "payload text NOT NULL, created_at timestamptz NOT NULL, published_at timestamptz)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO shop_outbox SELECT g, 'ev-' || lpad(g::text, 9, '0'), "
                "json_build_object('warehouse', 'W1', 'lines', json_build_array(json_build_object("
                f"'sku', 'S' || lpad((g % {entities})::text, 6, '0'), 'quantity', 1)))::text, "
                "now() - interval '1 hour', now() - interval '1 hour' "
                f"FROM generate_series(1, {n}) g"
            )
        )
        conn.execute(
            sa.text("UPDATE shop_outbox SET published_at = NULL WHERE id = ANY(:ids)"), {"ids": unpublished}
        )
        conn.execute(
            sa.text("UPDATE stock_levels SET updated_at = now() WHERE sku = ANY(:s)"), {"s": unexplained}
        )
        conn.execute(sa.text("ANALYZE"))
    e.dispose()
    p = sa.create_engine(_sa(proj))
    with p.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE stock_view (warehouse text, sku text, on_hand int NOT NULL, "
                "PRIMARY KEY (warehouse, sku))"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO stock_view SELECT 'W1', 'S' || lpad(g::text, 6, '0'), 100 "
                f"FROM generate_series(0, {entities - 1}) g"
            )
        )
        drifted = [s for c in CAUSES for s in planted[c]["entities"]]  # type: ignore[attr-defined]
        conn.execute(
            sa.text("UPDATE stock_view SET on_hand = 101 WHERE sku = ANY(:s)"), {"s": misapplied + drifted}
        )
        conn.execute(sa.text("CREATE TABLE applied_events (event_id text PRIMARY KEY)"))
        skip = sorted(set(unpublished) | set(lost) | set(not_applied))
        conn.execute(
            sa.text(
                "INSERT INTO applied_events SELECT 'ev-' || lpad(g::text, 9, '0') "
                f"FROM generate_series(1, {n}) g WHERE NOT (g = ANY(:skip))"
            ),
            {"skip": skip},
        )
    p.dispose()
    return truth, proj


def produce(bootstrap: str, n: int, entities: int, partitions: int, skip: set[int]) -> str:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"bench.causes.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500000,
        }
    )
    for g in range(1, n + 1):
        if g in skip:
            continue
        value = json.dumps(
            {"warehouse": "W1", "lines": [{"sku": sku(g, entities), "quantity": 1}]}, separators=(",", ":")
        )
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", f"ev-{g:09d}".encode()),
            ("ce_type", b"OrderPlaced"),
            ("content-type", b"application/json"),
        ]
        while True:
            try:
                p.produce(topic, key=sku(g, entities), value=value, headers=headers)
                break
            except BufferError:
                p.poll(0.1)
        if g % 10000 == 0:
            p.poll(0)
    assert p.flush(120) == 0
    return topic


def commit_all(bootstrap: str, topic: str, group: str) -> None:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        offsets = []
        for part in meta.partitions:
            _, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
            offsets.append(TopicPartition(topic, part, high))
        c.commit(offsets=offsets, asynchronous=False)
    finally:
        c.close()


def run_audit(spec_path: Path, store: str, env: dict[str, str]) -> tuple[int, dict, float, float, float, str]:  # type: ignore[type-arg]
    cmd = [sys.executable, "-m", "reconcile", "audit", str(spec_path), "--format", "json", "--settle", "0s"]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**env, "RECONCILE_STORE_URL": store})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        text = out.read().decode()
        doc = json.loads(text) if text.strip() else {}
        return (
            os.waitstatus_to_exitcode(status),
            doc,
            seconds,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024,
            err.read().decode(),
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="outbox rows / events (default 1M)")
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    ap.add_argument("--bootstrap", default=DEFAULT_KAFKA)
    ap.add_argument("--keep", action="store_true", help="keep the databases and the topic")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    n, entities = args.events, args.entities
    rng = random.Random(args.seed)
    planted = plant(n, entities, rng)
    t0 = time.monotonic()
    truth, proj = build(args.pg_url, n, entities, planted)
    skip = set(planted["not_published"]["events"]) | set(planted["lost"]["events"])  # type: ignore[call-overload]
    topic = produce(args.bootstrap, n, entities, args.partitions, skip)
    group = f"bench.projector.{uuid.uuid4().hex[:8]}"
    commit_all(args.bootstrap, topic, group)
    setup = time.monotonic() - t0
    load = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            spec = {
                "name": f"bench-causes-{n}",
                "truth": {"url": truth, "table": "stock_levels"},
                "projection": {"url": proj, "table": "stock_view"},
                "key": ["warehouse", "sku"],
                "columns": ["on_hand"],
                "freshness": {"truth_column": "updated_at"},
                "path": {
                    "topic": topic,
                    "consumer_group": group,
                    "bootstrap": args.bootstrap,
                    "window": "24h",
                    "entities": {
                        "each": "$.data.lines[*]",
                        "key": {"warehouse": "$.data.warehouse", "sku": "sku"},
                    },
                    "source": {
                        "table": "shop_outbox",
                        "event_id": "event_id",
                        "payload": "payload",
                        "published": "published_at",
                    },
                    "applied": {"table": "applied_events"},
                    "publish_grace": "1m",
                    "settle": "0s",
                },
            }
            path = Path(tmp) / "spec.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            store = f"sqlite:///{Path(tmp) / 'store.db'}"
            code, doc, wall, cpu, rss, err = run_audit(path, store, dict(os.environ))
    finally:
        if not args.keep:
            _drop(args.pg_url, truth)
            _drop(args.pg_url, proj)
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": args.bootstrap})  # alive until the future resolves
            admin.delete_topics([topic])[topic].result(30)
    if code not in (0, 1) or not doc:
        print(err, file=sys.stderr)
        return 2
    got: dict[str, set[str]] = {c: set() for c in CAUSES}
    for f in doc.get("findings", []):
        got.setdefault(f.get("cause") or "none", set()).add(f["key"]["sku"])
    exact = all(got[c] == planted[c]["entities"] for c in CAUSES) and len(doc["findings"]) == PER_CAUSE * len(
        CAUSES
    )
    read = doc["cut"]["read"]
    row = {
        "events": n,
        "entities": entities,
        "findings": len(doc["findings"]),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(rss),
        "attribution_s": read["seconds"],
        "attribution_cpu_s": read["cpu_seconds"],
        "source_rows": read["source_rows"],
        "messages": read["messages"],
        "events_kept": read["events"],
        "causes_exact": exact,
        "load_avg": round(load, 2),
        "setup_s": round(setup, 1),
    }
    lines = [
        "| " + " | ".join(row) + " |",
        "|" + "---|" * len(row),
        "| " + " | ".join(str(v) for v in row.values()) + " |",
    ]
    table = "\n".join(lines)
    print(table)
    print(f"causes: {doc.get('causes')}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    (out / f"causes-{stamp}.md").write_text(
        f"# bench/causes.py {stamp}\n\n{platform.platform()}, Python {platform.python_version()}\n\n{table}\n"
    )
    if not exact:
        for c in CAUSES:
            want = planted[c]["entities"]
            print(f"{c}: found {len(got[c])}, planted {len(want)}, missed {len(want - got[c])}")  # type: ignore[operator]
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
