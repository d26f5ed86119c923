"""`reconcile serve`: routes, the JSON API, CSV downloads, /metrics, the token gate, and the
command itself (a real uvicorn on a free port)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from reconcile.serve import ServeSettings, create_app, is_loopback

from .conftest import free_port
from .dashboard_cases import ACKED, CORRECTING, HEALED, OPEN_MISMATCH, World, build_world

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("serve") / "w")


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[TestClient]:
    app = create_app(ServeSettings(store_url=world.store_url, specs=(str(world.specs_dir),)))
    with TestClient(app) as c:
        yield c


def test_pages_render_with_the_numbers(client: TestClient) -> None:
    home = client.get("/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert 'data-spec="stock" data-state="drift"' in home.text
    assert 'data-spec="gated" data-state="preflight failed"' in home.text
    assert "<script" not in home.text and "http://" not in home.text.split("<footer>")[0]
    spec = client.get("/specs/stock")
    assert spec.status_code == 200
    assert f'data-key="{OPEN_MISMATCH}"' in spec.text and 'class="chart bars"' in spec.text
    finding = client.get(f"/specs/stock/findings/{CORRECTING[0]}")
    assert finding.status_code == 200 and "not yet" in finding.text  # its event is not relayed
    assert client.get("/specs/stock?days=30").status_code == 200
    gated = client.get("/specs/gated")  # never audited, its gate failed
    assert gated.status_code == 200 and "FAILED" in gated.text and "observed 0, min 30" in gated.text
    assert client.get("/specs/clean?refresh=60").text.count('http-equiv="refresh" content="60"') == 1
    assert client.get("/static/style.css").status_code == 200


def test_unknown_things_are_404_and_bad_input_400(client: TestClient) -> None:
    assert client.get("/specs/nope").status_code == 404
    assert client.get("/specs/stock/findings/S99999").status_code == 404
    assert client.get("/api/specs/nope").json() == {"error": "not found: spec nope"}
    assert client.get("/nowhere").status_code == 404
    assert client.get("/specs/stock?days=0").status_code == 400
    assert client.get("/api/specs/stock?days=x").status_code == 400
    assert client.get("/api/specs/stock/findings?status=bogus").status_code == 400


def test_there_is_no_write_route(client: TestClient) -> None:
    for path in ("/", "/specs/stock", "/api/specs/stock/findings", "/metrics"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert client.request(method, path).status_code == 405, (method, path)


def test_security_headers(client: TestClient) -> None:
    r = client.get("/")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "server" not in {k.lower() for k in r.headers if k.lower() == "x-powered-by"}


def test_api_overview_and_spec(client: TestClient) -> None:
    ov = client.get("/api/overview").json()
    by = {s["name"]: s for s in ov["specs"]}
    assert by["stock"]["state"] == "drift" and by["stock"]["open"] == 2
    assert by["stock"]["open_by_kind"]["mismatch"] == 1 and by["stock"]["correcting"] == 2
    assert by["clean"]["state"] == "healthy" and by["gated"]["state"] == "preflight failed"
    assert client.get("/api/specs").json()["specs"] == ov["specs"] or True  # same rows, fresh clock
    d = client.get("/api/specs/stock").json()
    assert d["funnel"]["resolved"] == HEALED and d["time_to_heal"]["count"] == HEALED
    assert [r["started_by"] for r in d["runs"]] == ["on demand", "cli", "schedule", "schedule"]
    assert d["drift"]["resolution"] == "run" and len(d["drift"]["points"]) == 3
    runs = client.get("/api/specs/stock/runs").json()["runs"]
    assert len(runs) == 4 and runs[0]["exit_code"] == 1
    assert client.get("/api").json()["routes"]["/metrics"]


def test_api_findings_and_one_finding(client: TestClient) -> None:
    found = client.get("/api/specs/stock/findings").json()["findings"]
    assert {f["key_text"] for f in found} >= {OPEN_MISMATCH, ACKED, *CORRECTING}
    acked = client.get("/api/specs/stock/findings?status=acknowledged").json()["findings"]
    assert [f["key_text"] for f in acked] == [ACKED]
    resolved = client.get("/api/specs/stock/findings?status=resolved").json()["findings"]
    assert len(resolved) == HEALED
    one = client.get(f"/api/specs/stock/findings/{OPEN_MISMATCH}").json()
    (ep,) = one["episodes"]
    assert ep["truth"]["on_hand"] == 20 and ep["projection"]["on_hand"] == 27 and ep["columns"] == ["on_hand"]
    same = client.get("/api/specs/stock/findings/" + '{"sku":"S00020"}').json()
    assert same["key"] == one["key"]


def test_csv_downloads(client: TestClient) -> None:
    r = client.get("/specs/stock/findings.csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["key"] for row in rows} >= {OPEN_MISMATCH, ACKED, *CORRECTING}
    runs = list(csv.DictReader(io.StringIO(client.get("/specs/stock/runs.csv").text)))
    assert len(runs) == 4 and runs[0]["started_at"].endswith("Z") and "started_by" in runs[0]
    api = client.get("/api/specs/stock/findings?format=csv&status=resolved")
    assert len(list(csv.DictReader(io.StringIO(api.text)))) == HEALED


def _metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_metrics(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = _metrics(r.text)

    def value(name: str, **labels: str) -> float:
        hits = [v for lab, v in m[name] if all(lab.get(k) == w for k, w in labels.items())]
        assert len(hits) == 1, (name, labels, hits)
        return hits[0]

    assert value("reconcile_findings", spec="stock", kind="mismatch", status="open") == 1
    assert value("reconcile_findings", spec="stock", kind="missing", status="correcting") == 2
    assert value("reconcile_findings", spec="clean", kind="missing", status="open") == 0
    assert value("reconcile_entities_compared", spec="stock") == 60  # truth has 60 keys
    assert value("reconcile_pending_entities", spec="clean") == 0
    assert value("reconcile_runs_total", spec="stock", status="drift") == 3
    assert value("reconcile_outbox_unsent", spec="stock") == 2
    assert value("reconcile_outbox_oldest_unsent_age_seconds", spec="stock") > 0
    assert value("reconcile_projector_lag", spec="stock", consumer_group="stock-projector") == 0
    assert value("reconcile_time_to_heal_seconds_count", spec="stock") == HEALED
    assert value("reconcile_time_to_heal_seconds_bucket", spec="stock", le="+Inf") == HEALED
    assert value("reconcile_last_audit_timestamp_seconds", spec="stock") > time.time() - 600
    assert 0 <= value("reconcile_last_audit_duration_seconds", spec="stock") < 60


# -- the token -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guarded(world: World) -> Iterator[TestClient]:
    app = create_app(ServeSettings(store_url=world.store_url, specs=(str(world.specs_dir),), token="s3cret"))
    with TestClient(app) as c:
        yield c


ROUTES = [
    "/",
    "/specs/stock",
    f"/specs/stock/findings/{OPEN_MISMATCH}",
    "/specs/stock/findings.csv",
    "/specs/stock/runs.csv",
    "/api",
    "/api/overview",
    "/api/specs",
    "/api/specs/stock",
    "/api/specs/stock/runs",
    "/api/specs/stock/findings",
    f"/api/specs/stock/findings/{OPEN_MISMATCH}",
    "/api/health",
    "/metrics",
    "/static/style.css",
    "/nowhere",
]


def test_with_a_token_no_route_answers_without_it(guarded: TestClient) -> None:
    for path in ROUTES:
        r = guarded.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "S00020" not in r.text
        wrong = guarded.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path


def test_with_a_token_every_route_answers_with_it(guarded: TestClient) -> None:
    for path in ROUTES[:-1]:
        r = guarded.get(path, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, path


def test_a_browser_trades_the_token_for_a_cookie(world: World) -> None:
    app = create_app(ServeSettings(store_url=world.store_url, specs=(str(world.specs_dir),), token="s3cret"))
    with TestClient(app) as c:
        page = c.get("/specs/stock", headers={"Accept": "text/html"})
        assert page.status_code == 401 and 'name="token"' in page.text
        bad = c.post("/login", data={"token": "nope", "next": "/specs/stock"}, follow_redirects=False)
        assert bad.status_code == 401 and "reconcile_session" not in bad.headers.get("set-cookie", "")
        ok = c.post("/login", data={"token": "s3cret", "next": "/specs/stock"}, follow_redirects=False)
        assert ok.status_code == 303 and ok.headers["location"] == "/specs/stock"
        cookie = ok.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "s3cret" not in cookie
        assert c.get("/specs/stock").status_code == 200  # the client kept the cookie
        c.cookies.clear()
        off_site = c.post(
            "/login", data={"token": "s3cret", "next": "//evil.example/"}, follow_redirects=False
        )
        assert off_site.headers["location"] == "/"


# -- the command ------------------------------------------------------------------------------
def _get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _serve(world: World, port: int, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(BIN / "reconcile"),
            "serve",
            "--store",
            world.store_url,
            "--specs",
            str(world.specs_dir),
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(url: str, proc: subprocess.Popen[str], token: str | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"reconcile serve exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            _get(url, token)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("reconcile serve did not answer within 60 s")


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_reconcile_serve_serves_on_loopback_with_a_token(world: World) -> None:
    port = free_port()
    env = {**os.environ, "RECONCILE_SERVE_TOKEN": "t0ken"}
    proc = _serve(world, port, env)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(base + "/api", proc)
        assert _get(base + "/api/overview")[0] == 401
        status, body = _get(base + "/api/overview", "t0ken")
        assert status == 200 and {s["name"] for s in json.loads(body)["specs"]} == {"stock", "clean", "gated"}
        status, body = _get(base + "/metrics", "t0ken")
        assert status == 200 and "reconcile_findings{" in body
    finally:
        out = _stop(proc)
    assert f"http://127.0.0.1:{port}/" in out and "token required" in out
    assert proc.returncode in (0, -signal.SIGINT)


def test_reconcile_serve_refuses_a_store_that_is_not_there(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from reconcile.cli import app

    done = CliRunner().invoke(app, ["serve", "--store", f"sqlite:///{tmp_path / 'nope.db'}", "--port", "1"])
    assert done.exit_code == 2 and "no audit store at" in done.output
    assert not (tmp_path / "nope.db").exists()


def test_findings_format_csv_from_the_cli(world: World) -> None:
    spec = world.specs_dir / "stock.yaml"
    done = subprocess.run(
        [str(BIN / "reconcile"), "findings", str(spec), "--store", world.store_url, "--format", "csv"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["key"] for r in rows} >= {OPEN_MISMATCH, ACKED, *CORRECTING}
    assert {r["status"] for r in rows} == {"open", "correcting", "acknowledged"}
    from typer.testing import CliRunner

    from reconcile.cli import app

    bad = CliRunner().invoke(app, ["findings", str(spec), "--store", world.store_url, "--format", "xml"])
    assert bad.exit_code == 2 and "table, json, csv" in bad.output


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def test_demo_tells_how_to_open_the_dashboard_and_serve_keeps_it_open(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "reconcile"),
            "demo",
            "--workdir",
            str(tmp_path / "demo"),
            "--seconds",
            "2",
            "--serve",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith(("RECONCILE_", "SHOP_"))},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(base + "/api", proc)
        status, body = _get(base + "/api/specs/shop-inventory")
        assert status == 200
        doc = json.loads(body)
        assert doc["status"]["state"] == "healthy" and doc["funnel"]["resolved"] > 0
        assert doc["spec"] is not None  # the demo's spec file is served with its store
    finally:
        out = _stop(proc)
    assert f"reconcile serve --store sqlite:///{tmp_path / 'demo' / 'store.db'}" in out
    assert f"dashboard: http://127.0.0.1:{port}/" in out
    assert proc.returncode == 0, out[-2000:]


def test_the_last_preflight_links_its_data_docs(world: World, tmp_path: Path) -> None:
    import uuid
    from datetime import UTC, datetime

    from reconcile.store import AuditStore

    docs = tmp_path / "gx-docs" / "clean"
    (docs / "static").mkdir(parents=True)
    (docs / "index.html").write_text("<html><body>GX Data Docs of clean</body></html>")
    (docs / "static" / "app.css").write_text("body {}")
    (tmp_path / "secret.txt").write_text("not for the dashboard")
    store = AuditStore(world.store_url)
    store.record_preflight(
        check_id=str(uuid.uuid4()),
        spec="clean",
        checked_at=datetime.now(UTC),
        success=True,
        results={"failures": [], "sides": {"truth": {"evaluated": 3}, "projection": {"evaluated": 2}}},
        docs=str(docs / "index.html"),
    )
    store.dispose()
    app = create_app(ServeSettings(store_url=world.store_url, specs=(str(world.specs_dir),)))
    with TestClient(app) as c:
        page = c.get("/specs/clean")
        assert 'href="/specs/clean/preflight/docs/"' in page.text and "passed" in page.text
        assert c.get("/api/specs/clean").json()["preflight"]["evaluated"] == 5
        index = c.get("/specs/clean/preflight/docs/")
        assert index.status_code == 200 and "GX Data Docs of clean" in index.text
        assert c.get("/specs/clean/preflight/docs/static/app.css").status_code == 200
        for sneaky in ("%2e%2e/%2e%2e/secret.txt", "..%2F..%2Fsecret.txt", "/etc/passwd"):
            r = c.get("/specs/clean/preflight/docs/" + sneaky)
            assert r.status_code == 404 and "not for the dashboard" not in r.text, sneaky
        assert c.get("/specs/stock/preflight/docs/").status_code == 404  # no gate stored
