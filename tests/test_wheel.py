"""The wheel, as users and docker/Dockerfile install it: built, installed (not editable) into a
fresh venv outside the checkout with the pinned dependencies, and run from another folder.

Catches files the package reads at run time that are not package data (the event schemas, the
demo's spec): an editable install finds them in the checkout, a wheel does not. Slowish (about
a minute: the dependencies come from pip's cache or the index), so it has its own marker.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "reconcile"
# What docker/Dockerfile copies before `pip install`: the wheel must build from these alone.
BUILD_INPUTS = ("pyproject.toml", "README.md", "reconcile")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # outside the checkout and the venv
    env: dict[str, str]

    def reconcile(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return _run([str(self.venv / "bin" / "reconcile"), *args], self.workdir, self.env, timeout)


def _clean_env() -> dict[str, str]:
    """The environment without anything that points back at the checkout or its venv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not k.startswith(("RECONCILE_", "SHOP_", "PYTEST_"))
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(
    cmd: Sequence[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _ok(p: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, f"{what}: exit {p.returncode}\n{(p.stdout + p.stderr)[-4000:]}"
    return p


def _output(p: subprocess.CompletedProcess[str]) -> str:
    return p.stdout + p.stderr


def _no_warnings(output: str, what: str) -> None:
    noisy = [ln for ln in output.splitlines() if "warning" in ln.lower() or "deprecat" in ln.lower()]
    assert not noisy, f"{what} warned:\n" + "\n".join(noisy)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    env = _clean_env()
    # Build from a copy: an in-tree build leaves build/ behind, and a stale build/lib can slip
    # files into later wheels that the source no longer has.
    src = root / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    dist = root / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(src)]
    _no_warnings(_output(_ok(_run(build, root, env, 300), "pip wheel")), "pip wheel")
    (wheel,) = dist.glob("reconcile-*.whl")

    # A venv of the base interpreter without pip (quicker); this venv's pip installs into it.
    venv = root / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env, 120), "venv")
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "--no-compile",
        "-c",
        str(REPO / "constraints.txt"),
        str(wheel),
    ]
    _no_warnings(_output(_ok(_run(install, root, env, 600), "pip install")), "pip install")

    workdir = root / "work"
    workdir.mkdir()
    yield Installed(wheel, venv, workdir, env)
    shutil.rmtree(venv, ignore_errors=True)  # ~330 MB; pytest keeps the last runs' tmp folders


