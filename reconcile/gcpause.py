"""Fewer (or no) garbage collections while millions of short-lived rows go by. Plain Python, no I/O.

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

__all__ = ["fewer_collections", "no_collections"]

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


@contextmanager
def no_collections() -> Iterator[None]:
    """The cyclic collector off for the block, on again after (if it was on).

    For a pass that holds only a little (the cause attribution keeps the events touching a
    finding) over a window of a million messages and rows, each making a few short-lived tuples
    and lists: relaxed thresholds still walked the objects the audit holds every so often, 40%
    of that pass's CPU on the 1M-event benchmark (bench/CAUSES.md). Process-wide, like the
    collector itself: another thread's cycles wait until the block ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
