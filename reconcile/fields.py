"""Message fields: what one column of a topic side is made of. Plain Python, no I/O.

A topic side reads a Kafka topic as a table; each column is a *field* of the message, written
in the spec as one of:

* ``key`` — the message key (text); ``partition``, ``offset`` — where the message sits;
  ``timestamp`` — the message timestamp (UTC);
* ``header:NAME`` — the header ``NAME`` (text; the last one when it repeats);
* ``$``, ``$.path.in.value`` — a JSON path (:mod:`reconcile.jsonpath`) into the message value.

CloudEvents in either content mode read the same. In *binary* mode the attributes travel as
``ce_*`` headers and the value is the ``data``; in *structured* mode the value is the whole
event (``{"specversion": ..., "id": ..., "data": {...}}``). A path is looked up in the value
first and, when it names nothing there, in the other mode's view: ``$.data.x`` and ``$.id`` work
on a binary-mode message, ``$.x`` (inside ``data``) and ``header:ce_id`` on a structured one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .jsonpath import MISSING, JsonPath, JsonPathError, compile_path

__all__ = [
    "Field",
    "FieldError",
    "parse_field",
    "BUILTIN_COLUMNS",
    "MESSAGE_PARTS",
    "cloudevent_envelope",
    "structured_data",
    "lookup",
]

MESSAGE_PARTS = ("key", "partition", "offset", "timestamp")
# Columns every topic side has, whatever its fields: where each message sits and when it was written.
BUILTIN_COLUMNS = ("_partition", "_offset", "_timestamp")

Part = Literal["key", "partition", "offset", "timestamp", "header", "json"]


class FieldError(ValueError):
    """A field expression that is none of the accepted forms."""


@dataclass(frozen=True)
class Field:
    """One parsed field: which part of the message, and the header name or JSON path."""

    text: str
    part: Part
    header: str | None = None
    path: JsonPath | None = None

    @property
    def uses_value(self) -> bool:
        """Whether evaluating this field needs the message value decoded as JSON."""
        return self.part == "json"


def parse_field(text: Any) -> Field:
    """Parse ``key``, ``partition``, ``offset``, ``timestamp``, ``header:NAME`` or a ``$`` path."""
    if not isinstance(text, str) or not text.strip():
        raise FieldError(
            f"{text!r} is not a field: use key, partition, offset, timestamp, header:NAME or $.json.path"
        )
    t = text.strip()
    if t in MESSAGE_PARTS:
        return Field(t, t)  # type: ignore[arg-type]
    if t.startswith("header:"):
        name = t[len("header:") :]
        if not name:
            raise FieldError(f"{text!r}: header: needs a header name (header:ce_id)")
        return Field(t, "header", header=name)
    if t.startswith("$"):
        try:
            return Field(t, "json", path=compile_path(t))
        except JsonPathError as e:
            raise FieldError(str(e)) from None
    raise FieldError(
        f"{text!r} is not a field: use key, partition, offset, timestamp, header:NAME or $.json.path"
    )


def cloudevent_envelope(headers: Mapping[str, Any], data: Any) -> dict[str, Any] | None:
    """The structured-mode view of a binary-mode CloudEvent (``ce_*`` headers + ``data``), or None
    when the message is no binary-mode CloudEvent."""
    if "ce_specversion" not in headers and "ce_id" not in headers:
        return None
    env: dict[str, Any] = {k[3:]: v for k, v in headers.items() if k.startswith("ce_")}
    if "content-type" in headers:
        env.setdefault("datacontenttype", headers["content-type"])
    env["data"] = data
    return env


def structured_data(value: Any) -> Any:
    """The ``data`` of a structured-mode CloudEvent (a dict with ``specversion``), else MISSING."""
    if type(value) is dict and "specversion" in value:
        return value.get("data", MISSING)
    return MISSING


def lookup(path: JsonPath, value: Any, headers: Mapping[str, Any]) -> Any:
    """Evaluate ``path`` on a decoded value, falling back to the other CloudEvents mode's view.

    Returns MISSING when the path names nothing in either view (a wildcard path: a list).
    """
    got = path.first(value)
    if got is not MISSING and not (path.wildcard and not got):
        return got
    alt = structured_data(value)
    if alt is MISSING:
        alt = cloudevent_envelope(headers, value) if headers else None
        if alt is None:
            return got
    other = path.first(alt)
    return other if other is not MISSING else got
