"""The diff of a large topic side split by key range across two processes.

After a topic side has been read into its SQLite spill, the diff (the spill read back in key
order, the other side read from its database, the merge) is one Python process's work while
the machine's other core idles (bench/TOPIC.md). From ``SPLIT_MIN`` spilled rows the key order
is cut in two at a first-key value of the spill near its median (found through its key index, as
fan-out's ``split_ranges`` finds quantiles; this process takes ``WORKER_START_ROWS`` more rows,
the worker's import time); a worker process diffs the upper range while this process
diffs the lower one, and the outcomes are joined in key order.

Why the result is the single-process one: both halves run the same ``diff_rows`` over the same
statements with a ``lo <= first key < hi`` filter on both sides (the fan-out's range filter, the
same expression the reads order by), so every key group — a key's truth row and all its
projection rows, duplicates included — falls whole into one half; findings of the lower half
all come before the upper half's, as in one pass; counts add up and watched-key sets unite
(``DiffOutcome.merge``). Per-row progress ticks for the worker's rows are given after it ends.

The worker is a plain interpreter (``python -m reconcile.app.split``, never fork: librdkafka's
threads live in this process) given one pickle in a file: both sides without their engines
(reopened there, the spill read-only), the plans, rules, clock and range. Its findings come back
through a file, pickled a batch at a time, so memory stays bounded however much drift there is;
a failure comes back as the exception it raised. The split is not used for ``--keys`` (a few
keys), a fan-out range, a throttled spec (paced chunks, one session budget) or when a side
cannot be handed over; ``RECONCILE_TOPIC_SPLIT_MIN`` sets another bound (a huge one turns it off).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import IO, Any

from ..compare import ColumnRule
from ..diff import DiffOutcome, diff_rows
from ..errors import SourceError
from ..findings import Finding
from ..sources.ranges import KeyRange, cut_ranges, range_filter
from ..sources.sql import ReadPlan, SqlSource, open_engine

__all__ = ["SPLIT_MIN", "split_wanted", "split_diff"]

# Spilled rows from which the diff is split (about 7 s of diff per million rows; a worker costs
# ~0.7 s of imports, on the other core). RECONCILE_TOPIC_SPLIT_MIN sets another bound.
SPLIT_MIN = 200_000
# The worker first spends ~0.9 s of CPU importing (SQLAlchemy, the spec's models), worth about
# this many rows of diff: this process takes that many more rows than the worker.
WORKER_START_ROWS = 120_000
_BATCH = 1000  # findings per pickle frame in the worker's file
_KEEP_OUT = ("engine", "throttle", "reader")  # reopened (or not needed) in the worker


def split_wanted(
    truth: SqlSource, projection: SqlSource, tplan: ReadPlan, pplan: ReadPlan
) -> SqlSource | None:
    """The topic side whose spill decides the split, when the diff should be split; else None."""
    if truth.throttle is not None or projection.throttle is not None:
        return None
    raw = os.environ.get("RECONCILE_TOPIC_SPLIT_MIN", "").strip()
    least = int(raw) if raw else SPLIT_MIN
    best: SqlSource | None = None
    for src, plan in ((truth, tplan), (projection, pplan)):
        if not src.is_topic:
            continue
        src.load(plan)  # type: ignore[attr-defined]  # the spill is made by now (null_keys); once
        rows = src.stats.rows  # type: ignore[attr-defined]
        if rows >= least and (best is None or rows > best.stats.rows):  # type: ignore[attr-defined]
            best = src
    return best


def split_diff(
    topic: SqlSource,
    truth: SqlSource,
    projection: SqlSource,
    plans: tuple[ReadPlan, ReadPlan],
    rules: list[ColumnRule],
    key_names: list[str],
    *,
    where: str | None,
    now: datetime,
    grace: timedelta,
    watch: set[tuple[Any, ...]],
    on_row: Callable[[], None] | None,
    sink: Callable[[Finding], None] | None,
) -> DiffOutcome | None:
    """Diff the pair in two key ranges, the upper one in a worker; None when no cut exists
    (every row has the same first key value): the caller diffs in one process."""
    tplan, pplan = plans
    cut = cut_ranges(topic, tplan if topic is truth else pplan, _cut_offset)
    if len(cut) != 2:
        return None
    lower, upper = cut
    fd, out_path = tempfile.mkstemp(prefix="reconcile-split-", suffix=".out")
    os.close(fd)
    job_path = out_path[: -len(".out")] + ".job"
    try:
        job = {
            "sides": [_portable(truth), _portable(projection)],
            "plans": plans,
            "rules": rules,
            "key_names": key_names,
            "where": where,
            "now": now,
            "grace": grace,
            "watch": watch,
            "range": upper,
            "out": out_path,
        }
        try:
            data = pickle.dumps(job, pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):  # a side that cannot be handed over
            return None
        with open(job_path, "wb") as f:
            f.write(data)
        with tempfile.TemporaryFile() as err:
            worker = _start(job_path, err)
            try:
                mine = _diff_range(
                    truth,
                    projection,
                    tplan,
                    pplan,
                    lower,
                    rules,
                    key_names,
                    where,
                    now,
                    grace,
                    watch,
                    on_row,
                    sink,
                )
                worker.wait()
            except BaseException:  # an error or Ctrl-C here: the worker's half is not wanted
                worker.kill()
                worker.wait()
                raise
            err.seek(0)
            theirs = _finish(worker.returncode, err.read().decode("utf-8", "replace"), out_path, sink)
    finally:
        for path in (out_path, job_path):
            if os.path.exists(path):
                os.unlink(path)
    if on_row is not None:  # progress: the worker's rows, now that they are read
        for _ in range(theirs.truth_rows + theirs.projection_rows):
            on_row()
    return mine.merge(theirs)


def _cut_offset(total: int) -> list[int]:
    """Where the worker's range starts: half the rows, plus the worker's start-up, at most 80 %."""
    return [min((total + WORKER_START_ROWS) // 2, total * 4 // 5)]


def _diff_range(
    truth: SqlSource,
    projection: SqlSource,
    tplan: ReadPlan,
    pplan: ReadPlan,
    rng: KeyRange,
    rules: list[ColumnRule],
    key_names: list[str],
    where: str | None,
    now: datetime,
    grace: timedelta,
    watch: set[tuple[Any, ...]],
    on_row: Callable[[], None] | None,
    sink: Callable[[Finding], None] | None,
) -> DiffOutcome:
    return diff_rows(
        truth.stream(tplan, where=where, extra_filter=range_filter(truth, tplan, rng)),
        projection.stream(pplan, where=where, extra_filter=range_filter(projection, pplan, rng)),
        rules,
        key_names,
        now=now,
        grace=grace,
        watch=watch,
        on_row=on_row,
        sink=sink,
    )


def _portable(src: SqlSource) -> SqlSource:
    """A copy of a side without its engine (and Kafka reader): what the worker reopens."""
    copy = object.__new__(type(src))
    copy.__dict__.update({k: v for k, v in src.__dict__.items() if k not in _KEEP_OUT})
    return copy


def _start(job_path: str, err: IO[bytes]) -> subprocess.Popen[bytes]:
    """The worker process, reading its job from ``job_path`` (a file: never a pipe to wait on)."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "reconcile.app.split", job_path],
        stdin=subprocess.DEVNULL,
        stderr=err,
        env=env,
    )


