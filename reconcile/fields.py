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
    "header_value",
    "is_binary_cloudevent",
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


def header_value(headers: Any, name: str) -> str | None:
    """The text of header ``name`` (the last one when it repeats) from a dict or a list of
    (name, bytes) pairs as Kafka clients hand them over; None when absent."""
    if not headers:
        return None
    if headers.__class__ is list:  # what confluent-kafka hands over: the fast path
        raw = None
        for k, v in headers:
            if k == name:
                raw = v
    elif isinstance(headers, Mapping):
        raw = headers.get(name)
    else:
        raw = None
        for k, v in headers:
            if k == name:
                raw = v
    if raw is None or isinstance(raw, str):
        return raw
    return bytes(raw).decode("utf-8", "replace")


def is_binary_cloudevent(headers: Any) -> bool:
    """Whether the message is a CloudEvent in binary mode (``ce_specversion`` or ``ce_id`` header)."""
    return header_value(headers, "ce_specversion") is not None or header_value(headers, "ce_id") is not None


def cloudevent_envelope(headers: Any, data: Any) -> dict[str, Any] | None:
    """The structured-mode view of a binary-mode CloudEvent (``ce_*`` headers + ``data``), or None
    when the message is no binary-mode CloudEvent."""
    if not is_binary_cloudevent(headers):
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    env: dict[str, Any] = {k[3:]: header_value(headers, k) for k, _ in items if k.startswith("ce_")}
    if (ct := header_value(headers, "content-type")) is not None:
        env.setdefault("datacontenttype", ct)
    env["data"] = data
    return env


def structured_data(value: Any) -> Any:
    """The ``data`` of a structured-mode CloudEvent (a dict with ``specversion``), else MISSING."""
    if type(value) is dict and "specversion" in value:
        return value.get("data", MISSING)
    return MISSING


def lookup(path: JsonPath, value: Any, headers: Any, binary: bool | None = None) -> Any:
    """Evaluate ``path`` on a decoded value, falling back to the other CloudEvents mode's view.

    ``headers``: a dict or a list of (name, bytes) pairs; ``binary``: whether they make the
    message a binary-mode CloudEvent, when the caller knows already. Returns MISSING when the
    path names nothing in either view (a wildcard path: an empty list).
    """
    got = path.first(value)
    if got is not MISSING and not (path.wildcard and not got):
        return got
    if type(value) is dict and "specversion" in value:  # structured: try inside data
        data = value.get("data", MISSING)
        other = path.first(data) if data is not MISSING else MISSING
    elif not (is_binary_cloudevent(headers) if binary is None else binary):
        return got
    elif path.head == "data":  # binary: the value is the data
        assert path.after_head is not None
        other = path.after_head.first(value)
    elif len(path.steps) == 1 and path.head is not None:  # binary: an attribute is a header
        other = header_value(headers, "ce_" + path.head)
        if other is None and path.head == "datacontenttype":
            other = header_value(headers, "content-type")
        other = MISSING if other is None else other
    else:
        other = path.first(cloudevent_envelope(headers, value))
    if other is MISSING or (path.wildcard and not other):
        return got
    return other
