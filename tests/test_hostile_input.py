"""Issue 15: random specs, keys and filters fed to `validate` / `audit` (hypothesis).

Whatever comes in, the answer is an exit code in {0, 1, 2}, never a traceback, and an exit 2
writes nothing: no run in the audit store, truth and projection unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from reconcile.cli import app

from .audit_cases import build

WORDS = ["sku", "warehouse", "on_hand", "price", "title", "nope", "1", "'W1'", "'A-7'", "NULL", "TRUE"]
OPS = [
    "=",
    "<>",
    ">",
    "<",
    " LIKE ",
    " IS ",
    " IN ",
    " AND ",
    " OR ",
    " NOT ",
    "(",
    ")",
    ";",
    ",",
    "--",
    "'",
    "::int",
]
FUNCS = ["nextval('s')", "pg_sleep(0)", "lower(title)", "coalesce(on_hand, 0)", "(SELECT 1)", "random()"]

filters = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(WORDS + OPS + FUNCS), min_size=1, max_size=9).map("".join),
    st.lists(st.sampled_from(WORDS + OPS + FUNCS), min_size=1, max_size=9).map(" ".join),
)
keys = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.sampled_from(["W1", "A-7", ":", ",", "{", "}", '"', "[", "]", "sku", "warehouse", " "]),
        max_size=12,
    ).map("".join),
)
tables = st.sampled_from(
    [
        "stock_levels",
        "stock_view",
        "missing_table",
        "stock_levels WHERE 1=1",
        'x"; DROP TABLE stock_levels; --',
    ]
)
columns = st.lists(
    st.sampled_from(["on_hand", "price", "title", "nope", "sku", "warehouse"]), max_size=3, unique=True
)


def _fingerprint(*urls: str) -> str:
    h = hashlib.sha256()
    for url in urls:
        e = sa.create_engine(url)
        with e.connect() as c:
            for t in sorted(sa.inspect(e).get_table_names()):
                for row in c.execute(sa.text(f'SELECT * FROM "{t}" ORDER BY 1, 2')):
                    h.update(repr(tuple(row)).encode())
        e.dispose()
    return h.hexdigest()


def _runs(store: Path) -> int:
    if not store.exists():
        return 0
    e = sa.create_engine(f"sqlite:///{store}")
    try:
        if "reconcile_runs" not in sa.inspect(e).get_table_names():
            return 0
        with e.connect() as c:
            return int(c.execute(sa.text("SELECT count(*) FROM reconcile_runs")).scalar() or 0)
    finally:
        e.dispose()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    d = tmp_path_factory.mktemp("hostile")
    t, p = f"sqlite:///{d / 'truth.db'}", f"sqlite:///{d / 'proj.db'}"
    build(t, p)
    return d, t, p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    where=filters,
    key_list=keys,
    truth_table=tables,
    proj_table=tables,
    cols=columns,
    command=st.sampled_from(["audit", "validate"]),
)
def test_hostile_input_never_crashes_and_exit_2_writes_nothing(
    pair: tuple[Path, str, str],
    where: str,
    key_list: str,
    truth_table: str,
    proj_table: str,
    cols: list[str],
    command: str,
) -> None:
    d, t, p = pair
    spec = d / "spec.yaml"
    import yaml

    spec.write_text(
        yaml.safe_dump(
            {
                "name": "hostile",
                "truth": {"url": t, "table": truth_table},
                "projection": {"url": p, "table": proj_table},
                "key": ["warehouse", {"sku": "product_id"}],
                "columns": {c: ({"projection": "unit_price"} if c == "price" else {}) for c in cols},
            }
        )
    )
    store = d / "store.db"
    before_runs, before_data = _runs(store), _fingerprint(t, p)
    args = [command, str(spec)]
    if command == "audit":
        args += ["--format", "json", "--store", f"sqlite:///{store}"]
        if where:
            args += ["--where", where]
        if key_list:
            args += ["--keys", key_list]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert "Traceback" not in result.output and "unexpected" not in result.output, (args, result.output)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert _fingerprint(t, p) == before_data
    if result.exit_code == 2:
        assert _runs(store) == before_runs, args
