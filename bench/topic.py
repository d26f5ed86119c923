"""Benchmark: a topic as a side. An outbox of N rows against a topic of about N messages.

    .venv/bin/python bench/topic.py --messages 1000000 --runs 3

Builds, in a fresh PostgreSQL database, an outbox table of N rows (``event_id`` text key,
``order_id`` bigint, ``amount`` numeric), and a fresh topic (``--partitions``, default 3) holding
one CloudEvent in binary mode per outbox row (``ce_id`` header, JSON value
``{"order_id": .., "amount": .., "warehouse": .., "lines": [..]}``), except for 100 lost events;
plus 100 phantom events (no outbox row) and 100 events delivered twice. Then it runs
``python -m reconcile audit SPEC --format json --strategy stream`` once as a child process and
reports wall time, the child's CPU time (user + system, all its threads) and peak RSS (both
from ``os.wait4``), messages/s of the topic read (from the run's recorded read stats, and over
the whole wall time), the load average when it started, and whether the audit found exactly the
100 missing, 100 orphan and 100 duplicate events (and nothing else). ``--runs N`` audits the same
data N times (a fresh audit store each time) and adds the best and the median of each measure.

Everything it creates carries a uuid suffix and is dropped/deleted at the end unless --keep.
Prints a markdown table and writes it to ``bench/results/topic-<stamp>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_PG = os.environ.get("RECONCILE_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
DEFAULT_KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
PLANTED = 100  # events of each kind: lost (missing), phantom (orphan), delivered twice (duplicate)


def _sa(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def build_outbox(base_url: str, n: int) -> tuple[str, str]:
    """A fresh database with ``shop_outbox`` of n rows; returns (database name, its URL)."""
    name = f"bench_topic_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(_sa(base_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.make_url(base_url).set(database=name).render_as_string(hide_password=False)
    e = sa.create_engine(_sa(url))
    with e.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE shop_outbox (event_id text PRIMARY KEY, order_id bigint NOT NULL, "
                "amount numeric(12,2) NOT NULL)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO shop_outbox SELECT 'ev-' || lpad(g::text, 9, '0'), g, "
                f"mod(g * 7919, 100000) / 100.0 FROM generate_series(1::bigint, {n}) AS g"
            )
        )
        conn.execute(sa.text("ANALYZE shop_outbox"))
    e.dispose()
    return name, url


def build_topic(
    bootstrap: str, n: int, partitions: int, rng: random.Random
) -> tuple[str, dict[str, set[str]]]:
    """A fresh topic with the outbox's events, minus lost, plus phantoms and duplicates."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"bench.orders.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    ids = list(range(1, n + 1))
    lost = set(rng.sample(ids, PLANTED))
    twice = set(rng.sample([i for i in ids if i not in lost], PLANTED))
    planted = {
        "missing": {f"ev-{i:09d}" for i in lost},
        "duplicate": {f"ev-{i:09d}" for i in twice},
        "orphan": {f"ev-phantom-{i:04d}" for i in range(PLANTED)},
    }
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500000,
        }
    )

    def send(event_id: str, order_id: int) -> None:
        value = json.dumps(
            {
                "order_id": order_id,
                "amount": (order_id * 7919 % 100000) / 100,
                "warehouse": f"W{order_id % 5}",
                "lines": [{"sku": f"SKU-{order_id % 997:04d}", "quantity": 1 + order_id % 3}],
            },
            separators=(",", ":"),
        )
        headers = [
            ("ce_specversion", b"1.0"),
            ("ce_id", event_id.encode()),
            ("ce_type", b"OrderPlaced"),
            ("ce_source", b"shop/order-service"),
            ("content-type", b"application/json"),
        ]
        while True:
            try:
                p.produce(topic, key=str(order_id % 5000), value=value, headers=headers)
                return
            except BufferError:
                p.poll(0.1)

    for i in ids:
        if i in lost:
            continue
        send(f"ev-{i:09d}", i)
        if i in twice:
            send(f"ev-{i:09d}", i)
        if i % 10000 == 0:
            p.poll(0)
    for k in range(PLANTED):
        send(f"ev-phantom-{k:04d}", n + 1 + k)
    assert p.flush(120) == 0
    return topic, planted


def run_audit(spec_path: Path, store: str, env: dict[str, str]) -> tuple[int, dict, float, float, float, str]:  # type: ignore[type-arg]
    cmd = [
        sys.executable,
        "-m",
        "reconcile",
        "audit",
        str(spec_path),
        "--format",
        "json",
        "--strategy",
        "stream",
    ]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**env, "RECONCILE_STORE_URL": store})
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        text = out.read().decode()
        doc = json.loads(text) if text.strip() else {}
        cpu = usage.ru_utime + usage.ru_stime  # every thread of the child, librdkafka's included
        return (
            os.waitstatus_to_exitcode(status),
            doc,
            seconds,
            cpu,
            usage.ru_maxrss / 1024,
            err.read().decode(),
        )


