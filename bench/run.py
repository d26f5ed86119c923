"""Benchmark: `reconcile audit` against `reladiff` and the scan bound, per engine pairing.

For each row count and each pairing (``--engines``: ``pg`` both tables on PostgreSQL,
``mariadb`` both on MariaDB, ``pg-mariadb`` truth on PostgreSQL and projection on MariaDB),
builds a truth table and a projection table in two fresh databases (unique names, dropped
afterwards unless --keep) with 100 missing, 100 orphan and 100 mismatched keys scattered over
the key range, warms the cache, then measures, in the same run and on the same tables:

* the **scan bound**: both tables scanned and row-hashed by the database itself, concurrently
  (two connections, each ``SELECT sum(hashtext(id::text||'|'||customer::text||...))`` on
  PostgreSQL, ``SUM(CRC32(CONCAT_WS('|', id, customer, ...)))`` on MariaDB, at once): what
  reading and hashing every row costs, with nothing sent back;
* ``reconcile audit`` and ``reladiff``, each as a child process: wall time, rows/s (both
  tables), the child's peak RSS and whether it found exactly the 300 planted keys.

``--repeat N`` measures the three N times (the machine may be shared: compare within a round).
Prints a markdown table and writes it to bench/results/.

reladiff pins older drivers, so it lives in its own virtualenv (bench/.venv-reladiff, made here
on first use). Run with the project's venv: ``make bench`` (1M and 5M rows on PostgreSQL, 1M on
the MariaDB and cross-engine pairings), ``.venv/bin/python bench/run.py --big`` (also 20M) or
``--rows N [N ...] --engines pg mariadb pg-mariadb``.
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
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RELADIFF_VENV = HERE / ".venv-reladiff"
RELADIFF_PIN = "reladiff[postgresql,mysql]==0.6.0"
DEFAULT_PG = os.environ.get("RECONCILE_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
DEFAULT_MYSQL = os.environ.get("RECONCILE_TEST_MYSQL_URL", "mysql://reconcile:reconcile@127.0.0.1:3306/mysql")
ENGINES = ("pg", "mariadb", "pg-mariadb")  # truth engine - projection engine
MARIADB_ROWS = [1_000_000]  # the MariaDB pairings' default sizes (MariaDB builds tables slower)
PLANTED = 100  # keys of each kind: missing, orphan, mismatch
COLUMNS = ("customer", "amount", "status")
DEFAULT_ROWS = [1_000_000, 5_000_000]
BIG_ROWS = 20_000_000
BOUND_SQL = "SELECT sum(hashtext(id::text || '|' || {cols})) FROM {table}".format(
    cols=" || '|' || ".join(f"{c}::text" for c in COLUMNS), table="{table}"
)

TABLE_SQL = """
CREATE TABLE {name} (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL,
    updated_at timestamp NOT NULL
);
INSERT INTO {name}
SELECT g, 'customer-' || mod(g, 50000), mod(g * 7919, 1000000) / 100.0,
       (ARRAY['new', 'paid', 'shipped', 'delivered'])[1 + mod(g, 4)],
       timestamp '2026-01-01' + make_interval(secs => mod(g, 86400))
FROM generate_series(1::bigint, {rows}) AS g;
"""

# The same rows on MariaDB (its SEQUENCE engine's seq_1_to_N stands for generate_series).
MARIADB_TABLE_SQL = [
    """CREATE TABLE {name} (
    id bigint PRIMARY KEY, customer varchar(40) NOT NULL, amount decimal(12, 2) NOT NULL,
    status varchar(20) NOT NULL, updated_at datetime NOT NULL)""",
    """INSERT INTO {name}
SELECT seq, CONCAT('customer-', MOD(seq, 50000)), MOD(seq * 7919, 1000000) / 100.0,
       ELT(1 + MOD(seq, 4), 'new', 'paid', 'shipped', 'delivered'),
       TIMESTAMP '2026-01-01 00:00:00' + INTERVAL MOD(seq, 86400) SECOND
