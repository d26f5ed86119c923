"""Row hashes that PostgreSQL and MariaDB/MySQL compute alike, for checksum pushdown across engines.

Between two PostgreSQL databases the checksum path chains PostgreSQL's typed hash functions
(:mod:`reconcile.sources.checksum`). MariaDB has none of them, so where either side is MariaDB
or MySQL both sides hash a **canonical text** of each row with a function both servers have,
the way reladiff does across engines: ``md5`` of the text, its first 16 hex digits read as a
64-bit integer (signed on PostgreSQL, unsigned on MariaDB: the same bits, which is all the
bucket arithmetic and the XOR fold look at; :func:`unsigned` maps both to one Python value).

The canonical text of a row is the concatenation of one element per value: ``n`` for NULL, else
``<characters>:<text>`` (so no value's text can be mistaken for a separator or for NULL). Each
value's text is put in a form both engines print alike where the two sides' types differ:

* integers (and booleans, as ``0``/``1``): their decimal text;
* exact numbers: without trailing fractional zeros (``9.50`` -> ``9.5``, ``10.00`` -> ``10``);
* timestamps: ``YYYY-MM-DD HH:MM:SS.ffffff`` (a PostgreSQL ``timestamptz`` in UTC), dates
  ``YYYY-MM-DD``;
* text and the rest: as the server prints it.

As between two PostgreSQL databases, correctness never rests on that form: a bucket is skipped
only when both sides' counts and hash folds agree, so a representation both engines print
differently (a float's digits, a JSON document's spacing) only makes buckets differ, and their
rows are fetched and judged by the streaming merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .sql import _type_kind

__all__ = ["DIALECTS", "is_bool", "portable", "row_hash", "value_text", "unsigned"]

DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})
MASK64 = (1 << 64) - 1
_CONCAT_ARGS = 50  # PostgreSQL's concat() takes at most 100 arguments: nest beyond this

Expr = sa.ColumnElement[Any]


def portable(truth_dialect: str, projection_dialect: str) -> bool:
    """Whether a pair hashes through the portable text form (not both PostgreSQL, both supported)."""
    pair = {truth_dialect, projection_dialect}
    return pair <= DIALECTS and pair != {"postgresql"}


def unsigned(n: int) -> int:
    """A 64-bit fold as one Python value, whichever engine (signed or unsigned) returned it."""
    return int(n) & MASK64


def _mysql(dialect: str) -> bool:
    return dialect in ("mysql", "mariadb")


def is_bool(t: Any) -> bool:
    """A boolean column type (or a bool sampled from a query's row)."""
    return isinstance(t, sa.Boolean) or (isinstance(t, type) and issubclass(t, bool))


def _is_exact(t: Any) -> bool:
    return isinstance(t, sa.Numeric) and not isinstance(t, sa.Float)


def _text(col: Expr, dialect: str = "postgresql") -> Expr:
    """A value as text. MariaDB's string functions take any value as its text (the form CAST
    AS CHAR gives), so it needs no cast, which would cost a quarter of the summary scan."""
    return col if _mysql(dialect) else sa.cast(col, sa.Text)


def _trimmed_number(col: Expr, dialect: str) -> Expr:
    """An exact number's text without trailing fractional zeros, on either engine."""
    if not _mysql(dialect):
        return _text(sa.func.trim_scale(sa.cast(col, sa.Numeric)))
    s = _text(col)  # MariaDB has no trim_scale: drop the zeros (and a bare point) after a point
    return sa.case((sa.func.locate(".", s) > 0, sa.func.regexp_replace(s, r"\.?0+$", "")), else_=s)


def _time_text(col: Expr, t: Any, dialect: str) -> Expr:
    date_only = isinstance(t, sa.Date) and not isinstance(t, sa.DateTime)
    if _mysql(dialect):
        return sa.func.date_format(col, "%Y-%m-%d" if date_only else "%Y-%m-%d %H:%i:%s.%f")
    if date_only:
        return sa.func.to_char(col, "YYYY-MM-DD")
    if isinstance(t, sa.DateTime) and t.timezone:
        col = sa.func.timezone("UTC", col)
    return sa.func.to_char(col, "YYYY-MM-DD HH24:MI:SS.US")


def value_text(col: Expr, mine: Any, other: Any, dialect: str) -> Expr:
    """One value's canonical text on this side (``mine``: its type; ``other``: the other side's)."""
    kinds = {_type_kind(mine), _type_kind(other)}
    if is_bool(mine):
        return _text(sa.cast(col, sa.Integer), dialect)
    if kinds <= {"int"} and not (_is_exact(mine) and _type_kind(mine) != "int"):
        return _text(col, dialect)
    if kinds <= {"int", "number"} and not any(isinstance(t, sa.Float) for t in (mine, other)):
        scales = {getattr(t, "scale", None) for t in (mine, other) if _is_exact(t)}
        if len(scales) == 1 and None not in scales and all(_is_exact(t) for t in (mine, other)):
            return _text(col, dialect)  # the same scale on both sides: both print it alike
        return _trimmed_number(col, dialect)
    if _type_kind(mine) == "datetime" and isinstance(mine, sa.types.TypeEngine):
        return _time_text(col, mine, dialect)
    return _text(col, dialect)


def _element(text: Expr, dialect: str) -> Expr:
    """``n`` for NULL, else ``<length>:<text>``: unambiguous whatever the text holds.

    The concatenation must be NULL when the text is: MariaDB's CONCAT is, PostgreSQL's ``||``
    is (its concat() is not)."""
    length = _text(sa.func.char_length(text), dialect)
    joined = (
        sa.func.concat(length, ":", text)
        if _mysql(dialect)
        else sa.literal_column("''", sa.Text)
        .op("||")(length)
        .op("||")(sa.literal(":", sa.Text))
        .op("||")(text)
    )
    return sa.func.coalesce(joined, sa.literal("n"))


def _concat(parts: Sequence[Expr]) -> Expr:
    if len(parts) == 1:
        return sa.func.concat(parts[0], sa.literal(""))
    while len(parts) > _CONCAT_ARGS:
        parts = [sa.func.concat(*parts[i : i + _CONCAT_ARGS]) for i in range(0, len(parts), _CONCAT_ARGS)]
    return sa.func.concat(*parts)


def row_hash(texts: Sequence[Expr], dialect: str) -> Expr:
    """A 64-bit hash of the canonical texts: the first 16 hex digits of their md5."""
    digest = sa.func.md5(_concat([_element(t, dialect) for t in texts]))
    if _mysql(dialect):
        from sqlalchemy.dialects import mysql  # only for MariaDB/MySQL pairs

        return sa.cast(sa.func.conv(sa.func.left(digest, 16), 16, 10), mysql.BIGINT(unsigned=True))
    from sqlalchemy.dialects import postgresql as pg

    hexed = sa.literal("x", sa.Text) + sa.func.substr(digest, 1, 16)
    return sa.cast(sa.cast(hexed, pg.BIT(64)), sa.BigInteger)
