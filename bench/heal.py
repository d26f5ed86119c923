"""Benchmark of the healing loop: N findings corrected, relayed to Kafka, applied, verified.

    PYTHONPATH=$PWD .venv/bin/python bench/heal.py --findings 100000

Builds a truth table of N rows and a projection missing all of them (``--drift missing``) or
off on every row (``--drift mismatch``) in two fresh PostgreSQL databases, a third database for
the audit store, a fresh topic and consumer group on the local broker; audits once, then times
each stage on its own, one after the other:

* correct   -- findings -> outbox rows (one store transaction)
* relay     -- outbox -> Kafka (idempotent, acks=all), rows marked sent on delivery
* projector -- the reference projector applying every event to the projection
* verify    -- consumer lag 0, re-audit of the corrected keys, and a final full audit

End to end is the time from the start of ``correct`` to the final audit finding nothing.
Everything it creates carries a uuid suffix and is dropped/deleted at the end. Prints a markdown
table and writes it to ``bench/results/heal-<stamp>.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import resource
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from reconcile.app import Context, Projector, audit, correct, relay, verify
from reconcile.events.kafka import KafkaSettings, consumer_lag, ensure_topic
from reconcile.spec import Spec, spec_from_dict
from reconcile.store import AuditStore

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


def _sa(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def databases(admin_url: str, *prefixes: str) -> Iterator[list[str]]:
    """Fresh PostgreSQL databases (uuid-suffixed), dropped afterwards whatever happens."""
    admin = sa.create_engine(_sa(admin_url), isolation_level="AUTOCOMMIT")
    made: list[str] = []
    try:
        urls = []
        for p in prefixes:
            name = f"bench_{p}_{uuid.uuid4().hex[:10]}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            made.append(name)
            urls.append(sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False))
        yield urls
    finally:
        with admin.connect() as conn:
            for name in made:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def load_tables(truth_url: str, proj_url: str, n: int, drift: str) -> None:
    """Truth: n stock rows. Projection: empty (missing) or every on_hand off by one (mismatch)."""
    import psycopg

    for url, table, key, off in ((truth_url, "stock", "sku", 0), (proj_url, "stock_view", "product_id", 1)):
        with psycopg.connect(url) as conn:
            conn.execute(f"CREATE TABLE {table} ({key} varchar(20) PRIMARY KEY, on_hand integer, title text)")
            if table == "stock_view" and drift == "missing":
                continue
            with conn.cursor().copy(f"COPY {table} ({key}, on_hand, title) FROM STDIN") as cp:
                for i in range(n):
                    cp.write_row((f"S{i:07d}", i + off, f"item {i}"))
            conn.execute(f"ANALYZE {table}")


def make_spec(truth_url: str, proj_url: str, topic: str, group: str) -> Spec:
    return spec_from_dict(
        {
            "name": f"bench-{group}",
            "truth": {"url": truth_url, "table": "stock"},
            "projection": {"url": proj_url, "table": "stock_view"},
            "key": [{"sku": "product_id"}],
            "columns": {"on_hand": {}, "title": {}},
            "correction": {
                "topic": topic,
                "event_type": "StockLevelReconciled",
                "consumer_group": group,
                "transport": "kafka",
                # raised so that the guard lets a benchmark's deliberate total drift through
                "max_ratio": 1.0,
                "max_count": 10**9,
            },
        }
    )


class Timer:
    """Wall time and this process's CPU time (user + system) of named stages, optionally under
    cProfile. The CPU time leaves out the servers' (PostgreSQL, Kafka): on a shared machine it is
    the steadier figure of the client's own work."""

    def __init__(self, profile: set[str]):
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.profile = profile
        self.profiles: dict[str, str] = {}

    def __call__(self, name: str, fn: Callable[[], T]) -> T:
        prof = cProfile.Profile() if name in self.profile else None
        started, cpu = time.perf_counter(), _cpu()
        if prof:
            prof.enable()
        try:
            return fn()
        finally:
            if prof:
                prof.disable()
            self.seconds[name] = time.perf_counter() - started
            self.cpu[name] = _cpu() - cpu
            if prof:
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(30)
                self.profiles[name] = out.getvalue()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine() -> str:
    import confluent_kafka

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, "
        f"confluent-kafka {confluent_kafka.version()} / librdkafka {confluent_kafka.libversion()[0]}"
    )


