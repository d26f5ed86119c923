"""Comparing values by meaning, not by representation.

Two databases rarely hand back the same Python value for the same fact: PostgreSQL gives a
``Decimal('9.50')`` where SQLite gives ``9.5``, a ``timestamptz`` comes back aware where a
``timestamp`` comes back naive, SQLite keeps booleans as 0/1 and datetimes as text. The rules
here decide when two values are the same fact:

* NULL equals NULL; NULL differs from every value.
* Numbers (int, float, Decimal, numeric strings facing a number) compare as Decimals, within
  the column's absolute ``tolerance``.
* Datetimes compare in UTC; a naive datetime is taken to be UTC; ISO text facing a datetime is
  parsed first. A time of day compares with MySQL's TIME (a ``timedelta`` since midnight) and
  with ISO text.
* Text goes through the column's normalisers on both sides, then compares exactly.

Keys are canonicalised (:func:`key_part`) so that ``10`` and ``'10'`` are one entity and the
merge in :mod:`reconcile.diff` orders both sides the same way.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "ColumnRule",
    "normalize_text",
    "values_equal",
    "to_utc",
    "key_part",
    "jsonable",
    "json_text",
    "same_text",
]

_NORMALIZE: dict[str, Callable[[str], str]] = {
    "strip": str.strip,
    "casefold": str.casefold,
    "lower": str.lower,
    "upper": str.upper,
    "collapse_spaces": lambda s: " ".join(s.split()),
}


def normalize_text(value: str, normalizers: Sequence[str]) -> str:
    """Apply the named normalisers in order."""
    for name in normalizers:
        value = _NORMALIZE[name](value)
    return value


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """How one compared column is judged: its tolerance and normalisers."""

    name: str
    tolerance: float | None = None
    normalize: tuple[str, ...] = ()


def to_utc(value: datetime) -> datetime:
    """An aware UTC datetime; naive datetimes are taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _as_decimal(value: Any) -> Decimal | None:
    t = value.__class__  # the exact types first: this runs for every compared number
    if t is Decimal:
        return value  # type: ignore[no-any-return]
    if t is int:
        return Decimal(value)
    if t is float:
        if value != value or value in (math.inf, -math.inf):
            return None
        return Decimal(repr(value))
    if isinstance(value, bool):
        return Decimal(int(value))
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return Decimal(repr(value))  # repr is the shortest text that round-trips: 0.1 -> 0.1
    if isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            return None
        return d if d.is_finite() else None
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=UTC)
    if isinstance(value, str):
        try:
            return to_utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _as_time_of_day(value: Any) -> time | None:
    if isinstance(value, time):
        return value
    if isinstance(value, timedelta):  # MySQL's TIME: time since midnight (or any interval)
        return (datetime.min + value).time() if timedelta(0) <= value < timedelta(days=1) else None
    if isinstance(value, str):
        try:
            return time.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def values_equal(truth: Any, projection: Any, rule: ColumnRule) -> bool:
    """True when the two sides hold the same fact for this column."""
    # Equal values of one type are the same fact under every rule below (NaN is not equal to
    # itself, so it still takes its own path): the common case, decided without conversions.
    t, u = truth.__class__, projection.__class__
    if t is u and truth == projection:
        return True
    if t in _NUMBERS and u in _NUMBERS:  # a Decimal facing a float: numeric vs JSON, say
        if t is Decimal and u is float and same_text(truth, projection):
            return True
        return _numbers_equal(truth, projection, rule)
    if truth is None or projection is None:
        return truth is None and projection is None
    if isinstance(truth, str) and isinstance(projection, str):
        if rule.normalize:
            return normalize_text(truth, rule.normalize) == normalize_text(projection, rule.normalize)
        return truth == projection
    if _is_number(truth) or _is_number(projection) or isinstance(truth, bool) or isinstance(projection, bool):
        return _numbers_equal(truth, projection, rule)
    if isinstance(truth, timedelta) and isinstance(projection, timedelta):
        return truth == projection
    if isinstance(truth, time | timedelta) or isinstance(projection, time | timedelta):
        a_t, b_t = _as_time_of_day(truth), _as_time_of_day(projection)
        return a_t is not None and a_t == b_t
    if isinstance(truth, datetime | date) or isinstance(projection, datetime | date):
        if type(truth) is date and type(projection) is date:
            return truth == projection
        a_dt, b_dt = _as_datetime(truth), _as_datetime(projection)
        return a_dt is not None and a_dt == b_dt
    if isinstance(truth, uuid.UUID) or isinstance(projection, uuid.UUID):
        return str(truth).lower() == str(projection).lower()
    if isinstance(truth, dict | list) or isinstance(projection, dict | list):
        return _as_json(truth) == _as_json(projection)
    if isinstance(truth, bytes | memoryview) and isinstance(projection, bytes | memoryview):
        return bytes(truth) == bytes(projection)
    if isinstance(truth, str) or isinstance(projection, str):
        a_s, b_s = str(truth), str(projection)
        if rule.normalize:
            a_s, b_s = normalize_text(a_s, rule.normalize), normalize_text(b_s, rule.normalize)
        return a_s == b_s
    return bool(truth == projection)


