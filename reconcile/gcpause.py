"""Fewer garbage collections while millions of short-lived rows go by. Plain Python, no I/O.

CPython's cyclic collector runs after every 700 net container allocations, and every so often
scans every object the process holds. Reading a side turns each message or row into a few
tuples: tens of millions of containers per run, none of them in a cycle (reference counting
frees them), so those scans find nothing. On the topic benchmark (1M messages) they took half
of the topic read's CPU. Inside :func:`fewer_collections` the collector runs about a hundred
times less often; it still runs, so a cycle made meanwhile (an exception's traceback) is freed.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["fewer_collections"]

# gen0 after 100,000 allocations (not 700), gen1 after 50 of those, gen2 after 100 of those.
RELAXED = (100_000, 50, 100)

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Relax the collector's thresholds for the block (nested and threaded uses restore them once)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            if _saved[0] and _saved[0] < RELAXED[0]:  # 0: the caller turned collection off; leave it
                gc.set_threshold(*RELAXED)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
