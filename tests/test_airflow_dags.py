"""The Airflow DAGs, loaded from dags/ and run with ``dag.test()`` in-process against the real
PostgreSQL (and Kafka where a DAG heals). Alerts go to a real SMTP server and a real HTTP
endpoint running in threads. One Airflow metadata DB (SQLite, migrated once) per session.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconcile.app import Context

from .airflow_support import mail_text, smtp_receiver, webhook_receiver

pytestmark = [
    pytest.mark.airflow,
    pytest.mark.integration,
    # Airflow's .airflowignore reader uses a pathspec name pathspec now deprecates.
    pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning"),
    # dag.test()'s in-process execution API imports starlette's test client (STACK-NOTES).
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"


@pytest.fixture(scope="session")
def receivers() -> Iterator[dict[str, Any]]:
    with smtp_receiver() as smtp, webhook_receiver() as hook:
        yield {"smtp": smtp, "webhook": hook}


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory, receivers: dict[str, Any]) -> Iterator[Path]:
    """Airflow configured through the environment before its first import; metadata DB migrated."""
    home = tmp_path_factory.mktemp("airflow")
    specs = home / "specs"
    specs.mkdir()
    smtp_port = receivers["smtp"].server_address[1]
    hook_url = f"http://127.0.0.1:{receivers['webhook'].server_address[1]}/hooks/T000/B000"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "RECONCILE_SPECS_DIR": str(specs),
        "AIRFLOW_CONN_SMTP_TEST": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_port,
                "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1},
            }
        ),
        "AIRFLOW_CONN_SLACK_TEST": json.dumps({"conn_type": "http", "host": hook_url}),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from airflow.utils import db

    db.resetdb()
    yield specs
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def specs_dir(airflow_home: Path) -> Iterator[Path]:
    """The session's specs folder, emptied after each test."""
    yield airflow_home
    for p in airflow_home.glob("*.yaml"):
        p.unlink()


@pytest.fixture
def store_url(make_pg_db, monkeypatch: pytest.MonkeyPatch) -> str:  # type: ignore[no-untyped-def]
    url: str = make_pg_db("store")
    monkeypatch.setenv("RECONCILE_STORE_URL", url)
    return url


def bag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    b = DagBag(dag_folder=str(DAGS))
    assert b.import_errors == {}, b.import_errors
    return b


