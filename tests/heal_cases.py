"""A healing scenario shared by the embedded (SQLite) and the Kafka (PostgreSQL) tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from reconcile.spec import Spec, spec_from_dict

from .builders import make_table


def build_pair(truth_url: str, proj_url: str, n: int = 200) -> None:
    """Truth: n stock rows. Projection: same, minus every 10th (missing), on_hand off on every
    7th (mismatch), two orphans and one duplicate."""
    truth: list[dict[str, Any]] = [{"sku": f"S{i:05d}", "on_hand": i, "title": f"item {i}"} for i in range(n)]
    make_table(
        truth_url,
        "stock",
        [
            sa.Column("sku", sa.String(20), primary_key=True),
            sa.Column("on_hand", sa.Integer),
            sa.Column("title", sa.Text),
        ],
        truth,
    )
    proj = []
    for r in truth:
        i = r["on_hand"]
        if i % 10 == 3:
            continue
        row = {"product_id": r["sku"], "on_hand": i + (100 if i % 7 == 5 else 0), "title": r["title"]}
        proj.append(row)
        if i == 11:
            proj.append(dict(row))
    proj += [
        {"product_id": "ZZ-1", "on_hand": 1, "title": "gone"},
        {"product_id": "ZZ-2", "on_hand": 2, "title": "gone"},
    ]
    make_table(
        proj_url,
        "stock_view",
        [
            sa.Column("product_id", sa.String(20)),
            sa.Column("on_hand", sa.Integer),
            sa.Column("title", sa.Text),
        ],
        proj,
    )


def expected_findings(n: int = 200) -> int:
    missing = sum(1 for i in range(n) if i % 10 == 3)
    mismatch = sum(1 for i in range(n) if i % 7 == 5 and i % 10 != 3)
    return missing + mismatch + 2 + 1  # + orphans + duplicate


def heal_spec(
    truth_url: str, proj_url: str, *, topic: str, group: str, transport: str, **correction: object
) -> Spec:
    return spec_from_dict(
        {
            "name": f"stock-{group}",
            "truth": {"url": truth_url, "table": "stock"},
            "projection": {"url": proj_url, "table": "stock_view"},
            "key": [{"sku": "product_id"}],
            "columns": {"on_hand": {}, "title": {}},
            "correction": {
                "topic": topic,
                "event_type": "StockLevelReconciled",
                "consumer_group": group,
                "transport": transport,
                "max_ratio": 0.5,
                "max_count": 1000,
                **correction,
            },
        }
    )


def write_spec_file(path: Path, spec: Spec) -> Path:
    import yaml

    doc = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["key"] = [{k.truth: k.projection} for k in spec.key]
    doc["freshness"]["grace"] = f"{int(spec.freshness.grace.total_seconds())}s"
    if spec.correction is not None:
        doc["correction"]["verify_timeout"] = f"{int(spec.correction.verify_timeout.total_seconds())}s"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