def _finish(code: int, err: str, out_path: str, sink: Callable[[Finding], None] | None) -> DiffOutcome:
    """Take the ended worker's findings (into ``sink`` when given) and its counts."""
    findings: list[Finding] = []
    with open(out_path, "rb") as f:
        for kind, payload in _frames(f):
            if kind == "error":
                raise payload
            if kind == "outcome" and code == 0:
                payload.findings = findings
                return payload  # type: ignore[no-any-return]
            if sink is not None:
                for finding in payload:
                    sink(finding)
            else:
                findings.extend(payload)
    lines = err.strip().splitlines()
    last = lines[-1] if lines else f"it ended with status {code}"
    raise SourceError(f"the diff's second process failed: {last}")


def _frames(f: IO[bytes]) -> Iterator[tuple[str, Any]]:
    while True:
        try:
            yield pickle.load(f)  # noqa: S301 - our own worker's file
        except EOFError:
            return


def _work(job: dict[str, Any]) -> None:
    """The worker's part: reopen both sides, diff the range, write findings then counts."""
    truth, projection = job["sides"]
    with open(job["out"], "wb") as out:
        try:
            for src in (truth, projection):
                src.engine = open_engine(src.url, src.role, getattr(src, "statement_timeout", None))
                src.dialect = src.engine.dialect.name
                src.throttle = None  # never split when throttled
                if src.is_topic:
                    src.reader = None  # the topic was read: the spill is all the worker needs
            batch: list[Finding] = []

            def sink(finding: Finding) -> None:
                batch.append(finding)
                if len(batch) >= _BATCH:
                    pickle.dump(("findings", batch[:]), out, pickle.HIGHEST_PROTOCOL)
                    batch.clear()

            tplan, pplan = job["plans"]
            outcome = _diff_range(
                truth,
                projection,
                tplan,
                pplan,
                job["range"],
                job["rules"],
                job["key_names"],
                job["where"],
                job["now"],
                job["grace"],
                job["watch"],
                None,
                sink,
            )
            if batch:
                pickle.dump(("findings", batch), out, pickle.HIGHEST_PROTOCOL)
            pickle.dump(("outcome", outcome), out, pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # handed back as it was raised (a SourceError stays one)
            out.seek(0)
            out.truncate()
            try:
                pickle.dump(("error", e), out, pickle.HIGHEST_PROTOCOL)
            except Exception:
                pickle.dump(("error", SourceError(f"{type(e).__name__}: {e}")), out, pickle.HIGHEST_PROTOCOL)
        finally:
            for src in (truth, projection):
                engine = getattr(src, "engine", None)
                if engine is not None:
                    engine.dispose()


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as job_file:
        _work(pickle.load(job_file))  # noqa: S301 - our own parent's job