def run(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
    dag = bag().get_dag(dag_id)
    assert dag is not None, dag_id
    return dag.test(run_conf=conf)


def states(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def xcom(dr: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key="return_value")
        ).all()
        return XComModel.deserialize_value(rows[0]) if rows else None


def write_spec(folder: Path, name: str, truth: str, proj: str, extra: str = "") -> Path:
    text = f"""
name: {name}
truth:
  {truth}
  table: stock_levels
projection:
  {proj}
  table: stock_view
key: [warehouse, {{sku: product_id}}]
columns:
  on_hand: {{}}
  price: {{projection: unit_price, tolerance: 0.005}}
  title: {{normalize: [strip, casefold]}}
freshness:
  truth_column: updated_at
  grace: 5m
{extra}
"""
    p = folder / f"{name}.yaml"
    p.write_text(text)
    return p


ALERTS = """
alerts:
  email: {to: [oncall@example.com], conn_id: smtp_test, from: reconcile@example.com}
  webhook: {conn_id: slack_test}
  on: [drift, guard, preflight, health, verify]
"""


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_dag_folder_loads_without_db_or_network(specs_dir: Path) -> None:
    """Specs naming connections that do not exist and hosts that do not answer still parse."""
    write_spec(specs_dir, "a_conn", "conn_id: nowhere_db", "url: postgresql://u:p@10.255.255.1:1/x", ALERTS)
    write_spec(
        specs_dir, "b_fan", "url: sqlite:///t.db", "url: sqlite:///p.db", "fanout: 4\nschedule: '*/5 * * * *'"
    )
    (specs_dir / "broken.yaml").write_text("name: [not a name\n")
    b = bag()
    assert {"reconcile_a_conn", "reconcile_b_fan", "reconcile_on_demand", "reconcile_health"} <= set(
        b.dag_ids
    )
    a = b.get_dag("reconcile_a_conn")
    assert [t.task_id for t in a.tasks] == ["preflight", "audit", "correct", "relay", "verify", "report"]
    assert str(a.schedule) == "@hourly"
    fan = b.get_dag("reconcile_b_fan")
    assert {"plan_ranges", "audit_range", "merge"} <= {t.task_id for t in fan.tasks}
    assert (
        fan.get_task("audit_range").is_mapped if hasattr(fan.get_task("audit_range"), "is_mapped") else True
    )
    od = b.get_dag("reconcile_on_demand")
    assert od.params.get_param("spec").schema["enum"] == ["a_conn", "b_fan"]
    # the broken spec does not vanish: a DAG of its own fails with the reason
    broken = b.get_dag("reconcile_invalid_broken")
    assert broken is not None and "YAML error" in (broken.description or "")
    assert [t.task_id for t in broken.tasks] == ["invalid_spec"]


def test_preflight_failure_alerts_by_mail_and_webhook(
    specs_dir: Path,
    make_pg_db,
    store_url: str,
    receivers: dict[str, Any],  # type: ignore[no-untyped-def]
) -> None:
    from .audit_cases import build

    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    build(truth, proj)
    name = _name("pf")
    write_spec(specs_dir, name, f"url: {truth}", f"url: {proj}", ALERTS)
    # The projection's table disappears: the read is broken, nothing may be audited or corrected.
    from .builders import execute

    execute(proj, "ALTER TABLE stock_view RENAME TO stock_view_old")
    before_mail, before_posts = len(receivers["smtp"].messages), len(receivers["webhook"].posts)
    dr = run(f"reconcile_{name}")
    st = states(dr)
    assert st["preflight"] == "failed" and st["audit"] == "upstream_failed"
    mails = receivers["smtp"].messages[before_mail:]
    posts = receivers["webhook"].posts[before_posts:]
    assert len(mails) == 1 and mails[0]["to"] == ["oncall@example.com"]
    assert "preflight failed" in mails[0]["message"]["Subject"]
    assert "stock_view" in mail_text(mails[0]["message"])
    assert len(posts) == 1 and posts[0]["path"] == "/hooks/T000/B000"
    assert posts[0]["json"]["reconcile"]["event"] == "preflight" and "stock_view" in posts[0]["json"]["text"]


def test_scheduled_fanout_dag_matches_single_run_and_alerts_drift(
    specs_dir: Path,
    make_pg_db,
    store_url: str,
    tmp_path: Path,
    receivers: dict[str, Any],
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    from reconcile.app import audit
    from reconcile.spec import load_spec
    from reconcile.store import AuditStore

    from .audit_cases import build

    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    build(truth, proj)
    # Copies of W1 as W3..W8 so the ranges are real; there are missing.
    from .builders import execute

    for w in range(3, 9):
        execute(
            truth,
            f"INSERT INTO stock_levels SELECT 'W{w}', sku, on_hand, price, title, updated_at"
            " FROM stock_levels WHERE warehouse = 'W1' AND sku <> 'A-9'",
        )
        execute(
            proj,
            f"INSERT INTO stock_view SELECT 'W{w}', product_id, on_hand, unit_price, title"
            " FROM stock_view WHERE warehouse = 'W1' AND product_id NOT IN ('A-9', 'A-5', 'A-99')",
        )
    monkeypatch.setenv("AIRFLOW_CONN_TRUTH_TEST", truth)  # the truth through an Airflow connection
    name = _name("fan")
    path = write_spec(specs_dir, name, "conn_id: truth_test", f"url: {proj}", "fanout: 4\n" + ALERTS)
    before = len(receivers["webhook"].posts)
    dr = run(f"reconcile_{name}")
    st = states(dr)
    # An audit-only spec with drift: the audit (here its merge) decides, and the run is red.
    assert st["merge"] == "failed" and st["report"] == "upstream_failed", st
    merged = xcom(dr, "merge")  # the failing task still shows what it found
    assert merged["strategy"] == "fanout" and merged["scope"]["ranges"] >= 3

    spec = load_spec(path)
    single = audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}")), spec).to_dict()

    def view(r: dict[str, Any]) -> Any:
        return r["summary"], sorted((f["kind"], sorted(f["key"].items())) for f in r["findings"])

    assert view(merged) == view(single)
    assert single["summary"]["missing"] == 13  # A-3 in W1, A-3 and A-5 in W3..W8
    posts = receivers["webhook"].posts[before:]
    assert [p["json"]["reconcile"]["event"] for p in posts] == ["drift"]
    assert posts[0]["json"]["reconcile"]["counts"]["missing"] == 13


def test_health_dag_alerts_on_a_stuck_outbox(
    specs_dir: Path,
    store_url: str,
    receivers: dict[str, Any],  # type: ignore[no-untyped-def]
) -> None:
    import sqlalchemy as sa

    from reconcile.store import AuditStore
    from reconcile.store.schema import outbox

    name = _name("hl")
    write_spec(
        specs_dir,
        name,
        "url: sqlite:///nowhere-truth.db",
        "url: sqlite:///nowhere-proj.db",
        "correction: {topic: t, event_type: E, transport: embedded}\n" + ALERTS,
    )
    store = AuditStore(store_url)
    old = datetime.now(UTC) - timedelta(hours=1)
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(
            sa.insert(outbox),
            [
                {
                    "event_id": uuid.uuid4().hex,
                    "spec": name,
                    "run_id": str(uuid.uuid4()),
                    "topic": "t",
                    "transport": "embedded",
                    "message_key": f"k{i}",
                    "headers": {},
                    "payload": "{}",
                    "created_at": old + timedelta(seconds=i),
                    "attempts": 0,
                }
                for i in range(3)
            ],
        )
    store.dispose()
    before_mail, before_posts = len(receivers["smtp"].messages), len(receivers["webhook"].posts)
    dr = run("reconcile_health", {"outbox_max_age_s": 600})
    assert states(dr) == {"measure": "success", "verdict": "failed"}
    report = xcom(dr, "measure")
    mine = next(s for s in report["specs"] if s["spec"] == name)
    assert mine["outbox_unsent"] == 3 and mine["outbox_oldest_age_s"] > 3500
    assert any("relay" in p for p in mine["problems"])
    assert any("never audited" in p for p in mine["problems"])
    posts = [p for p in receivers["webhook"].posts[before_posts:] if p["json"]["reconcile"]["spec"] == name]
    assert len(posts) == 1 and posts[0]["json"]["reconcile"]["event"] == "health"
    assert "3 unsent corrective event(s)" in posts[0]["json"]["text"]
    mails = receivers["smtp"].messages[before_mail:]
    assert any(name in m["message"]["Subject"] and "unhealthy" in m["message"]["Subject"] for m in mails)


def test_on_demand_dry_run_then_real_with_params(
    specs_dir: Path,
    make_pg_db,
    store_url: str,
    kafka_bootstrap: str,
    topic: str,  # type: ignore[no-untyped-def]
) -> None:
    """Incident work: narrow to two keys, look (dry run), then correct and publish for real."""
    from airflow.sdk.exceptions import ParamValidationError

    from reconcile.store import AuditStore

    from .audit_cases import build

    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    build(truth, proj)
    name = _name("od")
    correction = f"correction: {{topic: {topic}, event_type: StockLevelCorrected, max_ratio: 1.0}}\n"
    write_spec(specs_dir, name, f"url: {truth}", f"url: {proj}", correction)
    with pytest.raises(ParamValidationError):
        run("reconcile_on_demand", {"spec": "no-such-spec"})

    conf = {"spec": name, "keys": "W1:A-3,W1:A-7", "dry_run": True, "verify": False}
    dr = run("reconcile_on_demand", conf)
    assert states(dr) == {
        "trace": "success",
        "audit": "success",
        "correct": "success",
        "relay": "success",
        "verify": "success",
    }
    assert xcom(dr, "trace") == {"skipped": "no trace key"}
    audited = xcom(dr, "audit")
    assert audited["scope"]["keys"] == 2
    got = {(f["kind"], f["key"]["sku"]) for f in audited["findings"]}
    assert got == {("missing", "A-3"), ("mismatch", "A-7")}
    assert xcom(dr, "correct")["dry_run"] is True
    assert xcom(dr, "relay")["sent"] == 0
    store = AuditStore(store_url)
    assert store.outbox_backlog(name)[0] == 0  # a dry run writes nothing

    dr = run("reconcile_on_demand", {**conf, "dry_run": False})
    assert xcom(dr, "correct")["written"] >= 2
    assert xcom(dr, "relay")["sent"] >= 2
    assert store.outbox_backlog(name)[0] == 0
    assert xcom(dr, "verify") == {"skipped": "verify=false"}
    store.dispose()


def test_connections_become_sqlalchemy_urls(airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    sys.path.insert(0, str(DAGS))
    from reconcile_dags.runtime import connection_url

    monkeypatch.setenv("AIRFLOW_CONN_PG_X", "postgresql://u:p%40ss@db.example:5432/orders?sslmode=require")
    monkeypatch.setenv("AIRFLOW_CONN_MY_X", "mysql://u:p@db.example:3306/shop")
    monkeypatch.setenv(
        "AIRFLOW_CONN_RAW_X",
        json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": "sqlite:///x.db"}}),
    )
    assert connection_url("pg_x") == "postgresql+psycopg://u:p%40ss@db.example:5432/orders?sslmode=require"
    assert connection_url("my_x") == "mysql+pymysql://u:p@db.example:3306/shop"
    assert connection_url("raw_x") == "sqlite:///x.db"


def test_scheduled_spec_dag_heals_injected_drift_through_kafka(
    specs_dir: Path,
    make_pg_db,
    store_url: str,
    kafka_bootstrap: str,
    topic: str,  # type: ignore[no-untyped-def]
    receivers: dict[str, Any],
) -> None:
    """The whole loop under Airflow: a projector consumes the corrections while the DAG verifies."""
    import threading

    import sqlalchemy as sa

    from reconcile.app import Projector, audit
    from reconcile.events.kafka import KafkaSettings
    from reconcile.spec import load_spec
    from reconcile.store import AuditStore

    from .builders import make_table

    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    rows = [{"sku": f"S{i:03d}", "on_hand": i, "title": f"item {i}"} for i in range(50)]

    def cols() -> list[sa.Column[Any]]:
        return [sa.Column("on_hand", sa.Integer), sa.Column("title", sa.Text)]

    make_table(truth, "stock", [sa.Column("sku", sa.String(20), primary_key=True), *cols()], rows)
    drifted = [
        {"product_id": r["sku"], "on_hand": r["on_hand"], "title": r["title"]}
        for r in rows
        if r["sku"] != "S003"
    ]
    drifted[5]["on_hand"] = 999  # mismatch
    drifted.append({"product_id": "S999", "on_hand": 1, "title": "ghost"})  # orphan
    make_table(proj, "stock_view", [sa.Column("product_id", sa.String(20)), *cols()], drifted)
    name, group = _name("heal"), f"projector-{uuid.uuid4().hex[:8]}"
    receivers_before = len(receivers["webhook"].posts)
    path = specs_dir / f"{name}.yaml"
    path.write_text(
        f"""
name: {name}
truth: {{url: "{truth}", table: stock}}
projection: {{url: "{proj}", table: stock_view}}
key: [{{sku: product_id}}]
columns: [on_hand, title]
correction: {{topic: {topic}, event_type: StockLevelReconciled, consumer_group: {group}, max_ratio: 0.5}}
{ALERTS}
"""
    )
    spec = load_spec(path)
    done = threading.Event()
    projector = Projector(Context(store_url=store_url, kafka=KafkaSettings(kafka_bootstrap)), spec)
    worker = threading.Thread(
        target=lambda: projector.run(idle_timeout_s=600, max_seconds=240, stop=done.is_set), daemon=True
    )
    worker.start()
    try:
        dr = run(f"reconcile_{name}")
    finally:
        done.set()
        worker.join(30)
        projector.close()
    assert {t: s for t, s in states(dr).items()} == dict.fromkeys(
        ["preflight", "audit", "correct", "relay", "verify", "report"], "success"
    )
    assert xcom(dr, "audit")["summary"]["missing"] == 1
    assert xcom(dr, "relay")["sent"] == 3
    assert xcom(dr, "verify")["exit_code"] == 0
    # Healed and verified: green, and nobody is paged (no "resolved" in the spec's `on:`).
    assert [
        p for p in receivers["webhook"].posts[receivers_before:] if p["json"]["reconcile"]["spec"] == name
    ] == []
    store = AuditStore(f"sqlite:///{specs_dir / 'after.db'}")
    assert audit(Context.of(store), spec).findings == []  # the projection really healed
    store.dispose()


def test_cli_run_and_the_scheduled_dag_decide_the_same(
    specs_dir: Path, make_pg_db, store_url: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """`reconcile run` from cron and the spec's DAG: the same gate decision, the same findings."""
    import subprocess
    import sys

    from .audit_cases import build
    from .builders import execute

    def cli_run(spec: Path, store: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconcile", "run", str(spec), "--format", "json"],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "RECONCILE_STORE_URL": store},
        )

    def view(findings: list[dict[str, Any]]) -> list[Any]:
        return sorted((f["kind"], sorted(f["key"].items()), f["columns"]) for f in findings)

    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    build(truth, proj)
    name = _name("same")
    spec = write_spec(specs_dir, name, f"url: {truth}", f"url: {proj}")
    dr = run(f"reconcile_{name}")
    # audit-only drift: the DAG's audit is red, `reconcile run` exits 1; both saw the same
    assert states(dr)["preflight"] == "success" and states(dr)["audit"] == "failed"
    by_dag = xcom(dr, "audit")
    by_cli = cli_run(spec, make_pg_db("clistore"))
    assert by_cli.returncode == 1, by_cli.stderr  # drift, audit-only spec
    doc = json.loads(by_cli.stdout)
    assert doc["preflight"]["success"] is True
    assert view(doc["audit"]["findings"]) == view(by_dag["findings"]) != []
    assert doc["audit"]["summary"] == by_dag["summary"]

    # A broken read: both stop at the gate, nothing audited.
    execute(proj, "ALTER TABLE stock_view RENAME TO stock_view_old")
    dr = run(f"reconcile_{name}")
    assert states(dr)["preflight"] == "failed" and states(dr)["audit"] == "upstream_failed"
    stopped = cli_run(spec, make_pg_db("clistore2"))
    assert stopped.returncode == 2 and stopped.stdout == ""
    assert "stock_view" in stopped.stderr and stopped.stderr.count("\n") == 1


def test_on_demand_guard_and_lag_page_for_the_right_reason(
    specs_dir: Path,
    make_pg_db,
    store_url: str,
    kafka_bootstrap: str,
    topic: str,
    receivers: dict[str, Any],  # type: ignore[no-untyped-def]
) -> None:
    """A keyed repair is judged against the whole pair; a dry run never pages; a stopped
    projector is "cannot tell" at verify (naming its group and lag), never "drift remains"."""
    from .audit_cases import build

    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    build(truth, proj)
    name, group = _name("lag"), f"stopped-{uuid.uuid4().hex[:8]}"
    correction = (
        f"correction: {{topic: {topic}, event_type: StockLevelCorrected, consumer_group: {group}, "
        "max_ratio: 0.2}\n"
    )
    write_spec(specs_dir, name, f"url: {truth}", f"url: {proj}", correction + ALERTS)
    keys = {"spec": name, "keys": "W1:A-3,W1:A-7"}
    before = len(receivers["webhook"].posts)

    # No full audit yet: 2 corrections of 2 compared trips the guard; as a dry run, nobody is paged.
    dr = run("reconcile_on_demand", {**keys, "dry_run": True, "verify": False})
    assert states(dr)["correct"] == "success"
    assert "blast-radius guard" in xcom(dr, "correct")["guard"]
    mine = [p for p in receivers["webhook"].posts[before:] if p["json"]["reconcile"]["spec"] == name]
    assert mine == []

    # After a full audit (22 entities), the same keyed repair is 2 of 22: under the guard.
    run("reconcile_on_demand", {"spec": name, "dry_run": True, "verify": False})
    dr = run("reconcile_on_demand", {**keys, "dry_run": False, "verify": True, "verify_timeout_s": 2})
    st = states(dr)
    assert st["correct"] == "success" and st["relay"] == "success" and st["verify"] == "failed", st
    posts = [p for p in receivers["webhook"].posts[before:] if p["json"]["reconcile"]["spec"] == name]
    assert [p["json"]["reconcile"]["event"] for p in posts] == ["verify"]
    assert group in posts[0]["json"]["text"] and "behind" in posts[0]["json"]["text"]


def test_on_demand_where_param_is_checked_like_the_cli(specs_dir: Path, make_pg_db, store_url: str) -> None:  # type: ignore[no-untyped-def]
    """Issue 15, case 1: the DAG's `where` param is parsed and checked, never pasted into SQL."""
    import sqlalchemy as sa

    from .audit_cases import build
    from .builders import engine, execute

    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    build(truth, proj)
    execute(truth, "CREATE SEQUENCE s")
    name = _name("odw")
    write_spec(specs_dir, name, f"url: {truth}", f"url: {proj}")
    for where in ("1=1) OR (1=1", "nextval('s') > 0"):
        dr = run("reconcile_on_demand", {"spec": name, "where": where, "verify": False})
        assert states(dr)["audit"] == "failed"
    ok = run("reconcile_on_demand", {"spec": name, "where": "warehouse = 'W2'", "verify": False})
    assert states(ok)["audit"] == "success" and xcom(ok, "audit")["summary"]["compared"] == 1
    e = engine(truth)
    with e.connect() as c:
        assert c.execute(sa.text("SELECT is_called FROM s")).scalar() is False
    e.dispose()
    e = engine(store_url)
    with e.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM reconcile_runs")).scalar() == 1
    e.dispose()


def test_topic_sides_read_through_airflow_kafka_connections(
    specs_dir: Path,
    make_pg_db,
    store_url: str,
    kafka_bootstrap: str,
    topic: str,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a DAG a topic side's broker comes from Airflow: its `conn_id:` is an Airflow Kafka
    connection, and a side naming no broker uses the Kafka connection of
    RECONCILE_KAFKA_CONN_ID. The environment's broker (a port nothing listens on) is never asked."""
    from decimal import Decimal

    from .topic_cases import event, outbox, produce

    truth = make_pg_db("outbox")
    outbox(truth, [{"event_id": f"ev-{i:03d}", "order_id": i, "amount": Decimal(i) / 4} for i in range(30)])
    msgs = [event(f"ev-{i:03d}", {"order_id": i, "amount": i / 4}, key=str(i)) for i in range(30) if i != 7]
    produce(kafka_bootstrap, topic, msgs)  # ev-007 never published
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv(
        "AIRFLOW_CONN_KAFKA_EVENTS",
        json.dumps(
            {"conn_type": "kafka", "extra": {"bootstrap.servers": kafka_bootstrap, "group.id": "airflow"}}
        ),
    )
    monkeypatch.setenv("RECONCILE_KAFKA_CONN_ID", "kafka_events")
    for broker in ("conn_id: kafka_events", ""):
        name = _name("published")
        (specs_dir / f"{name}.yaml").write_text(
            f"""
name: {name}
truth: {{url: "{truth}", table: shop_outbox}}
projection:
  topic: {topic}
  {broker}
  fields: {{event_id: "header:ce_id", order_id: $.data.order_id, amount: $.data.amount}}
key: [event_id]
columns: [order_id, amount]
"""
        )
        dr = run(f"reconcile_{name}")
        assert states(dr)["audit"] == "failed", states(dr)  # drift on an audit-only spec fails it
        run_ = xcom(dr, "audit")
        s = run_["summary"]
        assert (s["missing"], s["orphan"], s["duplicate"], s["mismatch"]) == (1, 0, 0, 0), broker
        assert [f["key"]["event_id"] for f in run_["findings"]] == ["ev-007"]
        seen = run_["scope"]["topics"]["projection"]
        assert seen["where"] == f"kafka {kafka_bootstrap}" and seen["read"]["messages"] == 29


def test_on_demand_trace_follows_one_entity_along_the_path(
    specs_dir: Path,
    make_pg_db,
    store_url: str,
    kafka_bootstrap: str,  # type: ignore[no-untyped-def]
) -> None:
    """The `trace` param: one entity's events stage by stage and its cause, in XCom; the audit
    (settle_s 0) carries the cut and every finding's cause."""
    import yaml

    from .causes_cases import Shop
    from .test_causes_kafka import broken_shop
    from .topic_cases import delete_topic, make_topic

    topic = make_topic(kafka_bootstrap, 1)
    try:
        shop = Shop(make_pg_db("truth"), make_pg_db("proj"), kafka_bootstrap, topic).create()
        broken_shop(shop)
        name = _name("tr")
        doc = {**shop.spec(settle="30s"), "name": name}
        (specs_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        dr = run("reconcile_on_demand", {"spec": name, "trace": "W1:D", "settle_s": 0, "verify": False})
        assert states(dr)["trace"] == "success"
        traced = xcom(dr, "trace")
        assert traced["verdict"] == {"state": "drift", "kind": "mismatch", "cause": "not_applied"}
        assert [e["stage"] for e in traced["events"]] == ["not_applied"]
        audited = xcom(dr, "audit")  # drift without a correction section fails the task, kept in XCom
        assert audited["cut"]["settle_s"] == 0
        assert {f["key"]["sku"]: f["cause"] for f in audited["findings"]}["C"] == "lost"
    finally:
        delete_topic(kafka_bootstrap, topic)