FROM seq_1_to_{rows}""",
]
MARIADB_BOUND_SQL = "SELECT SUM(CRC32(CONCAT_WS('|', id, customer, amount, status))) FROM {table}"


@dataclass
class Measure:
    tool: str
    rows: int
    seconds: float
    peak_rss_mb: float | None  # None: not a child process of ours (the scan bound)
    found: int | None  # None: finds nothing (the scan bound)
    exact: bool
    note: str = ""
    round: int = 1
    engines: str = "pg"  # truth-projection engines: pg, mariadb, pg-mariadb


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str, float, float]:
    """Run one child; return (exit code, stdout, stderr, wall seconds, peak RSS MB of that child)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        rss_kb = usage.ru_maxrss  # kilobytes on Linux
        return proc.returncode, out.read().decode(), err.read().decode(), seconds, rss_kb / 1024


def ensure_reladiff() -> Path:
    exe = RELADIFF_VENV / "bin" / "reladiff"
    pin = RELADIFF_VENV / "pin.txt"  # what was installed: a venv made for an older pin is redone
    if not exe.exists() or not pin.exists() or pin.read_text().strip() != RELADIFF_PIN:
        print(f"creating {RELADIFF_VENV.relative_to(ROOT)} with {RELADIFF_PIN} ...", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(RELADIFF_VENV)], check=True)
        pip = RELADIFF_VENV / "bin" / "pip"
        subprocess.run([str(pip), "install", "-q", RELADIFF_PIN], check=True)
        pin.write_text(RELADIFF_PIN + "\n")
    return exe


