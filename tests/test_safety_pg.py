"""Issue 15, cases 1 and 4, against the real PostgreSQL: filters that cannot escape, read-only
reads, quoted identifiers, and bad input that used to end in a silent "no drift".

Every refusal is checked the way a user meets it: exit 2, one line on stderr, no traceback,
nothing written to the audit store, nothing changed on truth or projection.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reconcile.app import Context, audit
from reconcile.app.audit import open_pair
from reconcile.errors import SourceError, SpecError
from reconcile.spec import spec_from_dict
from reconcile.store import AuditStore

from .builders import engine, execute, make_table

pytestmark = pytest.mark.integration


def cli(*args: str, cwd: Path, store: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconcile", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RECONCILE_STORE_URL": store},
    )


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def runs_in(store_url: str) -> int:
    e = engine(store_url)
    try:
        if "reconcile_runs" not in sa.inspect(e).get_table_names():
            return 0
        with e.connect() as c:
            return int(c.execute(sa.text("SELECT count(*) FROM reconcile_runs")).scalar() or 0)
    finally:
        e.dispose()


def seq_untouched(url: str) -> bool:
    """Whether nextval('s') was never called (a fresh sequence is not is_called)."""
    e = engine(url)
    with e.connect() as c:
        called = c.execute(sa.text("SELECT is_called FROM s")).scalar()
    e.dispose()
    return not called


@pytest.fixture
def world(tmp_path: Path, make_pg_db):  # type: ignore[no-untyped-def]
    """101 items on both sides (21 in region 'eu'), a secret table and a sequence in truth."""
    truth, proj, store = make_pg_db("truth"), make_pg_db("proj"), make_pg_db("store")
    rows: list[dict[str, Any]] = [
        {"id": i, "region": "eu" if i <= 20 else "us", "qty": i} for i in range(101)
    ]

    def cols() -> list[sa.Column[object]]:
        return [
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("region", sa.Text),
            sa.Column("qty", sa.Integer),
        ]

    make_table(truth, "items", cols(), rows)
    make_table(proj, "items_view", cols(), [{**r, "qty": r["qty"] + 1} for r in rows])
    make_table(truth, "secrets", [sa.Column("v", sa.Text)], [{"v": "hunter2-top-secret"}])
    execute(truth, "CREATE SEQUENCE s")
    execute(proj, "CREATE SEQUENCE s")
    spec = tmp_path / "items.yaml"
    spec.write_text(
        f"""
