"""Memory and recording speed with many findings (issue 15, case 7).

    PYTHONPATH=$PWD .venv/bin/python bench/memory.py --findings 200000 [--heal] [--skip-record]
    PYTHONPATH=$PWD .venv/bin/python bench/memory.py --findings 1000000 --record-only

Builds a truth of N rows and an empty projection (every row a `missing` finding) in fresh
PostgreSQL databases, a third one for the audit store, and runs the real CLI in child
processes, each measured on its own (peak RSS from wait4, wall time):

* ``record``  -- store.record_run of N synthetic findings alone, twice (all new, then all seen
  again): findings recorded per second, and the CPU seconds of the recording process and of
  the store database's PostgreSQL backends (from /proc, when the server runs on this host): on
  a loaded machine the wall time says more about the load; the RSS is that of the child
* ``audit``   -- `reconcile audit --format json --strategy stream` (the JSON goes to /dev/null)
* ``correct`` / ``relay`` (with --heal) -- `reconcile correct --force`, `reconcile relay` to Kafka

Everything it creates carries a uuid suffix and is dropped at the end. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

RECORD = """
import sys, time, uuid
from datetime import UTC, datetime
from reconcile.findings import Finding, FindingKind, Summary
from reconcile.store import AuditStore
n, url = int(sys.argv[1]), sys.argv[2]
store = AuditStore(url)
store.migrate()
def seen():
    for i in range(n):
        yield Finding(FindingKind.MISSING, {"sku": f"R{i:08d}"}, truth={"on_hand": i, "title": f"item {i}"})
import os
import sqlalchemy as sa
def server_cpu():  # CPU seconds of this database's backends, when PostgreSQL runs on this host
    with store.engine.connect() as c:
        q = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        pids = c.execute(sa.text(q)).scalars()
        total = 0.0
        for pid in pids:
            try:
                f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                return float("nan")
            total += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return total
took = []
for _ in range(2):  # first every finding is new, then every one is seen again
    s0 = server_cpu()
    t0, c0 = time.monotonic(), time.process_time()
    store.record_run(run_id=str(uuid.uuid4()), spec="bench-record", started_at=datetime.now(UTC),
        finished_at=datetime.now(UTC), strategy="stream", scope={"keys": None, "where": None},
        summary=Summary(compared=n), seen=seen(), clean=set(), pending=set(), resolve_unseen=True,
        confirm_runs=1)
    took += [time.monotonic() - t0, time.process_time() - c0, server_cpu() - s0]
print(" ".join(f"{t:.3f}" for t in took))
"""

# --heal-only: the audit's N `missing` findings of the bench spec, recorded directly (a 1M audit
# takes minutes; correct and relay only need the latest run's open findings)
RECORD_FOR_HEAL = """
import sys, uuid
from datetime import UTC, datetime
from reconcile.findings import Finding, FindingKind, Summary
from reconcile.store import AuditStore
n, url = int(sys.argv[1]), sys.argv[2]
store = AuditStore(url)
store.record_run(run_id=str(uuid.uuid4()), spec="bench-memory", started_at=datetime.now(UTC),
    finished_at=datetime.now(UTC), strategy="stream", scope={"keys": None, "where": None},
    summary=Summary(compared=n), clean=set(), pending=set(), resolve_unseen=True, confirm_runs=1,
    seen=(Finding(FindingKind.MISSING, {"sku": f"S{i:08d}"}, truth={"on_hand": i, "title": f"item {i}"})
          for i in range(1, n + 1)))
