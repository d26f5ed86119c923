"""Micro-benchmark of building corrective events: Python CPU per finding, no services.

    PYTHONPATH=$PWD .venv/bin/python bench/event_build.py --findings 50000

Findings of ``bench/heal.py``'s shape (kind missing, key ``{"sku": "S0000123"}`` renamed to
``product_id``, truth ``{"on_hand": 123, "title": "item 123"}``, the builder's own clock) go
through ``EventBuilder.parts`` alone (*parts*), and through what ``correct`` does with each on
its main thread after the store hands it over (*decide + COPY text*: parts, the wire-size check,
the ``OutboxEntry``, the outbox row and its line of COPY text, pages of 5,000). Each is run
``--repeat`` times after a warm-up; CPU is the process's user + sys time (getrusage), so other
processes on the machine move it less than the wall time. Point PYTHONPATH at another tree
(``git archive <rev> | tar -x -C /tmp/x``) to compare.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable

from reconcile.app.heal import _wire_size
from reconcile.events.cloudevent import EventBuilder
from reconcile.findings import Finding, FindingKind
from reconcile.spec import spec_from_dict
from reconcile.store import bulk
from reconcile.store.port import OutboxEntry

SPEC = spec_from_dict(
    {
        "name": "bench-events",
        "truth": {"url": "sqlite://", "table": "stock"},
        "projection": {"url": "sqlite://", "table": "stock_view"},
        "key": [{"sku": "product_id"}],
        "columns": {"on_hand": {}, "title": {}},
        "correction": {"topic": "t", "event_type": "StockLevelReconciled", "transport": "kafka"},
    }
)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def parts(findings: list[Finding]) -> None:
    builder = EventBuilder(SPEC, "run-1")
    for f in findings:
        builder.parts(f)


def decide_and_copy_text(findings: list[Finding]) -> None:
    builder = EventBuilder(SPEC, "run-1")
    c = SPEC.correction
    assert c is not None
    for start in range(0, len(findings), 5000):
        entries = []
        for f in findings[start : start + 5000]:
            p = builder.parts(f)
            if _wire_size(p.subject, p.value, p.headers) > c.max_event_bytes:
                continue
            entries.append(
                OutboxEntry(f.key_id, p.id, c.topic, c.transport, p.subject, p.headers, p.value, p.time)
            )
        rows = [
            (
                e.event_id,
                SPEC.name,
                "run-1",
                i,
                e.topic,
                e.transport,
                e.message_key,
                e.headers,
                e.payload,
                e.created_at,
            )
            for i, e in enumerate(entries)
        ]
        bulk.outbox_lines(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--findings", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.findings
    findings = [
        Finding(FindingKind.MISSING, {"sku": f"S{i:07d}"}, truth={"on_hand": i, "title": f"item {i}"})
        for i in range(n)
    ]
    for f in findings:
        f.key_id  # noqa: B018 - worked out once here, as the store hands it over
    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {n:,} findings, CPU / wall us per finding")
    stages: list[tuple[str, Callable[[list[Finding]], None]]] = [
        ("parts", parts),
        ("decide + COPY text", decide_and_copy_text),
    ]
    for label, fn in stages:
        fn(findings[:5000])  # warm-up
        runs = []
        for _ in range(args.repeat):
            c0, w0 = _cpu(), time.perf_counter()
            fn(findings)
            runs.append(((_cpu() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6))
        cpu = ", ".join(f"{c:.1f}" for c, _ in runs)
        wall = ", ".join(f"{w:.1f}" for _, w in runs)
        print(f"{label:20} CPU {cpu} (min {min(c for c, _ in runs):.1f})  wall {wall}")


if __name__ == "__main__":
    main()
