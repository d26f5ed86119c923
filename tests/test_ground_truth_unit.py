"""The replay's ground truth: an event reported lost that reached the projection is not lost."""

from __future__ import annotations

from reconcile.shop.load import GroundTruth
from reconcile.shop.service import PlacedOrder


def order(n: int, warehouse: str, *skus: str, at: float = 0.0) -> PlacedOrder:
    return PlacedOrder(f"e{n}", n, warehouse, tuple((s, 1, 1) for s in skus), at)


def test_an_event_that_arrived_after_all_is_not_lost_and_its_entities_only_through_others() -> None:
    truth = GroundTruth()
    a, b, c = order(1, "W1", "x", "y"), order(2, "W1", "y"), order(3, "W2", "z")
    for o in (a, b, c):
        truth.record_order(o)
        truth.record_delivery(o, False, "Local: Message timed out")
    assert truth.lost_entities == {("W1", "x"), ("W1", "y"), ("W2", "z")}

    truth.arrived_after_all(["e1", "e3", "not-an-event"])  # the broker had written e1 and e3

    assert truth.lost_events == ["e2"] and truth.lost_orders == [2]
    assert truth.lost_entities == {("W1", "y")}  # still lost through e2; x and z are not
    score = truth.score({("W1", "y")}, grace_s=0.0, at=10.0)
    assert (score.expected, score.true_positives, score.precision, score.recall) == (1, 1, 1.0, 1.0)
    # Found x now counts against precision: its only lost event arrived.
    assert truth.score({("W1", "x"), ("W1", "y")}, grace_s=0.0, at=10.0).precision == 0.5
