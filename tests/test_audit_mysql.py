"""The audit engine against the real MariaDB: every pairing with itself, PostgreSQL and SQLite.

The test server (scripts/mariadb.sh) runs like many production ones: utf8mb4 with a
case-insensitive, space-padded collation and a time zone that is not UTC. Neither may leak into
what reconcile reports.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.app import Context, audit, gate
from reconcile.db import make_engine
from reconcile.errors import PreflightFailed, SpecError
from reconcile.findings import FindingKind
from reconcile.spec import load_spec, spec_from_dict
from reconcile.store import AuditStore

from .audit_cases import build, check_scenario, spec_file
from .builders import engine, execute, make_table
from .test_cli_audit import _assert_one_line_error, cli

pytestmark = pytest.mark.integration


# -- the shared scenario, every pairing ------------------------------------------------------
def test_mysql_to_mysql(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    check_scenario(tmp_path, make_mysql_db("truth"), make_mysql_db("proj"), f"sqlite:///{tmp_path / 's.db'}")


def test_pg_truth_mysql_projection(tmp_path: Path, make_pg_db, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    check_scenario(tmp_path, make_pg_db("truth"), make_mysql_db("proj"), make_pg_db("store"))


def test_mysql_truth_pg_projection(tmp_path: Path, make_pg_db, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    check_scenario(tmp_path, make_mysql_db("truth"), make_pg_db("proj"), make_pg_db("store"))


def test_sqlite_truth_mysql_projection(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    check_scenario(
        tmp_path, f"sqlite:///{tmp_path / 't.db'}", make_mysql_db("proj"), f"sqlite:///{tmp_path / 's.db'}"
    )


def test_mysql_truth_sqlite_projection(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    check_scenario(
        tmp_path, make_mysql_db("truth"), f"sqlite:///{tmp_path / 'p.db'}", f"sqlite:///{tmp_path / 's.db'}"
    )


def test_checksum_refuses_sqlite_with_mariadb(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """Pushdown needs a server on both sides (tests/test_checksum_portable.py runs MariaDB pairs):
    with SQLite on one, `auto` streams and `checksum` says why it cannot."""
    truth, proj = f"sqlite:///{tmp_path / 't.db'}", make_mysql_db("proj")
    build(truth, proj)
    spec = load_spec(spec_file(tmp_path, truth, proj))
    store = AuditStore(f"sqlite:///{tmp_path / 's.db'}")
    assert audit(Context.of(store), spec, strategy="auto").strategy == "stream"
    with pytest.raises(SpecError, match="needs PostgreSQL, MariaDB or MySQL on both sides"):
        audit(Context.of(store), spec, strategy="checksum")
    store.dispose()


# -- keys ------------------------------------------------------------------------------------
def _audit(
    tmp_path: Path,
    truth: str,
    proj: str,
    key: list[Any],
    columns: Any = (),
    tables: tuple[str, str] = ("t", "p"),
    **kw: Any,
) -> Any:
    spec = spec_from_dict(
        {
            "name": "t",
            "truth": {"url": truth, "table": tables[0]},
            "projection": {"url": proj, "table": tables[1]},
            "key": key,
            "columns": list(columns) if isinstance(columns, list | tuple) else columns,
        }
    )
    return audit(Context.of(AuditStore(f"sqlite:///{tmp_path / 's.db'}")), spec, **kw)


# 'a\t' < 'a' < 'a b' under utf8mb4_bin (it pads with spaces); Python orders by code point.
KEYS = ["a", "B", "_x", "a-b", "ab", "Z", "é", "a b", "a\t", "10", "9", "Ω", "😀"]


@pytest.mark.parametrize("truth_engine", ["mysql", "pg"])
def test_text_keys_order_by_code_point_not_collation(
    tmp_path: Path, make_mysql_db, make_pg_db, truth_engine: str
) -> None:  # type: ignore[no-untyped-def]
    truth = make_mysql_db("truth") if truth_engine == "mysql" else make_pg_db("truth")
    proj = make_mysql_db("proj")
    make_table(truth, "t", [sa.Column("k", sa.String(20), primary_key=True)], [{"k": k} for k in KEYS])
    make_table(proj, "p", [sa.Column("k", sa.String(20))], [{"k": k} for k in KEYS if k != "ab"])
    result = _audit(tmp_path, truth, proj, ["k"])
    assert [(f.kind, f.key["k"]) for f in result.findings] == [(FindingKind.MISSING, "ab")]


def test_latin1_table_keys_order_by_code_point(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """MariaDB's latin1 is cp1252: '€' is byte 0x80 there, below 'é' (0xE9), yet U+20AC > U+00E9."""
    truth, proj = make_mysql_db("truth"), make_mysql_db("proj")
    keys = ["a", "B", "é", "€", "Z", "ÿ", "a-b", "10", "9", "ab"]
    for url, name, rows in ((truth, "t", keys), (proj, "p", [k for k in keys if k != "ab"])):
        execute(url, f"CREATE TABLE {name} (k VARCHAR(20) PRIMARY KEY) CHARACTER SET latin1")
        execute(
            url,
            f"INSERT INTO {name} VALUES " + ", ".join(f"(:k{i})" for i in range(len(rows))),
            **{f"k{i}": k for i, k in enumerate(rows)},
        )
    result = _audit(tmp_path, truth, proj, ["k"])
    assert [(f.kind, f.key["k"]) for f in result.findings] == [(FindingKind.MISSING, "ab")]