name: items
truth: {{url: "{truth}", table: items, where: "region = 'eu'"}}
projection: {{url: "{proj}", table: items_view, where: "region = 'eu'"}}
key: [id]
columns: [qty]
"""
    )
    return {"truth": truth, "proj": proj, "store": store, "spec": spec, "tmp": tmp_path}


# -- case 1: --where ----------------------------------------------------------------------------
def test_where_cannot_escape_its_parentheses(world) -> None:  # type: ignore[no-untyped-def]
    ok = cli(
        "audit",
        str(world["spec"]),
        "--format",
        "json",
        "--where",
        "qty >= 0",
        cwd=world["tmp"],
        store=world["store"],
    )
    assert ok.returncode == 1 and '"compared": 21' in ok.stdout  # the spec's own filter holds
    before = runs_in(world["store"])
    line = one_line_error(
        cli("audit", str(world["spec"]), "--where", "1=1) OR (1=1", cwd=world["tmp"], store=world["store"])
    )
    assert line.startswith("reconcile: error: --where: not valid SQL")
    assert runs_in(world["store"]) == before


def test_where_with_side_effects_is_refused_and_the_sequence_stays(world) -> None:  # type: ignore[no-untyped-def]
    for where in (
        "nextval('s') > 0",
        "qty > 0 AND pg_catalog.nextval('s') > 0",
        "qty > 0; SELECT nextval('s')",
    ):
        line = one_line_error(
            cli("audit", str(world["spec"]), "--where", where, cwd=world["tmp"], store=world["store"])
        )
        assert "--where:" in line
    assert seq_untouched(world["truth"]) and seq_untouched(world["proj"])
    assert runs_in(world["store"]) == 0


def test_a_subquery_cannot_leak_table_contents(world) -> None:  # type: ignore[no-untyped-def]
    for where in (
        "CAST((SELECT string_agg(v, ',') FROM secrets) AS int) > 0",
        "qty > (SELECT count(*) FROM secrets)",
        "qty IN (SELECT length(v) FROM secrets)",
        "(SELECT v FROM secrets) = 'x'",
    ):
        r = cli("audit", str(world["spec"]), "--where", where, cwd=world["tmp"], store=world["store"])
        line = one_line_error(r)
        assert "hunter2" not in r.stderr + r.stdout and "--where:" in line


def test_where_uses_projection_names_and_quoted_identifiers(tmp_path: Path, make_pg_db) -> None:  # type: ignore[no-untyped-def]
    """A filter by truth names runs on the projection with its own (renamed, odd) column names."""
    truth, proj = make_pg_db("truth"), make_pg_db("proj")
    make_table(
        truth,
        "t",
        [sa.Column("id", sa.Integer, primary_key=True), sa.Column("qty", sa.Integer)],
        [{"id": i, "qty": i} for i in range(10)],
    )
    make_table(
        proj,
        "Odd View",
        [sa.Column("Item Id", sa.Integer), sa.Column("select", sa.Integer)],
        [{"Item Id": i, "select": i + (1 if i == 7 else 0)} for i in range(10)],
    )
    spec = spec_from_dict(
        {
            "name": "odd",
            "truth": {"url": truth, "table": "t"},
            "projection": {"url": proj, "table": "Odd View", "where": '"select" >= 0'},
            "key": [{"id": "Item Id"}],
            "columns": {"qty": {"projection": "select"}},
        }
    )
    store = AuditStore(f"sqlite:///{tmp_path / 's.db'}")
    got = audit(Context.of(store), spec, where="id BETWEEN 5 AND 8 AND qty <> 100")
    assert got.summary.compared == 4 and [f.key["id"] for f in got.findings] == [7]
    with pytest.raises(SpecError, match="unknown column 'nope'"):
        audit(Context.of(store), spec, where="nope = 1")
    store.dispose()


# -- case 1: read-only transactions -------------------------------------------------------------
def test_every_read_is_read_only_a_write_inside_an_audit_fails(world) -> None:  # type: ignore[no-untyped-def]
    """A query side that writes (nextval) fails in PostgreSQL's read-only transaction."""
    spec = spec_from_dict(
        {
            "name": "w",
            "truth": {"url": world["truth"], "query": "SELECT id, qty FROM items WHERE nextval('s') > 0"},
            "projection": {"url": world["proj"], "table": "items_view"},
            "key": ["id"],
            "columns": ["qty"],
        }
    )
    store = AuditStore(world["store"])
    with pytest.raises(SourceError, match="read-only transaction"):
        audit(Context.of(store), spec)
    assert seq_untouched(world["truth"])
    assert runs_in(world["store"]) == 0
    pair = open_pair(
        Context.of(store),
        spec_from_dict(
            {
                "name": "w2",
                "truth": {"url": world["truth"], "table": "items"},
                "projection": {"url": world["proj"], "table": "items_view"},
                "key": ["id"],
            }
        ),
    )
    try:
        for src in (pair.truth, pair.projection):
            with (
                pytest.raises(sa.exc.InternalError, match="read-only transaction"),
                src.engine.connect() as c,
            ):
                c.execute(
                    sa.text("UPDATE items SET qty = 0" if src.role == "truth" else "DELETE FROM items_view")
                )
            with src.engine.connect() as c:
                assert c.execute(sa.text("SHOW statement_timeout")).scalar() not in (None, "0")
    finally:
        pair.close()
    store.dispose()


def test_sqlite_sides_are_query_only(tmp_path: Path) -> None:
    t, p = f"sqlite:///{tmp_path / 't.db'}", f"sqlite:///{tmp_path / 'p.db'}"
    make_table(t, "a", [sa.Column("id", sa.Integer, primary_key=True)], [{"id": 1}])
    make_table(p, "b", [sa.Column("id", sa.Integer)], [{"id": 1}])
    spec = spec_from_dict(
        {
            "name": "q",
            "truth": {"url": t, "table": "a"},
            "projection": {"url": p, "table": "b"},
            "key": ["id"],
        }
    )
    pair = open_pair(Context(store_url=f"sqlite:///{tmp_path / 's.db'}"), spec)
    try:
        with pytest.raises(sa.exc.OperationalError, match="readonly"), pair.truth.engine.connect() as c:
            c.execute(sa.text("DELETE FROM a"))
    finally:
        pair.close()


