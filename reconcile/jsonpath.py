"""JSON paths: the small subset of JSONPath that names a value inside an event.

Plain Python, no I/O. A path starts at ``$`` (the document) and steps down:

* ``.name`` or ``['name']`` / ``["name"]`` (any characters, ``\\'`` and ``\\\\`` escaped): a member
  of an object;
* ``[3]``, ``[-1]``: an element of an array (negative counts from the end);
* ``[*]`` or ``.*``: every element (of an array) or every member value (of an object).

``$`` alone is the whole document. A path without a wildcard names at most one value
(:meth:`JsonPath.first`); with one it names a list of values (:meth:`JsonPath.find`). Filters,
slices, unions and recursive descent (``..``) are not part of the subset and are refused when
the path is parsed, so a typo fails when a spec loads, not silently at run time.

    >>> p = compile_path("$.data.lines[*].sku")
    >>> p.find({"data": {"lines": [{"sku": "A"}, {"sku": "B"}]}})
    ['A', 'B']
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

__all__ = ["JsonPath", "JsonPathError", "compile_path", "MISSING"]


class _Missing:
    """The path names nothing in this document (distinct from a JSON ``null``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class JsonPathError(ValueError):
    """A path that is not in the subset; the message says where and why."""


# Step kinds: a member name, an array index, every child.
_NAME, _INDEX, _ALL = 0, 1, 2
_DOT_NAME = re.compile(r"[^.\[\]\s'\"]+")
_INDEX_RE = re.compile(r"\[\s*(-?\d+)\s*\]")


@dataclass(frozen=True)
class JsonPath:
    """A parsed path: its text and its steps. Evaluate with :meth:`first` or :meth:`find`."""

    text: str
    steps: tuple[tuple[int, Any], ...]
    # Derived once (paths are evaluated once per message): does it name several values, and the
    # member names when it is nothing but member names (the common case, walked without dispatch).
    wildcard: bool = field(init=False, compare=False)
    names: tuple[str, ...] | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wildcard", any(kind == _ALL for kind, _ in self.steps))
        plain = all(kind == _NAME for kind, _ in self.steps)
        object.__setattr__(self, "names", tuple(arg for _, arg in self.steps) if plain else None)

    @cached_property
    def head(self) -> str | None:
        """The first member name, when the path starts with one (``data`` of ``$.data.x``)."""
        return self.steps[0][1] if self.steps and self.steps[0][0] == _NAME else None

    @cached_property
    def after_head(self) -> JsonPath | None:
        """:meth:`tail` when the path starts with a member name, else None (computed once)."""
        return self.tail() if self.head is not None else None

    def tail(self) -> JsonPath:
        """The path without its first step (``$.x`` of ``$.data.x``)."""
        return JsonPath(_render(self.steps[1:]), self.steps[1:])

    def first(self, doc: Any) -> Any:
        """The value the path names, or :data:`MISSING` (for a wildcard path: :meth:`find`'s list)."""
        names = self.names
        if names is not None:
            cur = doc
            for name in names:
                if type(cur) is not dict:
                    return MISSING
                cur = cur.get(name, MISSING)
                if cur is MISSING:
                    return MISSING
            return cur
        if self.wildcard:
            return self.find(doc)
        cur = doc
        for kind, arg in self.steps:
            if kind == _NAME:
                if type(cur) is not dict:
                    return MISSING
                cur = cur.get(arg, MISSING)
                if cur is MISSING:
                    return MISSING
            else:  # _INDEX
                if type(cur) is not list:
                    return MISSING
                try:
                    cur = cur[arg]
                except IndexError:
                    return MISSING
        return cur

    def find(self, doc: Any) -> list[Any]:
        """Every value the path names, in document order (empty when it names nothing)."""
        current = [doc]
        for kind, arg in self.steps:
            nxt: list[Any] = []
            for cur in current:
                if kind == _NAME:
                    if type(cur) is dict and arg in cur:
                        nxt.append(cur[arg])
                elif kind == _INDEX:
                    if type(cur) is list and -len(cur) <= arg < len(cur):
                        nxt.append(cur[arg])
                elif type(cur) is list:
                    nxt.extend(cur)
                elif type(cur) is dict:
                    nxt.extend(cur.values())
            current = nxt
            if not current:
                break
        return current

    def __str__(self) -> str:
        return self.text


def compile_path(text: str) -> JsonPath:
    """Parse a path of the subset (see the module docstring); raise JsonPathError otherwise."""
    src = text.strip()
    if not src.startswith("$"):
        raise JsonPathError(f"{text!r}: a JSON path starts with $ (like $.data.order_id)")
    steps: list[tuple[int, Any]] = []
    i, n = 1, len(src)
    while i < n:
        c = src[i]
        if src.startswith("..", i):
            raise JsonPathError(f"{text!r}: recursive descent (..) is not supported; name each step")
        if c == ".":
            if src.startswith(".*", i):
                steps.append((_ALL, None))
                i += 2
                continue
            m = _DOT_NAME.match(src, i + 1)
            if not m:
                raise JsonPathError(f"{text!r}: expected a member name after '.' at position {i + 1}")
            steps.append((_NAME, m.group()))
            i = m.end()
        elif c == "[":
            if src.startswith("[*]", i):
                steps.append((_ALL, None))
                i += 3
                continue
            m = _INDEX_RE.match(src, i)
            if m:
                steps.append((_INDEX, int(m.group(1))))
                i = m.end()
                continue
            j = i + 1
            while j < n and src[j] == " ":
                j += 1
            if j >= n or src[j] not in "'\"":
                raise JsonPathError(
                    f"{text!r}: at position {i}: expected [N], [*] or ['name'] "
                    "(filters, slices and unions are not supported)"
                )
            name, j = _quoted(src, j, text)
            while j < n and src[j] == " ":
                j += 1
            if j >= n or src[j] != "]":
                raise JsonPathError(f"{text!r}: missing ']' after the name at position {j}")
            steps.append((_NAME, name))
            i = j + 1
        else:
            raise JsonPathError(f"{text!r}: unexpected {c!r} at position {i} (use .name or ['name'])")
    return JsonPath(src, tuple(steps))


def _render(steps: tuple[tuple[int, Any], ...]) -> str:
    """The text of a path made of these steps."""
    out = ["$"]
    for kind, arg in steps:
        if kind == _NAME:
            plain = _DOT_NAME.fullmatch(arg) and arg != "*"
            out.append(f".{arg}" if plain else "['" + arg.replace("\\", "\\\\").replace("'", "\\'") + "']")
        elif kind == _INDEX:
            out.append(f"[{arg}]")
        else:
            out.append("[*]")
    return "".join(out)


def _quoted(src: str, j: int, text: str) -> tuple[str, int]:
    """The quoted name starting at ``src[j]`` and the index just past its closing quote."""
    quote = src[j]
    out: list[str] = []
    k = j + 1
    while k < len(src):
        ch = src[k]
        if ch == "\\" and k + 1 < len(src):
            out.append(src[k + 1])
            k += 2
            continue
        if ch == quote:
            return "".join(out), k + 1
        out.append(ch)
        k += 1
    raise JsonPathError(f"{text!r}: unterminated quoted name starting at position {j}")