_NUMBERS = frozenset({int, float, Decimal})  # exact types: bool is an int, but not a number here


def same_text(d: Decimal, f: float) -> bool:
    """Whether the Decimal's text is the float's shortest text (``Decimal('9.50')``, ``9.5``).

    When it is, ``Decimal(repr(f)) == d`` (what :func:`_numbers_equal` decides), so they are
    equal under any tolerance; when it is not, they may still be equal (``1E+2`` and ``100.0``)
    and the caller asks :func:`_numbers_equal`. Two strings instead of a Decimal parse: this
    runs for every row of a numeric column facing JSON numbers.
    """
    s, r = str(d), repr(f)
    if s == r:
        return True
    if s[-1:] == "0" and "." in s and "E" not in s:  # 9.50 -> 9.5, 9.00 -> 9.0
        s = s.rstrip("0")
        return (s + "0" if s[-1] == "." else s) == r
    return False


def _numbers_equal(truth: Any, projection: Any, rule: ColumnRule) -> bool:
    """Two values, one of them a number, compared as Decimals within the rule's tolerance."""
    a, b = _as_decimal(truth), _as_decimal(projection)
    if a is None or b is None:
        if isinstance(truth, float) and isinstance(projection, float):
            return (math.isnan(truth) and math.isnan(projection)) or truth == projection
        return False
    if rule.tolerance:
        return abs(a - b) <= Decimal(repr(rule.tolerance))
    return a == b


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def key_part(value: Any, kind: str) -> Any:
    """Canonical form of one key value, so both sides name an entity the same way.

    ``kind`` is decided per key column from both sides' SQL types (see
    :func:`reconcile.sources.sql.key_kind`): ``int`` (integers, or integers facing numeric
    text), ``number``, ``datetime`` or ``text``.
    """
    if value is None:
        return None
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        d = _as_decimal(value)
        if d is None or d != d.to_integral_value():
            raise ValueError(f"key value {value!r} is not an integer")
        return int(d)
    if kind == "number":
        d = _as_decimal(value)
        if d is None:
            raise ValueError(f"key value {value!r} is not a number")
        return d.normalize() if d != 0 else Decimal(0)
    if kind == "datetime":
        dt = _as_datetime(value)
        if dt is None:
            raise ValueError(f"key value {value!r} is not a timestamp")
        return dt
    return value if isinstance(value, str) else str(value)


_AS_IS = frozenset({str, int, bool})


def jsonable(value: Any) -> Any:
    """A JSON-friendly form of a database value (for findings, events and the store)."""
    if value is None or type(value) in _AS_IS:  # the common case first: no isinstance chain
        return value
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() and abs(value) < 2**53 else float(value)
    if isinstance(value, datetime):
        return to_utc(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):  # MySQL's TIME: as a time of day when it is one
        t = _as_time_of_day(value)
        return t.isoformat() if t is not None else str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def _one_shot(sort_keys: bool) -> Callable[[Any, int], Any]:
    """What ``json.JSONEncoder(separators=(",", ":"), allow_nan=False, sort_keys=...).encode``
    runs, built once: ``encode`` builds a new C encoder (and a dict of the containers it is in)
    on every call, half the cost of a small value's JSON. Without that dict a value that
    contains itself recurses until RecursionError, as ``jsonable`` of it always did."""
    enc = json.JSONEncoder(separators=(",", ":"), allow_nan=False, sort_keys=sort_keys)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the encoder as it is
        return lambda value, _level: (enc.encode(value),)
    return make(  # type: ignore[no-any-return]
        None, enc.default, json.encoder.encode_basestring_ascii, None, ":", ",", sort_keys, False, False
    )


_COMPACT = _one_shot(False)
_COMPACT_SORTED = _one_shot(True)


def json_text(value: Any, *, sort_keys: bool = False) -> str:
    """Compact JSON of ``jsonable(value)``, without walking the value in Python first when the
    JSON encoder takes it as it is (str/int/float/bool/None in dicts and lists: recording a
    million findings encodes four such values each). For values whose dict keys are all
    strings it is exactly ``json.dumps(jsonable(value), separators=(",", ":"), sort_keys=...)``."""
    enc = _COMPACT_SORTED if sort_keys else _COMPACT
    try:
        return "".join(enc(value, 0))
    except (TypeError, ValueError):  # Decimal, datetime, NaN...: their canonical forms
        return "".join(enc(jsonable(value), 0))