# -- case 1: identifiers quoted in the preflight gate -------------------------------------------
def test_preflight_quotes_table_names(world) -> None:  # type: ignore[no-untyped-def]
    spec = world["tmp"] / "evil.yaml"
    spec.write_text(
        f"""
name: evil
truth: {{url: "{world["truth"]}", table: "items WHERE nextval('s') > 0 AND 1=1"}}
projection: {{url: "{world["proj"]}", table: items_view}}
key: [id]
columns: [qty]
"""
    )
    r = cli("check", str(spec), "--format", "json", cwd=world["tmp"], store=world["store"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = cli("run", str(spec), "--format", "json", cwd=world["tmp"], store=world["store"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert seq_untouched(world["truth"])


def test_preflight_where_is_the_checked_filter(world) -> None:  # type: ignore[no-untyped-def]
    r = cli("check", str(world["spec"]), "--format", "json", cwd=world["tmp"], store=world["store"])
    assert r.returncode == 0, r.stderr


# -- case 4: bad input is exit 2, never a silent "no drift" -------------------------------------
def test_same_table_on_both_sides_is_a_spec_error(world) -> None:  # type: ignore[no-untyped-def]
    spec = world["tmp"] / "same.yaml"
    spec.write_text(
        f"""
name: same
truth: {{url: "{world["truth"]}", table: items}}
projection: {{url: "{world["truth"]}", table: items}}
key: [id]
columns: [qty]
"""
    )
    for cmd in ("audit", "validate"):
        line = one_line_error(cli(cmd, str(spec), cwd=world["tmp"], store=world["store"]))
        assert "truth and projection both read table 'items' of the same database" in line
    assert runs_in(world["store"]) == 0


def test_null_keys_are_counted_and_refused(world) -> None:  # type: ignore[no-untyped-def]
    execute(world["proj"], "ALTER TABLE items_view DROP CONSTRAINT items_view_pkey")
    execute(world["proj"], "ALTER TABLE items_view ALTER COLUMN id DROP NOT NULL")
    execute(world["proj"], "INSERT INTO items_view (id, region, qty) VALUES (NULL, 'eu', 1), (NULL, 'eu', 2)")
    for strategy in ("stream", "checksum"):
        line = one_line_error(
            cli("audit", str(world["spec"]), "--strategy", strategy, cwd=world["tmp"], store=world["store"])
        )
        assert "projection: 2 row(s) of table items_view have a NULL key (id)" in line
    assert runs_in(world["store"]) == 0


@pytest.mark.parametrize(
    "keys, message",
    [
        (",", "no keys"),
        (" , ", "no keys"),
        ("W:1:x", "has 3 part(s)"),
        ("W1", "has 1 part(s)"),
        ('{"warehouse": "W1"', "invalid JSON"),
        ('{"warehouse": "W1"}', "lacks ['sku']"),
    ],
)
def test_malformed_keys_exit_2(tmp_path: Path, keys: str, message: str) -> None:
    from .audit_cases import build, spec_file

    t, p = f"sqlite:///{tmp_path / 't.db'}", f"sqlite:///{tmp_path / 'p.db'}"
    build(t, p)
    store = f"sqlite:///{tmp_path / 's.db'}"
    line = one_line_error(
        cli("audit", str(spec_file(tmp_path, t, p)), "--keys", keys, cwd=tmp_path, store=store)
    )
    assert message in line
    assert runs_in(store) == 0


def test_json_object_keys_for_a_composite_key(tmp_path: Path) -> None:
    import json

    from .audit_cases import build, spec_file

    t, p = f"sqlite:///{tmp_path / 't.db'}", f"sqlite:///{tmp_path / 'p.db'}"
    build(t, p)
    store = f"sqlite:///{tmp_path / 's.db'}"
    spec = str(spec_file(tmp_path, t, p))
    for keys in (
        '{"warehouse": "W1", "sku": "A-7"}',
        '{"warehouse": "W1", "sku": "A-7"}, {"warehouse": "W1", "sku": "A-1"}',
        '[{"warehouse": "W1", "sku": "A-7"}, ["W1", "A-1"]]',
    ):
        r = cli("audit", spec, "--keys", keys, "--format", "json", cwd=tmp_path, store=store)
        assert r.returncode == 1, r.stderr
        doc = json.loads(r.stdout)
        assert [f["key"] for f in doc["findings"]] == [{"warehouse": "W1", "sku": "A-7"}]
    (tmp_path / "keys.txt").write_text('{"warehouse": "W1", "sku": "A-7"}\nW1:A-2\n')
    r = cli(
        "audit", spec, "--keys", str(tmp_path / "keys.txt"), "--format", "json", cwd=tmp_path, store=store
    )
    assert r.returncode == 1 and json.loads(r.stdout)["summary"]["compared"] == 2
