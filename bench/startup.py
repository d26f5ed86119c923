"""Start-up cost of a small audit (issue 14: "a 10-row SQLite audit, start to exit, under 0.6 s").

    PYTHONPATH=$PWD .venv/bin/python bench/startup.py [--runs 5] [--importtime]

Builds, in a temporary folder, a 10-row SQLite truth and a projection with one row off, a spec
and a SQLite audit store, then runs ``python -m reconcile audit SPEC --format json`` (what the
``reconcile`` console script runs: ``reconcile.cli:main``) --runs times as a child process and
prints every wall time, the best and the median (and the same of the child's CPU time), the
load average before and after, and which heavy packages the audit imported (none of them
should be). ``--floor`` also measures the CPU time of a bare interpreter and of importing each
library an audit cannot do without (SQLAlchemy, pydantic, typer, PyYAML), the same way.
``--importtime`` prints the 20 slowest imports of one run (``python -X importtime``,
cumulative microseconds).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("great_expectations", "airflow", "pandas", "fastavro", "avro", "confluent_kafka", "numpy")

SPEC = """name: startup
truth:
  url: sqlite:///{dir}/truth.db
  table: items
projection:
  url: sqlite:///{dir}/proj.db
  table: items_view
key: [id]
columns:
  qty: {{}}
  title: {{}}
"""

PROBE = """
import runpy, sys
sys.argv = ["reconcile", "audit", {spec!r}, "--format", "json"]
try:
    runpy.run_module("reconcile", run_name="__main__")
except SystemExit:
    pass
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


def build(folder: Path) -> Path:
    """A 10-row pair with one mismatch; returns the spec's path."""
    for name, table, off in (("truth.db", "items", 0), ("proj.db", "items_view", 1)):
        con = sqlite3.connect(folder / name)
        con.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, qty INTEGER, title TEXT)")
        con.executemany(
            f"INSERT INTO {table} VALUES (?, ?, ?)",
            [(i, i + (off if i == 3 else 0), f"item {i}") for i in range(10)],
        )
        con.commit()
        con.close()
    spec = folder / "startup.yaml"
    spec.write_text(SPEC.format(dir=folder))
    return spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--floor", action="store_true", help="CPU time of the libraries an audit needs")
    ap.add_argument("--importtime", action="store_true", help="print the 20 slowest imports of one run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="reconcile-startup-") as tmp:
        folder = Path(tmp)
        spec = build(folder)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "RECONCILE_STORE_URL": f"sqlite:///{folder / 'store.db'}",
            # An installed reconcile has its bytecode compiled; a checkout run with
            # PYTHONDONTWRITEBYTECODE=1 would compile every module on every start. Keep the
            # bytecode in the temporary folder so the checkout stays clean.
            "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cmd = [sys.executable, "-m", "reconcile", "audit", str(spec), "--format", "json"]
        # One run first so the store exists, its tables migrated, the bytecode written and the
        # OS cache warm.
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=folder)
        if first.returncode != 1:
            sys.exit(f"audit should exit 1 (one mismatch), got {first.returncode}: {first.stderr}")

        load_before = os.getloadavg()
        times, cpus = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(p.pid, 0)
            times.append(time.perf_counter() - t0)
            # CPU time of the child: less at the mercy of the other jobs on a shared machine.
            cpus.append(usage.ru_utime + usage.ru_stime)
            assert os.waitstatus_to_exitcode(status) == 1, p.stderr.read() if p.stderr else ""
            if p.stderr:
                p.stderr.close()
        load_after = os.getloadavg()

        probe = subprocess.run(
            [sys.executable, "-c", PROBE.format(spec=str(spec), heavy=HEAVY)],
            env=env,
            capture_output=True,
            text=True,
            cwd=folder,
        )
        heavy = next((ln[6:] for ln in probe.stderr.splitlines() if ln.startswith("HEAVY=")), "?")

        print(f"command: {' '.join(cmd[1:])}  (10 rows each side, SQLite store)")
        print("runs s: " + " ".join(f"{t:.3f}" for t in times))
        print(f"wall: best {min(times):.3f} s, median {statistics.median(times):.3f} s of {len(times)}")
        print(f"cpu (user+sys): best {min(cpus):.3f} s, median {statistics.median(cpus):.3f} s")
        print("load average before: {:.2f} {:.2f} {:.2f}".format(*load_before))
        print("load average after:  {:.2f} {:.2f} {:.2f}".format(*load_after))
        print(f"heavy packages imported: {heavy or 'none'}")

        if args.floor:
            print("\nfloor (cpu user+sys of `python -c CODE`, best / median of the same runs):")
            for code in (
                "pass",
                "import sqlalchemy",
                "import pydantic",
                "import typer",
                "import yaml",
                "import sqlalchemy, pydantic, typer, yaml",
                "import reconcile.cli, reconcile.app",
            ):
                spent = []
                for _ in range(args.runs):
                    p = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=folder)
                    _, _, usage = os.wait4(p.pid, 0)
                    spent.append(usage.ru_utime + usage.ru_stime)
                print(f"  {min(spent):.3f} / {statistics.median(spent):.3f} s  {code}")

        if args.importtime:
            r = subprocess.run(
                [sys.executable, "-X", "importtime", *cmd[1:]],
                env=env,
                capture_output=True,
                text=True,
                cwd=folder,
            )
            rows = []
            for line in r.stderr.splitlines():
                if not line.startswith("import time:") or "cumulative" in line:
                    continue
                own, cum, name = line[len("import time:") :].split("|")
                rows.append((int(cum), int(own), name.rstrip()))
            print("\nslowest imports (cumulative us, self us, module):")
            for cum, own, name in sorted(rows, reverse=True)[:20]:
                print(f"{cum:>9} {own:>8} {name}")


if __name__ == "__main__":
    main()