"""


def _sa(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str, int]:
    """(wall seconds, peak RSS MiB, exit code, start of stdout, bytes of stdout) of one child.

    The peak is the child's own VmHWM (/proc/<pid>/status, read every 0.1 s): wait4's ru_maxrss
    also counts the high-water mark of the memory the child was forked from, i.e. this process,
    which after reading an audit's JSON of 1M findings is far larger than a relay. Stdout is
    counted as it comes and only its first MiB kept, for the same reason.
    """
    import threading

    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_kib = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak_kib
        while not done.is_set():
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    err_chunks: list[str] = []
    drain = threading.Thread(
        target=lambda: err_chunks.append(p.stderr.read() if p.stderr else ""), daemon=True
    )
    drain.start()
    head, size = "", 0
    assert p.stdout is not None
    while chunk := p.stdout.read(1 << 20):
        size += len(chunk)
        if len(head) < 1 << 20:
            head += chunk[: (1 << 20) - len(head)]
    _, status, usage = os.wait4(p.pid, 0)
    done.set()
    watcher.join()
    drain.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in (0, 1):
        print("".join(err_chunks), file=sys.stderr)
    peak = peak_kib / 1024 if peak_kib else usage.ru_maxrss / 1024
    return time.monotonic() - t0, peak, p.returncode, head, size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--findings", type=int, default=200_000)
    ap.add_argument(
        "--pg",
        default=os.environ.get(
            "RECONCILE_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
        ),
    )
    ap.add_argument(
        "--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    ap.add_argument("--heal", action="store_true", help="also time correct and relay (needs Kafka)")
    ap.add_argument(
        "--skip-record",
        action="store_true",
        help="leave out the record stage (2N synthetic findings): for a heal of 1M in less time",
    )
    ap.add_argument(
        "--heal-only",
        action="store_true",
        help="only correct and relay (implies --heal, --skip-record): the audit's findings are "
        "recorded directly instead of audited",
    )
    ap.add_argument(
        "--record-only",
        action="store_true",
        help="only the record stage (store.record_run of N new, then N seen-again findings)",
    )
    a = ap.parse_args(argv)
    if a.record_only and (a.heal or a.skip_record or a.heal_only):
        ap.error("--record-only leaves out every other stage")
    if a.heal_only:
        a.heal = a.skip_record = True
    n = a.findings
    load_before = os.getloadavg()
    admin = sa.create_engine(_sa(a.pg), isolation_level="AUTOCOMMIT")
    names = [f"bench_{p}_{uuid.uuid4().hex[:8]}" for p in ("truth", "proj", "store")]
    with admin.connect() as c:
        for name in names:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    truth, proj, store = (
        str(sa.make_url(a.pg).set(database=name).render_as_string(hide_password=False)) for name in names
    )
    topic = f"bench.memory.{uuid.uuid4().hex[:8]}"
    rows: list[tuple[str, float, float, str]] = []
    try:
        e = sa.create_engine(_sa(truth))
        with e.begin() as c:
            c.execute(
                sa.text(
                    "CREATE TABLE stock AS SELECT 'S' || lpad(i::text, 8, '0') AS sku, i AS on_hand, "
                    "'item ' || i AS title FROM generate_series(1, :n) i"
                ),
                {"n": n},
            )
            c.execute(sa.text("ALTER TABLE stock ADD PRIMARY KEY (sku)"))
        e.dispose()
        e = sa.create_engine(_sa(proj))
        with e.begin() as c:
            c.execute(sa.text("CREATE TABLE stock_view (product_id text, on_hand int, title text)"))
        e.dispose()
        spec = Path(f"/tmp/{topic}.yaml")
        spec.write_text(
            f"name: bench-memory\ntruth: {{url: '{truth}', table: stock}}\n"
            f"projection: {{url: '{proj}', table: stock_view}}\nkey: [{{sku: product_id}}]\n"
            f"columns: [on_hand, title]\ncorrection: {{topic: {topic}, event_type: StockLevelReconciled, "
            f"max_ratio: 1.0, max_count: {n * 2}}}\n"
        )
        env = {
            **os.environ,
            "RECONCILE_STORE_URL": store,
            "PYTHONPATH": str(ROOT),
            "KAFKA_BOOTSTRAP_SERVERS": a.bootstrap_servers,
        }
        py = [sys.executable]
        if not a.skip_record:
            wall, rss, code, out, _ = run_child([*py, "-c", RECORD, str(n), store], env)
            new, new_cpu, new_server, again, again_cpu, again_server = (
                float(t) for t in (out.split() or ["nan"] * 6)
            )
            rows.append(
                (
                    "record new",
                    new,
                    rss,
                    f"{n / new:,.0f} findings/s (CPU of this process {new_cpu:.1f} s, "
                    f"of its PostgreSQL backends {new_server:.1f} s): all new",
                )
            )
            rows.append(
                (
                    "record again",
                    again,
                    rss,
                    f"{n / again:,.0f} findings/s (CPU {again_cpu:.1f} s, "
                    f"backends {again_server:.1f} s): all seen again",
                )
            )
        cli = [*py, "-m", "reconcile"]
        if a.record_only:
            pass
        elif a.heal_only:
            wall, rss, code, out, _ = run_child([*py, "-c", RECORD_FOR_HEAL, str(n), store], env)
            assert code == 0, code
            rows.append(("findings recorded", wall, rss, f"{n:,} `missing` findings of the spec, no audit"))
        else:
            wall, rss, code, out, size = run_child(
                [*cli, "audit", str(spec), "--format", "json", "--strategy", "stream"], env
            )
            assert code == 1, code
            rows.append(("audit", wall, rss, f"{n:,} findings, JSON of {size / 2**20:,.0f} MiB printed"))
        if a.heal:
            from reconcile.events.kafka import KafkaSettings, ensure_topic

            ensure_topic(KafkaSettings(a.bootstrap_servers), topic)
            wall, rss, code, out, _ = run_child(
                [*cli, "correct", str(spec), "--force", "--format", "json"], env
            )
            rows.append(
                ("correct", wall, rss, f"exit {code}, {n / wall:,.0f} events/s (process start included)")
            )
            wall, rss, code, out, _ = run_child([*cli, "relay", "--spec", str(spec), "--format", "json"], env)
            rows.append(
                ("relay", wall, rss, f"exit {code}, {n / wall:,.0f} events/s (process start included)")
            )
        spec.unlink()
    finally:
        with admin.connect() as c:
            for name in names:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        if a.heal:
            try:
                from confluent_kafka.admin import AdminClient

                AdminClient({"bootstrap.servers": a.bootstrap_servers}).delete_topics([topic])[topic].result(
                    30
                )
            except Exception:  # noqa: BLE001,S110 - best effort
                pass
    print(f"\n{n:,} findings\n\n| stage | wall s | peak RSS MiB | note |\n|---|---:|---:|---|")
    for stage, secs, rss, note in rows:
        print(f"| {stage} | {secs:.2f} | {rss:,.0f} | {note} |")
    print("\nload average (1, 5, 15 min): before {:.2f} {:.2f} {:.2f}, ".format(*load_before), end="")
    print("after {:.2f} {:.2f} {:.2f} ({} CPUs)".format(*os.getloadavg(), os.cpu_count()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
