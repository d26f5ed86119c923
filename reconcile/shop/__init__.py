"""The reference shop: an order service, its inventory projection, faults, and a load generator.

Used by the incident replay tests, the demo (`reconcile demo`) and the benchmarks; small on
purpose. See :mod:`reconcile.shop.service` for the two publishing modes (``direct`` has the
dual-write bug, ``outbox`` does not).
"""

from .channel import Channel, EmbeddedChannel, KafkaChannel
from .load import GroundTruth, LoadGenerator, Score
from .projector import InventoryProjector, wait_until
from .service import ORDERS_TOPIC, OrderService, ShopRelay
from .world import create_world

__all__ = [
    "Channel",
    "EmbeddedChannel",
    "KafkaChannel",
    "GroundTruth",
    "LoadGenerator",
    "Score",
    "InventoryProjector",
    "OrderService",
    "ShopRelay",
    "ORDERS_TOPIC",
    "create_world",
    "wait_until",
    "spec_path",
    "stage_spec_paths",
]


def spec_path() -> str:
    """The worked-example spec: package data here (the repo's specs/shop-inventory.yaml links to it)."""
    import os
    from pathlib import Path

    env = os.environ.get("RECONCILE_SHOP_SPEC")
    return env or str(Path(__file__).resolve().parent / "shop-inventory.yaml")


def stage_spec_paths() -> dict[str, str]:
    """The stage specs of the shop's event path (package data): orders -> topic, topic -> journal."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    return {
        "published": str(here / "shop-orders-published.yaml"),
        "applied": str(here / "shop-orders-applied.yaml"),
    }