def test_the_wheel_ships_every_file_of_the_package_as_a_real_file(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
    links = [n for n, i in infos.items() if stat.S_ISLNK(i.external_attr >> 16)]
    assert links == []
    in_tree = {
        p.relative_to(REPO).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert in_tree - set(infos) == set()
    assert "reconcile/py.typed" in infos
    for data in (
        "reconcile/event_schemas/compatibility.yaml",
        "reconcile/event_schemas/reconcile.CorrectiveEvent/v1.avsc",
        "reconcile/event_schemas/shop.OrderPlaced/v1.avsc",
        "reconcile/shop/shop-inventory.yaml",
        "reconcile/serve/templates/spec.html",
        "reconcile/serve/static/style.css",
    ):
        assert infos[data].file_size > 0, data


def test_the_installed_package_is_the_venvs_not_the_checkouts(installed: Installed) -> None:
    p = _run(
        [str(installed.venv / "bin" / "python"), "-c", "import reconcile; print(reconcile.__file__)"],
        installed.workdir,
        installed.env,
        60,
    )
    where = Path(_ok(p, "import reconcile").stdout.strip()).resolve()
    assert where.is_relative_to(installed.venv.resolve()), where
    assert not where.is_relative_to(REPO), where


def test_demo_runs_from_the_wheel(installed: Installed) -> None:
    _ok(installed.reconcile("demo"), "reconcile demo")


def _pair(folder: Path, n: int = 40) -> tuple[str, str]:
    """Truth: n stock rows; projection: every 5th missing, every 7th with on_hand off by 100."""
    truth, proj = folder / "truth.db", folder / "proj.db"
    with sqlite3.connect(truth) as t, sqlite3.connect(proj) as p:
        t.execute("CREATE TABLE stock (sku TEXT PRIMARY KEY, on_hand INTEGER)")
        p.execute("CREATE TABLE stock_view (product_id TEXT PRIMARY KEY, on_hand INTEGER)")
        for i in range(n):
            t.execute("INSERT INTO stock VALUES (?, ?)", (f"S{i:03d}", i))
            if i % 5 != 0:
                off = 100 if i % 7 == 0 else 0
                p.execute("INSERT INTO stock_view VALUES (?, ?)", (f"S{i:03d}", i + off))
    t.close()
    p.close()
    return f"sqlite:///{truth}", f"sqlite:///{proj}"


def test_correct_writes_corrective_events_from_the_wheel(installed: Installed) -> None:
    folder = installed.workdir / "correct"
    folder.mkdir()
    truth_url, proj_url = _pair(folder)
    drifted = sum(1 for i in range(40) if i % 5 == 0 or i % 7 == 0)
    spec = folder / "stock.yaml"
    spec.write_text(
        f"""name: stock
truth: {{url: "{truth_url}", table: stock}}
projection: {{url: "{proj_url}", table: stock_view}}
key: [{{sku: product_id}}]
columns: {{on_hand: {{}}}}
correction:
  topic: stock.reconciled
  event_type: StockLevelReconciled
  consumer_group: stock-projector
  transport: embedded
  max_ratio: 0.5
""",
        encoding="utf-8",
    )
    store = f"sqlite:///{folder / 'store.db'}"

    audited = installed.reconcile("audit", str(spec), "--store", store, "--format", "json")
    assert audited.returncode == 1, audited.stdout + audited.stderr  # 1: drift found
    assert len(json.loads(audited.stdout)["findings"]) == drifted

    corrected = installed.reconcile("correct", str(spec), "--store", store, "--format", "json")
    assert json.loads(_ok(corrected, "correct").stdout)["written"] == drifted

    relayed = installed.reconcile("relay", "--spec", str(spec), "--store", store, "--format", "json")
    assert json.loads(_ok(relayed, "relay").stdout)["sent"] == drifted


def test_serve_renders_pages_from_the_wheel(installed: Installed) -> None:
    """The dashboard's templates and stylesheet are package data: pages render outside the checkout."""
    import signal
    import socket
    import time
    import urllib.request

    folder = installed.workdir / "serve"
    folder.mkdir()
    truth_url, proj_url = _pair(folder)
    spec = folder / "stock.yaml"
    spec.write_text(
        f"""name: stock
truth: {{url: "{truth_url}", table: stock}}
projection: {{url: "{proj_url}", table: stock_view}}
key: [{{sku: product_id}}]
columns: {{on_hand: {{}}}}
""",
        encoding="utf-8",
    )
    store = f"sqlite:///{folder / 'store.db'}"
    assert installed.reconcile("audit", str(spec), "--store", store, "--format", "json").returncode == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            str(installed.venv / "bin" / "reconcile"),
            "serve",
            "--store",
            store,
            "--specs",
            str(folder),
            "--port",
            str(port),
        ],
        cwd=installed.workdir,
        env=installed.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pages: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 90
        for path in ("/specs/stock", "/static/style.css", "/metrics"):
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                        pages[path] = r.read().decode()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, (
                        "reconcile serve did not answer"
                    )
                    time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert 'class="chart bars"' in pages["/specs/stock"], out[-2000:]
    assert "--missing" in pages["/static/style.css"]
    assert 'reconcile_findings{kind="missing",spec="stock",status="open"}' in pages["/metrics"]
    _no_warnings(out, "reconcile serve")
