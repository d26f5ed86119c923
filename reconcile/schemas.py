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
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SchemaIncompatible, SpecError

if TYPE_CHECKING:
    import avro.schema

# avro is imported by the functions that need it, not here: an audit imports this module (through
# the corrective events) but never validates an event, and avro is slow to import (issue 14).

__all__ = ["schemas_dir", "versions", "load", "latest", "validate_datum", "CORRECTIVE_EVENT"]

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
    import avro.errors
    import avro.io

    n, schema = latest(subject, root)
    try:
        avro.io.validate(schema, datum, raise_on_error=True)
    except avro.errors.AvroTypeException as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SchemaIncompatible(f"event does not fit schema {subject} v{n}: {first[:300]}") from None
    return n