def table(n: int, t: dict[str, float], extra: dict[str, Any], cpu: dict[str, float] | None = None) -> str:
    def row(stage: str, what: str, events: int | None) -> str:
        s = t[stage]
        rate = f"{events / s:,.0f}" if events and s > 0 else "—"
        c = f"{cpu[stage]:,.2f}" if cpu and stage in cpu else "—"
        return f"| {stage} | {what} | {s:,.2f} | {rate} | {c} |"

    lines = [
        "| stage | what | wall s | events/s | client CPU s |",
        "|---|---|---:|---:|---:|",
        row("audit", "initial full audit (not part of end to end)", n),
        row("correct", "findings -> outbox, one transaction", n),
        row("relay", "outbox -> Kafka, acks=all, marked sent on delivery", n),
        row("projector", "reference projector applies every event", n),
        row("verify", "lag 0 + re-audit corrected keys + final full audit", n),
        row("end_to_end", "start of correct -> verified zero drift", n),
        "",
        f"- findings: {n:,} ({extra['drift']}), topic partitions: {extra['partitions']}, "
        f"relay batch size: {extra['batch_size']:,}",
        f"- peak RSS of the process: {extra['rss']:,.0f} MiB",
        f"- verify: resolved {extra['resolved']:,}, escalated {extra['escalated']:,}; "
        f"final audit findings: {extra['final']}",
        f"- machine: {extra['machine']}",
        f"- load average (1, 5, 15 min): {extra['load']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--findings", type=int, default=100_000)
    p.add_argument("--drift", choices=["missing", "mismatch"], default="missing")
    p.add_argument("--pg", default="postgresql://postgres:postgres@127.0.0.1:5432/postgres")
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="relay batch size (default: relay's)")
    p.add_argument("--profile", default="", help="comma-separated stages to run under cProfile")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/heal-*.md")
    args = p.parse_args(argv)
    n = args.findings
    load_before = os.getloadavg()
    kafka = KafkaSettings(args.bootstrap_servers)
    suffix = uuid.uuid4().hex[:10]
    topic, group = f"bench.heal.{suffix}", f"bench-projector-{suffix}"
    timer = Timer({s for s in args.profile.split(",") if s})
    relay_kw: dict[str, Any] = {"batch_size": args.batch_size} if args.batch_size else {}

    ensure_topic(kafka, topic, partitions=args.partitions)
    try:
        with databases(args.pg, "truth", "proj", "store") as (truth_url, proj_url, store_url):
            print(f"loading {n:,} rows ...", file=sys.stderr)
            load_tables(truth_url, proj_url, n, args.drift)
            spec = make_spec(truth_url, proj_url, topic, group)
            store = AuditStore(store_url)
            ctx = Context.of(store, kafka=kafka)
            try:
                first = timer("audit", lambda: audit(ctx, spec))
                # A run hands back at most 10,000 findings in memory; the summary counts them all.
                found = first.summary.drift
                assert found == n, f"expected {n} findings, audit found {found}"
                print(f"audit: {found:,} findings; correcting ...", file=sys.stderr)
                written = timer("correct", lambda: correct(ctx, spec).written)
                assert written == n, written
                sent = timer("relay", lambda: relay(ctx, spec_name=spec.name, **relay_kw).sent)
                assert sent == n, sent
                print(f"relayed {sent:,}; projecting ...", file=sys.stderr)
                projector = Projector(ctx, spec)
                stats = timer(
                    "projector",
                    lambda: projector.run(
                        idle_timeout_s=30, max_seconds=1800, stop=lambda: projector.stats.applied >= n
                    ),
                )
                projector.close()
                assert stats.applied == n, stats

                def verified() -> tuple[int, int, int]:
                    v = verify(ctx, spec, timeout=timedelta(minutes=5))
                    return v.resolved, v.escalated, audit(ctx, spec).summary.drift

                resolved, escalated, final = timer("verify", verified)
                assert consumer_lag(kafka, group, topic) == 0
            finally:
                ctx.close()
    finally:
        _delete_kafka(kafka, topic, group)

    t = timer.seconds
    t["end_to_end"] = t["correct"] + t["relay"] + t["projector"] + t["verify"]
    cpu = timer.cpu
    cpu["end_to_end"] = cpu["correct"] + cpu["relay"] + cpu["projector"] + cpu["verify"]
    md = table(
        n,
        t,
        {
            "drift": args.drift,
            "partitions": args.partitions,
            "batch_size": args.batch_size or relay.__kwdefaults__["batch_size"],  # type: ignore[index]
            "rss": peak_rss_mib(),
            "resolved": resolved,
            "escalated": escalated,
            "final": final,
            "machine": machine(),
            "load": "before {:.2f} {:.2f} {:.2f}, after ".format(*load_before)
            + "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
        },
        cpu,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    title = f"## heal bench {stamp}: `python bench/heal.py --findings {n}`"
    print(f"{title}\n\n{md}")
    for name, text in timer.profiles.items():
        print(f"\n--- cProfile: {name} ---\n{text}", file=sys.stderr)
    if not args.no_save:
        out = HERE / "results" / f"heal-{stamp}.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(f"{title}\n\n{md}\n")
        print(f"\nwritten to {out.relative_to(HERE.parent)}", file=sys.stderr)
    return 0 if final == 0 and escalated == 0 else 1


def _delete_kafka(kafka: KafkaSettings, topic: str, group: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka.config())
    for fut in admin.delete_topics([topic]).values():
        try:
            fut.result(30)
        except Exception as e:  # noqa: BLE001 - cleanup reports and goes on
            print(f"cleanup: topic {topic}: {e}", file=sys.stderr)
    try:
        for fut in admin.delete_consumer_groups([group]).values():
            fut.result(30)
    except Exception as e:  # noqa: BLE001 - the group exists only if the projector committed
        print(f"cleanup: group {group}: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
