"""Benchmark: `reconcile audit` against `reladiff` on the same PostgreSQL truth/projection pair.

For each row count, builds a truth table and a projection table in two fresh PostgreSQL
databases (unique names, dropped afterwards unless --keep) with 100 missing, 100 orphan and
100 mismatched keys scattered over the key range, warms the cache, then runs each tool once as
a child process and reports wall time, rows/s (both tables), the child's peak RSS and whether
it found exactly the 300 planted keys. Prints a markdown table and writes it to bench/results/.

reladiff pins older drivers, so it lives in its own virtualenv (bench/.venv-reladiff, made here
on first use). Run with the project's venv: ``make bench`` or
``.venv/bin/python bench/run.py --rows 1000000 5000000``.
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RELADIFF_VENV = HERE / ".venv-reladiff"
RELADIFF_PIN = "reladiff[postgresql]==0.6.0"
DEFAULT_PG = os.environ.get("RECONCILE_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
PLANTED = 100  # keys of each kind: missing, orphan, mismatch
COLUMNS = ("customer", "amount", "status")

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


@dataclass
class Measure:
    tool: str
    rows: int
    seconds: float
    peak_rss_mb: float
    found: int
    exact: bool
    note: str = ""


def pg_url(base: str, database: str, driver: str = "postgresql") -> str:
    u = sa.make_url(base).set(drivername=driver, database=database)
    return u.render_as_string(hide_password=False)


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
    if not exe.exists():
        print(f"creating {RELADIFF_VENV.relative_to(ROOT)} with {RELADIFF_PIN} ...", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(RELADIFF_VENV)], check=True)
        pip = RELADIFF_VENV / "bin" / "pip"
        subprocess.run([str(pip), "install", "-q", RELADIFF_PIN], check=True)
    return exe


def build(admin: sa.Engine, base: str, rows: int, suffix: str) -> tuple[str, str, dict[str, set[int]]]:
    """Create both databases and tables; plant the drift; return the URLs and the planted keys."""
    truth_db, proj_db = f"bench_truth_{suffix}", f"bench_proj_{suffix}"
    with admin.connect() as conn:
        for db in (truth_db, proj_db):
            conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    rng = random.Random(rows)
    picked = rng.sample(range(1, rows + 1), 3 * PLANTED)
    planted = {
        "missing": set(picked[:PLANTED]),  # deleted from the projection
        "orphan": set(picked[PLANTED : 2 * PLANTED]),  # deleted from the truth
        "mismatch": set(picked[2 * PLANTED :]),  # a different amount in the projection
    }
    for db, name, drift in (
        (truth_db, "orders", [("DELETE FROM orders WHERE id = ANY(:ids)", "orphan")]),
        (
            proj_db,
            "orders_view",
            [
                ("DELETE FROM orders_view WHERE id = ANY(:ids)", "missing"),
                ("UPDATE orders_view SET amount = amount + 1 WHERE id = ANY(:ids)", "mismatch"),
            ],
        ),
    ):
        e = sa.create_engine(pg_url(base, db, "postgresql+psycopg"))
        with e.begin() as conn:
            conn.exec_driver_sql(TABLE_SQL.format(name=name, rows=rows))
            for sql, kind in drift:
                conn.execute(sa.text(sql), {"ids": sorted(planted[kind])})
        with e.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM ANALYZE {name}")
            conn.exec_driver_sql(f"SELECT count(*) FROM {name}")  # warm the cache
        e.dispose()
    return pg_url(base, truth_db), pg_url(base, proj_db), planted


def drop(admin: sa.Engine, suffix: str) -> None:
    with admin.connect() as conn:
        for db in (f"bench_truth_{suffix}", f"bench_proj_{suffix}"):
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))


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
    code, out, err, seconds, rss = run_child([*cmd, "--store", store], env)
    if code not in (0, 1):
        return Measure("reconcile", rows, seconds, rss, -1, False, err.strip().splitlines()[-1][:80])
    doc = json.loads(out)
    got = {kind: {f["key"]["id"] for f in doc["findings"] if f["kind"] == kind} for kind in planted}
    found = len(doc["findings"])
    exact = got == planted and found == 3 * PLANTED
    return Measure("reconcile", rows, seconds, rss, found, exact, f"strategy {doc.get('strategy')}")


def run_reladiff(exe: Path, truth: str, proj: str, rows: int, planted: dict[str, set[int]]) -> Measure:
    cols = [a for c in COLUMNS for a in ("-c", c)]
    cmd = [str(exe), truth, "orders", proj, "orders_view", "-k", "id", *cols, "--json"]
    code, out, err, seconds, rss = run_child(cmd)
    if code != 0:
        return Measure("reladiff", rows, seconds, rss, -1, False, err.strip().splitlines()[-1][:80])
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
    return Measure("reladiff", rows, seconds, rss, len(signs), exact, "hashdiff, 1 thread")


def table(results: list[Measure]) -> str:
    lines = [
        "| rows per table | tool | wall s | rows/s (both tables) | peak RSS MB | keys found "
        "| exactly the 300 | note |",
        "|---:|---|---:|---:|---:|---:|:---:|---|",
    ]
    for m in results:
        rate = 2 * m.rows / m.seconds if m.seconds else 0
        lines.append(
            f"| {m.rows:,} | {m.tool} | {m.seconds:.1f} | {rate:,.0f} | {m.peak_rss_mb:.0f} | "
            f"{m.found} | {'yes' if m.exact else 'NO'} | {m.note} |"
        )
    by_rows: dict[int, dict[str, float]] = {}
    for m in results:
        by_rows.setdefault(m.rows, {})[m.tool] = m.seconds
    for rows, t in by_rows.items():
        if "reconcile" in t and "reladiff" in t and t["reconcile"]:
            lines.append(
                f"\n{rows:,} rows: reconcile is {t['reladiff'] / t['reconcile']:.1f}x faster than reladiff"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000], help="rows per table")
    ap.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server (a maintenance database URL)")
    ap.add_argument("--keep", action="store_true", help="keep the databases (their names are printed)")
    ap.add_argument("--no-reladiff", action="store_true", help="time reconcile alone")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder for the markdown table")
    args = ap.parse_args(argv)

    exe = None if args.no_reladiff else ensure_reladiff()
    admin = sa.create_engine(
        sa.make_url(args.pg_url).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    results: list[Measure] = []
    with tempfile.TemporaryDirectory(prefix="reconcile-bench-") as tmp:
        for rows in args.rows:
            suffix = f"{rows}_{uuid.uuid4().hex[:8]}"
            t0 = time.monotonic()
            print(f"building {rows:,} rows per table (suffix {suffix}) ...", flush=True)
            try:
                truth, proj, planted = build(admin, args.pg_url, rows, suffix)
                print(f"  built in {time.monotonic() - t0:.1f} s", flush=True)
                results.append(run_reconcile(truth, proj, rows, planted, Path(tmp)))
                print(f"  {table(results[-1:]).splitlines()[-1]}", flush=True)
                if exe is not None:
                    results.append(run_reladiff(exe, truth, proj, rows, planted))
                    print(f"  {table(results[-1:]).splitlines()[-1]}", flush=True)
            finally:
                if args.keep:
                    print(f"  kept databases bench_truth_{suffix}, bench_proj_{suffix}")
                else:
                    drop(admin, suffix)
    admin.dispose()
    report = table(results)
    header = (
        f"# reconcile vs reladiff, {datetime.now():%Y-%m-%d %H:%M}\n\n"
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}; "
        "both databases on one PostgreSQL server; one run per tool, warm cache.\n\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{datetime.now():%Y%m%d-%H%M%S}.md"
    path.write_text(header + report + "\n")
    print("\n" + report + f"\n\nwritten to {path}")
    return 0 if all(m.exact for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