def test_integer_key_facing_numeric_text_key(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """Truth keys are integers, projection keys text: 9 < 10 on both sides, never '10' < '9'."""
    truth, proj = make_mysql_db("truth"), make_mysql_db("proj")
    make_table(
        truth,
        "t",
        [sa.Column("id", sa.Integer, primary_key=True, autoincrement=False), sa.Column("v", sa.Text)],
        [{"id": i, "v": f"v{i}"} for i in range(1, 120)],
    )
    make_table(
        proj,
        "p",
        [sa.Column("id", sa.String(10)), sa.Column("v", sa.Text)],
        [{"id": str(i), "v": f"v{i}"} for i in range(1, 120) if i != 100] + [{"id": "200", "v": "x"}],
    )
    result = _audit(tmp_path, truth, proj, ["id"], ["v"])
    assert {(f.kind, f.key["id"]) for f in result.findings} == {
        (FindingKind.MISSING, 100),
        (FindingKind.ORPHAN, 200),
    }


def test_key_lookup_is_exact_under_a_case_insensitive_collation(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """`--keys a` on MariaDB matches 'A' and 'a ' too (utf8mb4_general_ci): those are not asked."""
    truth, proj = make_mysql_db("truth"), make_mysql_db("proj")

    def cols() -> list[sa.Column[Any]]:
        return [sa.Column("k", sa.String(10)), sa.Column("v", sa.Integer)]

    make_table(truth, "t", cols(), [{"k": "a", "v": 1}, {"k": "b", "v": 2}])
    make_table(
        proj,
        "p",
        cols(),
        [{"k": "a", "v": 1}, {"k": "A", "v": 5}, {"k": "a ", "v": 1}, {"k": "b", "v": 2}],
    )
    whole = _audit(tmp_path, truth, proj, ["k"], ["v"])
    assert sorted((f.kind, f.key["k"]) for f in whole.findings) == [
        (FindingKind.ORPHAN, "A"),
        (FindingKind.ORPHAN, "a "),
    ]
    asked = _audit(tmp_path, truth, proj, ["k"], ["v"], keys=[("a",)])
    assert (asked.findings, asked.summary.compared, asked.summary.projection_rows) == ([], 1, 1)
    # The orphans stay open: a keyed run that did not look at them cannot resolve them.
    again = _audit(tmp_path, truth, proj, ["k"], ["v"], keys=[("A",)])
    assert [(f.kind, f.key["k"], f.times_seen) for f in again.findings] == [(FindingKind.ORPHAN, "A", 2)]


# -- values ----------------------------------------------------------------------------------
AT = datetime(2026, 3, 1, 12, 30, 15, 123456)  # UTC


def test_values_compare_by_meaning_across_engines(tmp_path: Path, make_pg_db, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL truth, MariaDB projection of the same facts in MariaDB's own types."""
    truth, proj = make_pg_db("truth"), make_mysql_db("proj")
    make_table(
        truth,
        "t",
        [
            sa.Column("k", sa.Integer, primary_key=True),
            sa.Column("at", sa.DateTime(timezone=True)),  # timestamptz facing TIMESTAMP
            sa.Column("naive", sa.DateTime),  # timestamp facing DATETIME: both taken as UTC
            sa.Column("price", sa.Numeric(12, 4)),  # numeric facing FLOAT (single precision)
            sa.Column("ratio", sa.Float),  # double precision facing DECIMAL
            sa.Column("flag", sa.Boolean),  # boolean facing TINYINT(1)
            sa.Column("doc", sa.JSON),  # json facing MariaDB's JSON (text)
            sa.Column("opens", sa.Time),  # time facing TIME (a timedelta in PyMySQL)
            sa.Column("note", sa.Text),
        ],
        [
            {"k": 1, "at": AT.replace(tzinfo=UTC), "naive": AT, "price": Decimal("9.1000"), "ratio": 0.1,
             "flag": True, "doc": {"a": [1, 2]}, "opens": time(9, 30), "note": "x"},
            {"k": 2, "at": None, "naive": None, "price": None, "ratio": None, "flag": None, "doc": None,
             "opens": None, "note": None},
            {"k": 3, "at": AT.replace(tzinfo=UTC), "naive": AT, "price": Decimal("-0.5000"), "ratio": 2.5,
             "flag": False, "doc": {"x": None}, "opens": time(23, 59, 59, 500000), "note": ""},
            {"k": 4, "at": AT.replace(tzinfo=UTC), "naive": AT, "price": Decimal("1"), "ratio": 1.0,
             "flag": True, "doc": {}, "opens": time(0, 0), "note": "drifted"},
        ],
    )  # fmt: skip
    execute(
        proj,
        "CREATE TABLE p (k INT, at TIMESTAMP(6) NULL, naive DATETIME(6), price FLOAT, ratio DECIMAL(6, 2),"
        " flag BOOLEAN, doc JSON, opens TIME(6), note VARCHAR(20))",
    )
    # Written by a session in another zone: TIMESTAMP stores the instant, not the wall time.
    e = engine(proj)
    with e.begin() as conn:
        conn.execute(sa.text("SET time_zone = '+05:00'"))
        conn.execute(
            sa.text(
                "INSERT INTO p VALUES"
                " (1, '2026-03-01 17:30:15.123456', :naive, 9.1, 0.1, 1, '{\"a\": [1, 2]}', '09:30', 'x'),"
                " (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),"
                " (3, '2026-03-01 17:30:15.123456', :naive, -0.5, 2.5, 0, '{\"x\": null}', '23:59:59.5', ''),"
                " (4, '2026-03-01 17:30:15.123456', :naive, 1, 1, 1, '{}', '00:00', NULL)"
            ),
            {"naive": AT},
        )
    e.dispose()
    columns = ["at", "naive", "price", "ratio", "flag", "doc", "opens", "note"]
    result = _audit(tmp_path, truth, proj, ["k"], columns)
    assert [(f.key["k"], f.columns) for f in result.findings] == [(4, ("note",))]  # '' and NULL differ
    # ... and the other way round, MariaDB as truth.
    result = _audit(tmp_path, proj, truth, ["k"], columns, tables=("p", "t"))
    assert [(f.key["k"], f.columns) for f in result.findings] == [(4, ("note",))]


def test_sessions_are_utc_and_may_wait_for_the_other_side(make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """reconcile's MariaDB sessions read TIMESTAMP in UTC whatever the server's zone, and a
    streamed side may wait for the other one longer than the server's net_write_timeout."""
    e = make_engine(make_mysql_db())
    with e.connect() as conn:
        zone, wait = conn.execute(sa.text("SELECT @@session.time_zone, @@session.net_write_timeout")).one()
    e.dispose()
    assert (zone, wait) == ("+00:00", 86400)


# -- sides, filters and the gate ------------------------------------------------------------
def test_query_side_and_where(tmp_path: Path, make_mysql_db, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    truth, proj = make_mysql_db("truth"), make_pg_db("proj")
    make_table(
        truth,
        "orders",
        [
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("sku", sa.String(10)),
            sa.Column("qty", sa.Integer),
        ],
        [{"id": i, "sku": f"S{i % 3}", "qty": 1} for i in range(30)],
    )
    make_table(
        proj,
        "sold",
        [sa.Column("sku", sa.Text), sa.Column("qty", sa.Integer)],
        [{"sku": "S0", "qty": 10}, {"sku": "S1", "qty": 10}, {"sku": "S2", "qty": 9}],
    )
    spec = spec_from_dict(
        {
            "name": "sold",
            "truth": {"url": truth, "query": "SELECT sku, sum(qty) AS qty FROM orders GROUP BY sku"},
            "projection": {"url": proj, "table": "sold"},
            "key": ["sku"],
            "columns": ["qty"],
        }
    )
    store = AuditStore(f"sqlite:///{tmp_path / 's.db'}")
    result = audit(Context.of(store), spec)
    assert [(f.kind, f.key["sku"], f.truth, f.projection) for f in result.findings] == [
        (FindingKind.MISMATCH, "S2", {"qty": 10}, {"qty": 9})
    ]
    assert audit(Context.of(store), spec, where="sku <> 'S2'").summary.compared == 2


def test_preflight_gate_on_mariadb(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """Great Expectations validates MariaDB sides through its SQL datasource."""
    truth, proj = make_mysql_db("truth"), make_mysql_db("proj")
    build(truth, proj)
    spec = load_spec(spec_file(tmp_path, truth, proj))
    store = AuditStore(f"sqlite:///{tmp_path / 's.db'}")
    audit(Context.of(store), spec)
    assert gate(Context.of(store), spec, docs_dir=tmp_path / "docs").success
    html = "".join(p.read_text() for p in (tmp_path / "docs").rglob("*.html"))
    assert "inventory.projection" in html and ":reconcile@" not in html

    execute(proj, "DELETE FROM stock_view")
    execute(truth, "ALTER TABLE stock_levels DROP PRIMARY KEY")
    execute(truth, "INSERT INTO stock_levels (warehouse, sku, on_hand) VALUES ('W1', 'A-4', 1)")
    with pytest.raises(PreflightFailed) as err:
        gate(Context.of(store), spec, build_docs=False)
    assert str(err.value) == (
        "preflight inventory: truth: expect_compound_columns_to_be_unique on warehouse,sku failed "
        '(observed 2 unexpected of 22, e.g. [{"warehouse": "W1", "sku": "A-4"}, '
        '{"warehouse": "W1", "sku": "A-4"}]); '
        "projection: expect_table_row_count_to_be_between failed (observed 0, min 11)"
    )
    store.dispose()


def test_cli_names_a_wrong_table_in_one_line(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    truth, proj = make_mysql_db("truth"), make_mysql_db("proj")
    build(truth, proj)
    spec = spec_file(tmp_path, truth, proj)
    spec.write_text(spec.read_text().replace("table: stock_view", "table: stock_vue"))
    for cmd in ("audit", "validate"):
        r = cli(cmd, str(spec), cwd=tmp_path)
        _assert_one_line_error(r, "projection.table", "'stock_vue' does not exist", "reconcile:***@")
        assert ":reconcile@" not in r.stderr


def test_cli_error_mid_stream_is_one_line(tmp_path: Path, make_mysql_db) -> None:  # type: ignore[no-untyped-def]
    """A side that fails while the other is still streaming: one line, no driver noise after it.

    The projection's first key ('abc' orders as 0) is no integer while 30k truth rows are still
    unread: PyMySQL would warn, and read them all, when the pool took that connection back.
    """
    truth, proj = make_mysql_db("truth"), make_mysql_db("proj")
    make_table(
        truth,
        "t",
        [sa.Column("id", sa.Integer, primary_key=True, autoincrement=False), sa.Column("v", sa.Text)],
        [{"id": i, "v": f"v{i}"} for i in range(1, 30_000)],
    )
    make_table(
        proj,
        "p",
        [sa.Column("id", sa.String(10)), sa.Column("v", sa.Text)],
        [{"id": "abc", "v": "x"}, *({"id": str(i), "v": f"v{i}"} for i in range(1, 30_000))],
    )
    spec = tmp_path / "ids.yaml"
    spec.write_text(
        f"name: ids\ntruth: {{url: '{truth}', table: t}}\nprojection: {{url: '{proj}', table: p}}\n"
        "key: [id]\ncolumns: [v]\n"
    )
    r = cli("audit", str(spec), cwd=tmp_path)
    _assert_one_line_error(r, "projection: key value 'abc' is not an integer")
