"""The collector's pauses used by the long passes over a side or a window: they always restore it."""

from __future__ import annotations

import gc

import pytest

from reconcile.gcpause import RELAXED, fewer_collections, no_collections


def test_no_collections_turns_the_collector_off_and_back_on() -> None:
    assert gc.isenabled()
    with no_collections():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_no_collections_restores_it_after_an_error_and_leaves_it_off_if_it_was() -> None:
    with pytest.raises(RuntimeError), no_collections():
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with no_collections():
            pass
        assert not gc.isenabled()  # the caller had turned it off: not ours to turn on
    finally:
        gc.enable()


def test_fewer_collections_relaxes_the_thresholds_once_for_nested_uses() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold() == RELAXED
        with fewer_collections():
            assert gc.get_threshold() == RELAXED
        assert gc.get_threshold() == RELAXED  # the inner block does not restore early
    assert gc.get_threshold() == before
