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
    JSON object by truth names (``{"warehouse": "W1", "sku": "A-1"}``); a file may hold JSON lines.
    """
    if value is None:
        return None
    names = spec.key_truth
    items: list[Any]
    if isinstance(value, str):
        path = Path(value)
        if value.lstrip().startswith("[") and not path.exists():
            items = json.loads(value)
        elif path.is_file():
            items = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            items = [ln for ln in items if ln and not ln.startswith("#")]
        else:
            items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = list(value)
    out: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, str) and item.startswith("{"):
            item = json.loads(item)
        if isinstance(item, dict):
            missing = [n for n in names if n not in item]
            if missing:
                raise SpecError(f"--keys: key {item} lacks {missing} (the key is {names})")
            out.append(tuple(item[n] for n in names))
        elif isinstance(item, list | tuple):
            out.append(tuple(item))
        else:
            parts = str(item).split(":", len(names) - 1) if len(names) > 1 else [item]
            if len(parts) != len(names):
                raise SpecError(
                    f"--keys: {item!r} has {len(parts)} part(s); the key {names} has {len(names)}"
                )
            out.append(tuple(parts))
    return out


def canonical_keys(keys: Sequence[tuple[Any, ...]], kinds: Sequence[str]) -> list[tuple[Any, ...]]:
    """Keys in the canonical form of each key column's kind, sorted and without repeats."""
    try:
        return sorted({tuple(key_part(v, k) for v, k in zip(key, kinds, strict=True)) for key in keys})
    except ValueError as e:
        raise SpecError(f"--keys: {e}") from None