@dataclass
class Server:
    """One database server the bench builds tables on: PostgreSQL or MariaDB."""

    kind: str  # "pg" or "mariadb"
    url: str  # a maintenance database's URL

    def db_url(self, db: str, driver: str | None = None) -> str:
        default = "postgresql" if self.kind == "pg" else "mysql"
        u = sa.make_url(self.url).set(drivername=driver or default, database=db)
        return u.render_as_string(hide_password=False)

    def engine(self, db: str | None = None, **kw: Any) -> sa.Engine:
        driver = "postgresql+psycopg" if self.kind == "pg" else "mysql+pymysql"
        url = self.db_url(db, driver) if db else sa.make_url(self.url).set(drivername=driver)
        return sa.create_engine(url, **kw)

    def create(self, db: str) -> None:
        e = self.engine(isolation_level="AUTOCOMMIT")
        with e.connect() as conn:
            conn.exec_driver_sql(
                f'CREATE DATABASE "{db}"' if self.kind == "pg" else f"CREATE DATABASE `{db}`"
            )
        e.dispose()

    def drop(self, db: str) -> None:
        e = self.engine(isolation_level="AUTOCOMMIT")
        with e.connect() as conn:
            if self.kind == "pg":
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{db}`")
        e.dispose()

    def table(self, db: str, name: str, rows: int, drift: list[tuple[str, set[int]]]) -> None:
        """The bench table, with ``drift``: ("delete" or "bump", ids) in that order."""
        e = self.engine(db)
        ids_sql = "= ANY(:ids)" if self.kind == "pg" else "IN :ids"
        with e.begin() as conn:
            for sql in [TABLE_SQL] if self.kind == "pg" else MARIADB_TABLE_SQL:
                conn.exec_driver_sql(sql.format(name=name, rows=rows))
            for op, ids in drift:
                stmt = (
                    f"DELETE FROM {name} WHERE id {ids_sql}"
                    if op == "delete"
                    else f"UPDATE {name} SET amount = amount + 1 WHERE id {ids_sql}"
                )
                param = sa.bindparam("ids", sorted(ids), expanding=self.kind != "pg")
                conn.execute(sa.text(stmt).bindparams(param))
        with e.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {name}" if self.kind == "pg" else f"ANALYZE TABLE {name}")
            conn.exec_driver_sql(f"SELECT count(*) FROM {name}")  # warm the cache
            if self.kind == "mariadb":
                conn.exec_driver_sql(f"SELECT sum(length(customer) + length(status)) FROM {name}")
        e.dispose()


def servers(engines: str, pg: str, mysql: str) -> tuple[Server, Server]:
    truth, _, proj = engines.partition("-")
    url = {"pg": pg, "mariadb": mysql}
    return Server(truth, url[truth]), Server(proj or truth, url[proj or truth])


def build(pair: tuple[Server, Server], rows: int, suffix: str) -> tuple[str, str, dict[str, set[int]]]:
    """Create both databases and tables; plant the drift; return the URLs and the planted keys."""
    truth_db, proj_db = f"bench_truth_{suffix}", f"bench_proj_{suffix}"
    for server, db in zip(pair, (truth_db, proj_db), strict=True):
        server.create(db)
    rng = random.Random(rows)
    picked = rng.sample(range(1, rows + 1), 3 * PLANTED)
    planted = {
        "missing": set(picked[:PLANTED]),  # deleted from the projection
        "orphan": set(picked[PLANTED : 2 * PLANTED]),  # deleted from the truth
        "mismatch": set(picked[2 * PLANTED :]),  # a different amount in the projection
    }
    pair[0].table(truth_db, "orders", rows, [("delete", planted["orphan"])])
    pair[1].table(
        proj_db, "orders_view", rows, [("delete", planted["missing"]), ("bump", planted["mismatch"])]
    )
    return pair[0].db_url(truth_db), pair[1].db_url(proj_db), planted


def drop(pair: tuple[Server, Server], suffix: str) -> None:
    for server, db in zip(pair, (f"bench_truth_{suffix}", f"bench_proj_{suffix}"), strict=True):
        server.drop(db)


def scan_bound(
    pair: tuple[Server, Server], truth: str, proj: str, rows: int, parallel: bool = False
) -> Measure:
    """Both tables scanned and row-hashed by their databases themselves, at once (one connection each).

    Serial by default (one backend per table, as reconcile's own scans run); ``parallel`` leaves
    PostgreSQL's parallel workers on (its defaults), which on a shared machine also takes a
    bigger share of the CPUs.
    """
    engines = [s.engine(sa.make_url(url).database) for s, url in zip(pair, (truth, proj), strict=True)]
    conns = [e.connect() for e in engines]  # connected before the clock starts
    if not parallel:
        for s, c in zip(pair, conns, strict=True):
            if s.kind == "pg":
                c.exec_driver_sql("SET max_parallel_workers_per_gather = 0")
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def scan(conn: sa.Connection, table: str, kind: str) -> None:
        start.wait()
        try:
            conn.exec_driver_sql(
                (BOUND_SQL if kind == "pg" else MARIADB_BOUND_SQL).format(table=table)
            ).scalar()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=scan, args=(c, t, s.kind))
        for c, t, s in zip(conns, ("orders", "orders_view"), pair, strict=True)
    ]
    for t in threads:
        t.start()
    note = load()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    for c in conns:
        c.close()
    for e in engines:
        e.dispose()
    if errors:
        raise errors[0]
    tool = "scan bound, parallel" if parallel else "scan bound"
    how = "PostgreSQL's parallel workers on" if parallel else "one backend per table"
    hashes = " / ".join(
        dict.fromkeys("sum(hashtext(row))" if s.kind == "pg" else "SUM(CRC32(row))" for s in pair)
    )
    return Measure(tool, rows, seconds, None, None, True, f"{hashes}, 2 connections, {how}; {note}")


SPEC = """name: bench
truth: {{url: "{truth}", table: orders}}
projection: {{url: "{proj}", table: orders_view}}
key: [id]
columns: [customer, amount, status]
"""


def run_reconcile(truth: str, proj: str, rows: int, planted: dict[str, set[int]], work: Path) -> Measure:
    spec = work / "bench.yaml"
    spec.write_text(SPEC.format(truth=truth, proj=proj))
    store = f"sqlite:///{work / f'store-{rows}.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "reconcile", "audit", str(spec), "--format", "json", "--no-progress"]
    note = load()
    code, out, err, seconds, rss = run_child([*cmd, "--store", store], env)
    if code not in (0, 1):
        return Measure("reconcile", rows, seconds, rss, -1, False, err.strip().splitlines()[-1][:80])
    doc = json.loads(out)
    got = {kind: {f["key"]["id"] for f in doc["findings"] if f["kind"] == kind} for kind in planted}
    found = len(doc["findings"])
    exact = got == planted and found == 3 * PLANTED
    return Measure("reconcile", rows, seconds, rss, found, exact, f"strategy {doc.get('strategy')}; {note}")


def run_reladiff(
    exe: Path, truth: str, proj: str, rows: int, planted: dict[str, set[int]], threads: int = 1
) -> Measure:
    cols = [a for c in COLUMNS for a in ("-c", c)]
    cmd = [str(exe), truth, "orders", proj, "orders_view", "-k", "id", *cols, "--json", "-j", str(threads)]
    tool = "reladiff" if threads == 1 else f"reladiff -j {threads}"
    note = load()
    code, out, err, seconds, rss = run_child(cmd)
    if code != 0:
        return Measure(tool, rows, seconds, rss, -1, False, err.strip().splitlines()[-1][:80])
    signs: dict[int, set[str]] = {}
    for line in out.splitlines():
        if line.strip():
            sign, values = json.loads(line)  # ["-", ["id", ...]]: "-" only in truth, "+" only in projection
            signs.setdefault(int(values[0]), set()).add(sign)
    got = {
        "missing": {k for k, s in signs.items() if s == {"-"}},
        "orphan": {k for k, s in signs.items() if s == {"+"}},
        "mismatch": {k for k, s in signs.items() if s == {"-", "+"}},
    }
    exact = got == planted and len(signs) == 3 * PLANTED
    what = "1 thread" if threads == 1 else f"{threads} threads"
    return Measure(tool, rows, seconds, rss, len(signs), exact, f"hashdiff, {what} per database; {note}")


def table(results: list[Measure], summary: bool = True) -> str:
    rounds = max((m.round for m in results), default=1) > 1
    lines = [
        "| engines | rows per table |" + (" round |" if rounds else "") + " tool | wall s "
        "| rows/s (both tables) | peak RSS MB | keys found | exactly the 300 | note |",
        "|---|---:|" + ("---:|" if rounds else "") + "---|---:|---:|---:|---:|:---:|---|",
    ]
    for m in results:
        rate = 2 * m.rows / m.seconds if m.seconds else 0
        rss = f"{m.peak_rss_mb:.0f}" if m.peak_rss_mb is not None else "—"
        found = str(m.found) if m.found is not None else "—"
        exact = "—" if m.found is None else ("yes" if m.exact else "NO")
        lines.append(
            f"| {m.engines} | {m.rows:,} |"
            + (f" {m.round} |" if rounds else "")
            + f" {m.tool} | {m.seconds:.1f} | "
            f"{rate:,.0f} | {rss} | {found} | {exact} | {m.note} |"
        )
    if not summary:
        return "\n".join(lines)
    by_round: dict[tuple[str, int, int], dict[str, float]] = {}
    for m in results:
        by_round.setdefault((m.engines, m.rows, m.round), {})[m.tool] = m.seconds
    lines.append("")
    for (engines, rows, rnd), t in by_round.items():
        rc = t.get("reconcile")
        if not rc:
            continue
        parts = []
        if "scan bound" in t:
            parts.append(f"{rc / t['scan bound']:.2f}x the scan bound")
        if "scan bound, parallel" in t:
            parts.append(f"{rc / t['scan bound, parallel']:.2f}x the parallel one")
        for tool, secs in t.items():
            if tool.startswith("reladiff"):
                parts.append(f"{secs / rc:.1f}x faster than {tool}")
        label = f"{engines}, {rows:,} rows" + (f", round {rnd}" if rounds else "")
        lines.append(f"{label}: reconcile takes " + ", ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=None, help="rows per table (default 1M 5M)")
    ap.add_argument("--big", action="store_true", help=f"also {BIG_ROWS:,} rows per table")
    ap.add_argument("--repeat", type=int, default=1, help="measure each size this many times")
    ap.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server (a maintenance database URL)")
    ap.add_argument("--mysql-url", default=DEFAULT_MYSQL, help="MariaDB/MySQL server (any database's URL)")
    ap.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        default=list(ENGINES),
        help="pairings, truth-projection (default all; MariaDB ones at 1M unless --rows)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the databases (their names are printed)")
    ap.add_argument("--no-reladiff", action="store_true", help="time reconcile and the scan bound alone")
    ap.add_argument(
        "--reladiff-threads", type=int, nargs="+", default=[1], help="reladiff -j values to time (default 1)"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the markdown table")
    args = ap.parse_args(argv)

    def sizes(engines: str) -> list[int]:
        base = args.rows or (DEFAULT_ROWS if engines == "pg" else MARIADB_ROWS)
        return list(base) + ([BIG_ROWS] if args.big else [])

    exe = None if args.no_reladiff else ensure_reladiff()
    versions = []
    for engines in args.engines:
        for server in dict.fromkeys(s.kind for s in servers(engines, args.pg_url, args.mysql_url)):
            e = Server(server, args.pg_url if server == "pg" else args.mysql_url).engine()
            with e.connect() as conn:
                if server == "pg":
                    version = conn.exec_driver_sql("SHOW server_version").scalar()
                    buffers = conn.exec_driver_sql("SHOW shared_buffers").scalar()
                    versions.append(f"PostgreSQL {version} (shared_buffers {buffers})")
                else:
                    version = conn.exec_driver_sql("SELECT VERSION()").scalar()
                    pool = conn.exec_driver_sql("SELECT @@innodb_buffer_pool_size").scalar()
                    versions.append(f"MariaDB {version} (innodb_buffer_pool_size {int(pool) >> 20} MB)")
            e.dispose()
    results: list[Measure] = []
    with tempfile.TemporaryDirectory(prefix="reconcile-bench-") as tmp:
        for engines, rows in [(e, n) for e in args.engines for n in sizes(e)]:
            pair = servers(engines, args.pg_url, args.mysql_url)
            suffix = f"{rows}_{uuid.uuid4().hex[:8]}"
            t0 = time.monotonic()
            print(f"building {rows:,} rows per table on {engines} (suffix {suffix}) ...", flush=True)
            try:
                truth, proj, planted = build(pair, rows, suffix)
                print(f"  built in {time.monotonic() - t0:.1f} s", flush=True)
                for rnd in range(1, args.repeat + 1):
                    got = [scan_bound(pair, truth, proj, rows)]
                    if "pg" in (pair[0].kind, pair[1].kind):
                        got.append(scan_bound(pair, truth, proj, rows, parallel=True))
                    got.append(run_reconcile(truth, proj, rows, planted, Path(tmp)))
                    if exe is not None:
                        got += [
                            run_reladiff(exe, truth, proj, rows, planted, j) for j in args.reladiff_threads
                        ]
                    for m in got:
                        m.round, m.engines = rnd, engines
                        results.append(m)
                        print(f"  round {rnd}: {table([m], summary=False).splitlines()[-1]}", flush=True)
            finally:
                if args.keep:
                    print(f"  kept databases bench_truth_{suffix}, bench_proj_{suffix}")
                else:
                    drop(pair, suffix)
    report = table(results)
    header = (
        f"# reconcile vs reladiff and the scan bound, {datetime.now():%Y-%m-%d %H:%M}\n\n"
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{', '.join(dict.fromkeys(versions))}; every database on this host; warm cache.\n\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{datetime.now():%Y%m%d-%H%M%S}.md"
    path.write_text(header + report + "\n")
    print("\n" + header + report + f"\n\nwritten to {path}")
    return 0 if all(m.exact for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
