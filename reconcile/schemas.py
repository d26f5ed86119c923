"""Event schemas: where they live, loading them, validating one event's data.

Schemas are Avro (``.avsc``), one file per version: ``<dir>/<subject>/v<N>.avsc``.
A breaking change is a new subject or version, never an edit. The directory is
``$RECONCILE_SCHEMAS_DIR``, else ``event_schemas/`` inside this package (package data, so a
wheel install has it too; the repo's ``checks/schemas`` is a link to it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SchemaIncompatible, SpecError

if TYPE_CHECKING:
    import avro.schema

# avro is imported by the functions that need it, not here: an audit imports this module (through
# the corrective events) but never validates an event, and avro is slow to import (issue 14).

__all__ = [
    "schemas_dir",
    "versions",
    "load",
    "latest",
    "validate_datum",
    "datum_validator",
    "shape_decides",
    "CORRECTIVE_EVENT",
]

CORRECTIVE_EVENT = "reconcile.CorrectiveEvent"
_VERSION_FILE = re.compile(r"^v(?P<n>\d+)\.avsc$")


_DEFAULT_DIR = Path(__file__).resolve().parent / "event_schemas"


def schemas_dir() -> Path:
    """The schema directory in use."""
    env = os.environ.get("RECONCILE_SCHEMAS_DIR")
    return Path(env) if env else _DEFAULT_DIR


def versions(subject: str, root: Path | None = None) -> list[tuple[int, Path]]:
    """(version, file) of a subject, oldest first."""
    folder = (root or schemas_dir()) / subject
    try:
        stamp = folder.stat().st_mtime_ns
    except OSError:
        stamp = None
    if stamp is None or not folder.is_dir():
        raise SpecError(f"schemas: no subject {subject!r} in {folder.parent}")
    # `correct` validates every event: list the folder again only when it changed (a file
    # added or removed moves the folder's mtime), not 100,000 times per correction.
    return list(_listing(str(folder), stamp))


@lru_cache(maxsize=64)
def _listing(folder: str, _stamp: int) -> tuple[tuple[int, Path], ...]:
    found = [(int(m["n"]), p) for p in Path(folder).iterdir() if (m := _VERSION_FILE.match(p.name))]
    return tuple(sorted(found))


@lru_cache(maxsize=64)
def _parse(path: str) -> avro.schema.Schema:
    import avro.errors
    import avro.schema

    try:
        return avro.schema.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, avro.errors.AvroException) as e:
        raise SpecError(f"schema {path}: cannot parse: {str(e).splitlines()[0] if str(e) else e}") from None


def load(path: Path) -> avro.schema.Schema:
    """Parse one ``.avsc`` file (cached)."""
    return _parse(str(path))


def latest(subject: str, root: Path | None = None) -> tuple[int, avro.schema.Schema]:
    """The newest version of a subject and its parsed schema."""
    found = versions(subject, root)
    if not found:
        raise SpecError(f"schemas: subject {subject!r} has no v<N>.avsc file")
    n, path = found[-1]
    return n, load(path)


def validate_datum(subject: str, datum: Any, root: Path | None = None) -> int:
    """Check one event's data against the subject's latest schema; return that version.

    Raises SchemaIncompatible naming the subject when the data does not fit.
    """
    n, schema = latest(subject, root)
    _check(subject, n, schema, datum)
    return n


def _check(subject: str, n: int, schema: avro.schema.Schema, datum: Any) -> None:
    import avro.errors
    import avro.io

    try:
        avro.io.validate(schema, datum, raise_on_error=True)
    except avro.errors.AvroTypeException as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SchemaIncompatible(f"event does not fit schema {subject} v{n}: {first[:300]}") from None


def datum_validator(subject: str, root: Path | None = None) -> Callable[[Any], int]:
    """:func:`validate_datum` for many data of one subject (a correction of 100k findings).

    The latest schema is read once. avro checks a datum by walking it in Python (about 150 us
    for a corrective event); when its verdict depends only on the datum's *shape* (see
    :func:`_shape`), a shape avro accepted once is accepted again without the walk. A datum of a
    new shape, and every datum a schema with enums below the top level, fixed or logical types
    is checked, goes through avro as before, and a datum that does not fit raises the same error.
    """
    n, schema = latest(subject, root)
    by_shape = shape_decides(subject, root)
    accepted: set[Any] = set()

    def check(datum: Any) -> int:
        if not by_shape:
            _check(subject, n, schema, datum)
            return n
        shape = _shape(datum, 0)
        if shape not in accepted:
            _check(subject, n, schema, datum)
            if len(accepted) < 10_000:
                accepted.add(shape)
        return n

    return check


def shape_decides(subject: str, root: Path | None = None) -> bool:
    """Whether the subject's latest schema accepts or refuses a datum by its :func:`_shape`
    alone (so a caller may remember verdicts by shape, as :func:`datum_validator` does)."""
    return _shape_decides(latest(subject, root)[1].to_json(), 0)


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}


def _shape_decides(node: Any, depth: int) -> bool:
    """Whether avro's verdict on a datum for this schema node (``depth`` levels below the
    top) depends only on :func:`_shape`: primitives, records, maps, arrays and unions check the
    Python type (and an int's range); an enum checks the value, which the shape holds only one
    level down (the top record's fields, e.g. a corrective event's ``kind``)."""
    if isinstance(node, str):
        return node in _PRIMITIVES
    if isinstance(node, list):
        return all(_shape_decides(branch, depth) for branch in node)
    if not isinstance(node, dict) or "logicalType" in node:
        return False
    kind = node.get("type")
    if kind in _PRIMITIVES:
        return True
    if kind == "record":
        return all(_shape_decides(f["type"], depth + 1) for f in node.get("fields", ()))
    if kind == "map":
        return _shape_decides(node["values"], depth + 1)
    if kind == "array":
        return _shape_decides(node["items"], depth + 1)
    if kind == "enum":
        return depth == 1
    return False  # fixed, a named type used again by name, anything newer: avro checks every datum


_INT32, _INT64 = 2**31, 2**63


def _shape(value: Any, depth: int) -> Any:
    """What avro's check of a datum looks at, for the schemas :func:`_shape_decides` accepts:
    types, dict keys, an int's range, and the strings one level down (enum symbols)."""
    kind = type(value)  # exact types first: a corrective event is str, int and dicts of them
    if kind is str:
        return value if depth == 1 else str
    if kind is int:
        return (int, 0 if -_INT32 <= value < _INT32 else 1 if -_INT64 <= value < _INT64 else 2)
    if kind is dict:
        if depth >= 1:  # its values are two levels down or deeper: a str is just str there
            return (
                dict,
                tuple([(k, str if type(v) is str else _shape(v, depth + 1)) for k, v in value.items()]),
            )
        return (dict, tuple([(k, _shape(v, depth + 1)) for k, v in value.items()]))
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if depth == 1 else type(value)
    if isinstance(value, int):
        size = 0 if -_INT32 <= value < _INT32 else 1 if -_INT64 <= value < _INT64 else 2
        return (type(value), size)
    if isinstance(value, dict):
        return (type(value), tuple((k, _shape(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, list):
        return (type(value), tuple(_shape(v, depth + 1) for v in value))
    return type(value)
