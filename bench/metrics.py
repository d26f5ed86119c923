"""Benchmark of one /metrics scrape over a large PostgreSQL audit store.

    PYTHONPATH=$PWD .venv/bin/python bench/metrics.py --specs 100 --runs 10000 --findings 100000

Builds a fresh PostgreSQL database (``bench_metrics_<uuid>``, dropped afterwards unless
``--keep``) holding an audit store with SPECS specs, RUNS runs (spread evenly over the specs,
hourly), FINDINGS findings (80% resolved with a time to heal, 10% open, 5% correcting, 5%
acknowledged; kinds mixed) and an outbox of two events per resolved or correcting finding (5%
unsent), ANALYZEd. Then times, after one warm-up each:

* snapshot, histograms recounted -- the use case behind /metrics
  (:func:`reconcile.app.metrics.snapshot`) with no cache: every resolved finding scanned
* snapshot -- the same as the server runs it: time-to-heal histograms from its cache (a spec
  is recounted only when it has a new run; none has, between these scrapes)
* snapshot + text -- and the Prometheus text (prometheus_client), in-process
* http     -- ``GET /metrics`` from a live ``reconcile serve`` (uvicorn) over loopback

Spec files are not loaded (the specs are known from the store), so no projector lag is read:
lag is one broker call per spec and is cached by the server. Prints a markdown table (median,
p95, max of ``--scrapes`` scrapes) and writes it to ``bench/results/metrics-<stamp>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from reconcile.app import Context  # noqa: E402
from reconcile.app.metrics import HealCache, snapshot  # noqa: E402
from reconcile.serve import ServeSettings  # noqa: E402
from reconcile.serve.metrics import render  # noqa: E402
from reconcile.store import AuditStore  # noqa: E402
from reconcile.store.schema import findings as F  # noqa: E402
from reconcile.store.schema import outbox as O  # noqa: E402
from reconcile.store.schema import runs as R  # noqa: E402

KINDS = ("missing", "orphan", "mismatch", "duplicate")


def _sa(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def build(url: str, specs: int, runs: int, findings: int, seed: int = 7) -> dict[str, int]:
    """Fill the store at ``url``; returns the row counts."""
    rnd = random.Random(seed)
    store = AuditStore(url)
    store.migrate()
    engine = store.engine
    now = datetime.now(UTC)
    names = [f"spec-{i:03d}" for i in range(specs)]
    run_rows, finding_rows, outbox_rows = [], [], []
    per_spec_runs = max(runs // specs, 1)
    for name in names:
        for j in range(per_spec_runs):
            started = now - timedelta(hours=per_spec_runs - j)
            drift = rnd.random() < 0.3
            run_rows.append(
                {
                    "id": str(uuid.uuid4()),
                    "spec": name,
                    "started_at": started,
                    "finished_at": started + timedelta(seconds=rnd.uniform(0.5, 40)),
                    "status": "drift" if drift else "clean",
                    "strategy": "stream",
                    "scope": {"keys": None, "where": None, "started_by": "schedule"},
                    "summary": {
                        "compared": 100_000,
                        "pending": rnd.randint(0, 20),
                        **{k: (rnd.randint(0, 30) if drift else 0) for k in KINDS},
                    },
                }
            )
    per_spec_findings = max(findings // specs, 1)
    fid = 0
    for name in names:
        for j in range(per_spec_findings):
            fid += 1
            r = rnd.random()
            status = (
                "resolved" if r < 0.8 else "open" if r < 0.9 else "correcting" if r < 0.95 else "acknowledged"
            )
            first = now - timedelta(hours=rnd.uniform(1, 24 * per_spec_runs / 24))
            resolved = first + timedelta(seconds=rnd.expovariate(1 / 900)) if status == "resolved" else None
            finding_rows.append(
                {
                    "id": fid,
                    "spec": name,
                    "key_id": json.dumps({"sku": f"S{j:06d}"}),
                    "entity_key": {"sku": f"S{j:06d}"},
                    "kind": rnd.choice(KINDS),
                    "columns": ["on_hand"],
                    "truth": {"on_hand": j},
                    "projection": {"on_hand": j + 1},
                    "copies": 1,
                    "status": status,
                    "times_seen": rnd.randint(1, 5),
                    "first_seen": first,
                    "last_seen": resolved or now,
                    "first_run_id": "r",
                    "last_run_id": "r",
                    "resolved_at": resolved,
                    "note": None,
                }
            )
            if status in ("resolved", "correcting"):
                for k in range(2):
                    created = first + timedelta(seconds=30 * (k + 1))
                    outbox_rows.append(
                        {
                            "event_id": uuid.uuid4().hex,
                            "spec": name,
                            "run_id": "r",
                            "finding_id": fid,
                            "topic": f"{name}.reconciled",
                            "transport": "kafka",
                            "message_key": f"S{j:06d}",
                            "headers": {},
                            "payload": "{}",
                            "created_at": created,
                            "sent_at": None if rnd.random() < 0.05 else created + timedelta(seconds=2),
                            "attempts": 1,
                        }
                    )
    with engine.begin() as conn:
        for table, rows in ((R, run_rows), (F, finding_rows), (O, outbox_rows)):
            for i in range(0, len(rows), 20_000):
                conn.execute(table.insert(), rows[i : i + 20_000])
        for t in ("reconcile_runs", "reconcile_findings", "reconcile_outbox"):
            conn.execute(sa.text(f"ANALYZE {t}"))
    store.dispose()
    return {"specs": specs, "runs": len(run_rows), "findings": len(finding_rows), "outbox": len(outbox_rows)}


def timed(fn: Callable[[], object], n: int) -> list[float]:
    fn()  # warm-up: connections, statement caches, imports
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--pg-url",
        default=os.environ.get(
            "RECONCILE_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
        ),
    )
    ap.add_argument("--specs", type=int, default=100)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--findings", type=int, default=100_000)
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the database")
    args = ap.parse_args()

    admin = sa.create_engine(_sa(args.pg_url), isolation_level="AUTOCOMMIT")
    db = f"bench_metrics_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    url = sa.make_url(args.pg_url).set(database=db).render_as_string(hide_password=False)
    try:
        t0 = time.perf_counter()
        counts = build(url, args.specs, args.runs, args.findings)
        built = time.perf_counter() - t0
        print(f"built {counts} in {built:.1f}s", file=sys.stderr)

        ctx = Context(store_url=url)
        cache = HealCache()
        snap = snapshot(ctx, lag=False)
        body = render(snap)
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        rows = {
            "snapshot, histograms recounted": timed(lambda: snapshot(ctx, lag=False), args.scrapes),
            "snapshot": timed(lambda: snapshot(ctx, lag=False, heal_cache=cache), args.scrapes),
            "snapshot + text": timed(
                lambda: render(snapshot(ctx, lag=False, heal_cache=cache)), args.scrapes
            ),
        }
        sys.path.insert(0, str(HERE.parent / "tests"))
        from tests.serve_support import get, live_server

        with live_server(ServeSettings(store_url=url, specs=(str(HERE / "no-specs"),))) as base:
            rows["http"] = timed(lambda: get(base + "/metrics", timeout=30), args.scrapes)
        ctx.close()
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    lines = [
        f"/metrics over a PostgreSQL store: {counts['specs']} specs, {counts['runs']:,} runs, "
        f"{counts['findings']:,} findings, {counts['outbox']:,} outbox rows; {series:,} series, "
        f"{len(body):,} bytes per scrape; {args.scrapes} scrapes after a warm-up "
        f"({platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f})",
        "",
        "| what | median ms | p95 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for what, ms in rows.items():
        p95 = statistics.quantiles(ms, n=20)[-1] if len(ms) >= 2 else ms[0]
        lines.append(f"| {what} | {statistics.median(ms):.0f} | {p95:.0f} | {max(ms):.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"metrics-{stamp}.md").write_text(text)
    return 0 if statistics.median(rows["http"]) < 300 else 1


if __name__ == "__main__":
    raise SystemExit(main())
