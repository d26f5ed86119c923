"""Names imported only for type checking are never used at run time.

Start-up stays fast by importing heavy modules (rich, avro, ...) inside the functions that need
them, with ``if TYPE_CHECKING:`` imports for annotations. Neither ruff nor mypy notices when such
a name is then used at run time (``Table(...)`` in a function body): it fails only when that code
runs. This test reads every module and lists those uses.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _checking_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for n in ast.walk(node):
                if isinstance(n, ast.Import | ast.ImportFrom):
                    names |= {a.asname or a.name.split(".")[0] for a in n.names}
    return names


def runtime_uses(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    checking = _checking_names(tree)
    if not checking:
        return []
    annotations = {
        id(n)
        for node in ast.walk(tree)
        for attr in ("annotation", "returns")
        if (a := getattr(node, attr, None)) is not None
        for n in ast.walk(a)
    }
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        local = {
            a.asname or a.name.split(".")[0]
            for n in ast.walk(fn)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        for n in ast.walk(fn):
            if (
                isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Load)
                and n.id in checking - local
                and id(n) not in annotations
            ):
                found.append(f"{path.relative_to(root)}:{n.lineno}: {n.id}")
    return found


def test_no_type_checking_name_is_used_at_run_time() -> None:
    files = sorted((ROOT / "reconcile").rglob("*.py")) + sorted((ROOT / "dags").rglob("*.py"))
    assert files
    assert [u for f in files for u in runtime_uses(f)] == []


def test_the_check_finds_such_a_use(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rich.table import Table\n"
        "def f() -> 'Table':\n    return Table()\n"
        "def g() -> 'Table':\n    from rich.table import Table\n    return Table()\n"
    )
    assert runtime_uses(bad, tmp_path) == ["probe.py:5: Table"]