def _summaries(runs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Each run, then (when there are several) the best and the median of each measure."""
    out = [(str(i), r) for i, r in enumerate(runs, 1)]
    if len(runs) < 2:
        return out
    exact = "yes" if all(r["exact"] == "yes" for r in runs) else "NO"
    best = {k: min(r[k] for r in runs) for k in ("load", "wall", "cpu", "read_s", "rss", "spill")}
    median = {k: statistics.median(r[k] for r in runs) for k in best}
    for label, m in (("best", best), ("median", median)):
        out.append((label, {**m, "messages": runs[0]["messages"], "exact": exact}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, nargs="+", default=[1_000_000], help="outbox rows (default 1M)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--pg-url", default=DEFAULT_PG)
    ap.add_argument("--bootstrap", default=DEFAULT_KAFKA)
    ap.add_argument("--keep", action="store_true", help="keep the database and the topic")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--runs", type=int, default=1, help="audits of the same data (best and median shown)")
    args = ap.parse_args()

    rows_out = []
    ok_all = True
    for n in args.messages:
        rng = random.Random(args.seed)
        t0 = time.monotonic()
        db, url = build_outbox(args.pg_url, n)
        topic, planted = build_topic(args.bootstrap, n, args.partitions, rng)
        setup = time.monotonic() - t0
        with tempfile.TemporaryDirectory() as tmp:
            spec = {
                "name": f"bench-topic-{n}",
                "truth": {"url": url, "table": "shop_outbox"},
                "projection": {
                    "topic": topic,
                    "bootstrap": args.bootstrap,
                    "fields": {
                        "event_id": "header:ce_id",
                        "order_id": "$.data.order_id",
                        "amount": "$.data.amount",
                    },
                },
                "key": ["event_id"],
                "columns": ["order_id", "amount"],
            }
            path = Path(tmp) / "spec.yaml"
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            runs: list[dict[str, Any]] = []
            for i in range(1, args.runs + 1):
                load = os.getloadavg()[0]  # the machine is shared: say how busy it was
                # A fresh store per run, so every run is the same first audit of the spec.
                store = f"sqlite:///{tmp}/store-{i}.db"
                code, doc, seconds, cpu, rss, err = run_audit(path, store, dict(os.environ))
                found: dict[str, set[str]] = {}
                for f in doc.get("findings", []):
                    found.setdefault(f["kind"], set()).add(f["key"]["event_id"])
                exact = code == 1 and found == planted
                ok_all &= exact
                read = (doc.get("scope", {}).get("topics", {}).get("projection", {}) or {}).get("read", {})
                runs.append(
                    {
                        "load": load,
                        "wall": seconds,
                        "cpu": cpu,
                        "read_s": read.get("read_seconds", 0.0),
                        "messages": read.get("messages", 0),
                        "rss": rss,
                        "spill": read.get("spill_bytes", 0),
                        "exact": "yes"
                        if exact
                        else f"NO ({ {k: len(v) for k, v in found.items()} }, exit {code})",
                    }
                )
                print(
                    f"n={n:,} run {i}: setup {setup:.1f}s; load {load:.1f}; audit {seconds:.1f}s wall, "
                    f"{cpu:.1f}s cpu, exit {code}; {err.strip()[:300]}",
                    file=sys.stderr,
                )
        for label, r in _summaries(runs):
            messages = r["messages"]
            rows_out.append(
                {
                    "outbox rows": f"{n:,}",
                    "messages": f"{messages:,}",
                    "partitions": args.partitions,
                    "run": label,
                    "load avg": f"{r['load']:.1f}",
                    "wall s": f"{r['wall']:.1f}",
                    "cpu s": f"{r['cpu']:.1f}",
                    "topic read s": f"{r['read_s']:.1f}",
                    "read msg/s": f"{messages / r['read_s']:,.0f}" if r["read_s"] else "-",
                    "msg/s (wall)": f"{messages / r['wall']:,.0f}" if r["wall"] else "-",
                    "peak RSS MB": f"{r['rss']:.0f}",
                    "spill MB": f"{r['spill'] / 2**20:.0f}",
                    "findings exact": r["exact"],
                }
            )
        if not args.keep:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": args.bootstrap})
            admin.delete_topics([topic])[topic].result(30)
            eng = sa.create_engine(_sa(args.pg_url), isolation_level="AUTOCOMMIT")
            with eng.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            eng.dispose()

    cols = list(rows_out[0])
    lines = [
        f"Topic side benchmark, {datetime.now().isoformat(timespec='seconds')} on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
        f"{os.getloadavg()[0]:.1f} at the end)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows_out),
    ]
    table = "\n".join(lines)
    print(table)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"topic-{datetime.now().strftime('%Y%m%d-%H%M%S')}.md").write_text(table + "\n")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
