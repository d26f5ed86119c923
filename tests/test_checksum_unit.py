"""The read-ahead iterator of the checksum strategy: order, errors, early close, eager start."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from reconcile.errors import SourceError
from reconcile.sources.checksum import _read_ahead


def test_keeps_order_across_chunks() -> None:
    assert list(_read_ahead(iter(range(10_001)), chunk=7, depth=2)) == list(range(10_001))
    assert list(_read_ahead(iter([]))) == []


def test_error_in_the_thread_is_raised_to_the_consumer() -> None:
    def rows() -> Iterator[int]:
        yield 1
        raise SourceError("truth: query failed")

    with pytest.raises(SourceError, match="truth: query failed"):
        list(_read_ahead(rows(), chunk=1))


def test_early_close_stops_the_thread_and_closes_the_source() -> None:
    closed = threading.Event()

    def rows() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            closed.set()

    it = _read_ahead(rows(), chunk=10, depth=1)
    assert next(it) == 0
    it.close()  # type: ignore[attr-defined]
    assert closed.wait(5)


def test_reading_starts_before_the_first_next() -> None:
    """Both sides' queries start at once: a side does not wait to be asked for its first row."""
    started = [threading.Event(), threading.Event()]

    def rows(i: int) -> Iterator[int]:
        started[i].set()
        yield i

    first, second = _read_ahead(rows(0)), _read_ahead(rows(1))
    assert started[1].wait(5) and started[0].is_set()  # nobody called next() yet
    assert (next(first), next(second)) == (0, 1)
    first.close()
    second.close()
