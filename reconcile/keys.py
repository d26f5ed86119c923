"""Entity keys as users write them (``--keys``, the on-demand DAG's ``keys`` param), parsed.

Plain Python: a file of keys, a comma-separated list, ``W1:A-1`` for a composite key, or JSON
objects by truth column names. Canonical forms (the types the diff compares by) come from
:func:`canonical_keys`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compare import key_part
from .errors import SpecError
from .spec import Spec

__all__ = ["parse_keys", "canonical_keys"]


def parse_keys(value: str | Sequence[Any] | None, spec: Spec) -> list[tuple[Any, ...]] | None:
    """Entity keys from ``--keys``: a file (one key per line) or a comma-separated list.

    A composite key is written with ``:`` between its parts in key order (``W1:A-1``), or as a
    JSON object by truth names (``{"warehouse": "W1", "sku": "A-1"}``; several as a JSON list or
    one after the other); a file may hold JSON lines. A key whose parts themselves hold ``:``
    must use the JSON form. Anything malformed — no keys at all, a wrong number of parts,
    invalid JSON, an object lacking a key column — raises SpecError (exit 2): a mistyped key
    list must never turn into a clean audit of nothing.
    """
    if value is None:
        return None
    names = spec.key_truth
    items: list[Any]
    if isinstance(value, str):
        text = value.strip()
        path = Path(value)
        if text.startswith(("[", "{")) and not path.exists():
            items = _json_values(text, "--keys")
        elif path.is_file():
            items = []
            for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                ln = ln.strip()
                if not ln or ln.startswith("#"):
                    continue
                items += _json_values(ln, f"--keys {value}:{n}") if ln.startswith(("{", "[")) else [ln]
        else:
            items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = list(value)
    out: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, str) and item.startswith("{"):
            (item,) = _json_values(item, "--keys")
        if isinstance(item, dict):
            missing = [n for n in names if n not in item]
            extra = [k for k in item if k not in names]
            if missing or extra:
                wrong = f"lacks {missing}" if missing else f"has unknown column(s) {extra}"
                raise SpecError(f"--keys: key {json.dumps(item)} {wrong} (the key is {names})")
            out.append(tuple(item[n] for n in names))
        elif isinstance(item, list | tuple):
            if len(item) != len(names):
                raise SpecError(
                    f"--keys: {list(item)!r} has {len(item)} part(s); the key {names} has {len(names)}"
                )
            out.append(tuple(item))
        else:
            parts = str(item).split(":") if len(names) > 1 else [item]
            if len(parts) != len(names):
                hint = (
                    ' (a part holding ":" needs the JSON form: '
                    + json.dumps(dict(zip(names, ["..."] * len(names), strict=True)))
                    + ")"
                    if len(parts) > len(names)
                    else ""
                )
                raise SpecError(
                    f"--keys: {item!r} has {len(parts)} part(s); the key {names} has {len(names)}{hint}"
                )
            out.append(tuple(parts))
    if not out:
        raise SpecError(f"--keys: no keys in {value!r} (leave --keys out to audit every entity)")
    return out


def _json_values(text: str, origin: str) -> list[Any]:
    """JSON values in ``text``: one array (its items), or objects one after the other
    (separated by spaces, commas or new lines)."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i, n = 0, len(text)
    try:
        while i < n:
            while i < n and text[i] in " \t\r\n,":
                i += 1
            if i >= n:
                break
            value, i = decoder.raw_decode(text, i)
            out += value if isinstance(value, list) and not out and i >= len(text.rstrip()) else [value]
    except json.JSONDecodeError as e:
        raise SpecError(f"{origin}: invalid JSON at character {e.pos + 1}: {e.msg}") from None
    for v in out:
        if not isinstance(v, dict | list | str | int | float):
            raise SpecError(f"{origin}: {json.dumps(v)} is not a key")
    return out


def canonical_keys(keys: Sequence[tuple[Any, ...]], kinds: Sequence[str]) -> list[tuple[Any, ...]]:
    """Keys in the canonical form of each key column's kind, sorted and without repeats."""
    try:
        return sorted({tuple(key_part(v, k) for v, k in zip(key, kinds, strict=True)) for key in keys})
    except ValueError as e:
        raise SpecError(f"--keys: {e}") from None
