"""Recording a run's findings on PostgreSQL (psycopg): a COPY and a few set-based statements.

:func:`reconcile.lifecycle.plan_run` says what a run does to its spec's stored findings; this
module carries it out without deciding finding by finding in Python (issue 15: recording was
8-10k findings/s when the plan ran in Python batch by batch). Inside the caller's transaction,
which already holds the spec's lock row:

1. the run's findings go into a temporary table by ``COPY`` (their order kept in ``ord``), as
   text built in blocks of rows, the JSON values parsed by the server as they arrive;
2. one statement moves the findings seen again (this run's values, one more sighting; status,
   first seen, note and episode stay: ``plan_run``'s ``again``) and inserts the others as new
   findings, each the next episode of its entity (``plan_run``'s ``new`` with
   ``last_episode``), and hands back counts by (kind, status, times seen) for the summary
   and the lifecycle of the seen-again ones among the first ``keep``;
3. the first ``keep`` findings are returned exactly as ``plan_run`` would have built them: a
   new one is open, seen once, first seen now; only when the spec has resolved findings (a new
   one may be an entity's next episode) do they read their lifecycle back.

A spec with no finding stored at all (its first audit) skips all three: every finding is new,
open, seen once, its entity's first episode, so the COPY goes straight into the findings
table and the server inserts while the client encodes the next rows; the counts and the first
``keep`` findings are known without asking.

Resolving the active findings the run did not see is the caller's (already set-wise) step.
``tests/test_record_equivalence.py`` holds this path equal to ``plan_run`` on random cases.

The plans: every statement runs as a generic plan (a spec is estimated by the number of specs,
not by statistics that may predate the spec's rows), and the lookups of single keys go through
the ``(spec, key_id)`` index (``LATERAL ... LIMIT 1``, see :mod:`reconcile.store.bulk`). The
update joins the whole temporary table, which is ANALYZEd after the COPY, so the planner knows
how many findings the run has; it is a HOT update where the page has room (migration 6).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, islice
from typing import Any

from ..compare import json_text
from ..findings import Finding, FindingKind, FindingStatus
from ..lifecycle import is_confirmed
from .bulk import cursor
from .schema import ACTIVE_STATUSES

__all__ = ["Recorded", "record_findings"]

_ACTIVE = "(" + ", ".join(f"'{s}'" for s in ACTIVE_STATUSES) + ")"

# JSON columns typed json: the server parses them during the COPY, while the client is still
# encoding, instead of in the statement after it. ``ord`` numbers the rows as they come, from 0.
_SEEN = """
CREATE TEMPORARY TABLE reconcile_seen (
  key_id text, entity_key json, kind text, columns json, truth json, projection json,
  copies integer, cause text, evidence json,
  ord bigint GENERATED ALWAYS AS IDENTITY (MINVALUE 0 START WITH 0) PRIMARY KEY
) ON COMMIT DROP
"""
# What each COPY row carries, in this order, on both paths.
_ROW_COLUMNS = "key_id, entity_key, kind, columns, truth, projection, copies, cause, evidence"
# A first audit's COPY into the findings table: the same, then what every new finding shares.
_FIRST_COLUMNS = (
    _ROW_COLUMNS + ", spec, status, times_seen, first_seen, last_seen, first_run_id, last_run_id, episode"
)
_ANY_FINDING = "SELECT EXISTS (SELECT 1 FROM reconcile_findings WHERE spec = %(spec)s)"

# One statement: the findings seen again move (``u``), the others are inserted as new (``i``),
# and what both wrote comes back counted by what the summary needs (rows with a NULL ``ord``),
# followed by the lifecycle of the seen-again ones among the first ``keep`` (by ``ord``). Both
# parts read the table as it was before the statement, so ``i`` tells the seen-again ones by
# ``u``'s output; when ``u`` moved all ``n`` of them, ``i`` does not look (a run that finds
# the same drift as the last: the usual one).
_RECORD = f"""
WITH u AS (
  UPDATE reconcile_findings AS f
  SET kind = s.kind, columns = s.columns, truth = s.truth, projection = s.projection,
      copies = s.copies, cause = s.cause, evidence = s.evidence, times_seen = f.times_seen + 1,
      last_seen = %(now)s, last_run_id = %(run_id)s
  FROM reconcile_seen AS s
  WHERE f.spec = %(spec)s AND f.key_id = s.key_id AND f.status IN {_ACTIVE}
  RETURNING s.ord, f.kind, f.status, f.times_seen, f.first_seen, f.note, f.episode
), i AS (
  INSERT INTO reconcile_findings (spec, key_id, entity_key, kind, columns, truth, projection,
    copies, cause, evidence, status, times_seen, first_seen, last_seen, first_run_id, last_run_id,
    episode)
  SELECT %(spec)s, s.key_id, s.entity_key, s.kind, s.columns, s.truth,
    s.projection, s.copies, s.cause, s.evidence, 'open', 1, %(now)s, %(now)s,
    %(run_id)s, %(run_id)s, {{episode}}
  FROM reconcile_seen AS s
  WHERE (SELECT count(*) FROM u) < %(n)s AND NOT EXISTS (SELECT 1 FROM u WHERE u.ord = s.ord)
  ORDER BY s.ord
  RETURNING kind, status, times_seen
)
SELECT kind, status, times_seen, count(*), NULL::bigint, NULL::timestamptz, NULL::text, NULL::integer
FROM (SELECT kind, status, times_seen FROM u UNION ALL SELECT kind, status, times_seen FROM i) w
GROUP BY kind, status, times_seen
UNION ALL
SELECT kind, status, times_seen, NULL, ord, first_seen, note, episode FROM u WHERE ord < %(keep)s
"""

# A new finding's episode: one more than the last its entity had (every finding of an entity
# with no active one is resolved), looked up key by key. A spec with no resolved finding at
# all (its first audits) skips the lookups: every new finding is an entity's first episode.
_NEXT_EPISODE = (
    "coalesce((SELECT max(h.episode) FROM reconcile_findings h"
    " WHERE h.spec = %(spec)s AND h.key_id = s.key_id), 0) + 1"
)
_ANY_RESOLVED = (
    "SELECT EXISTS (SELECT 1 FROM reconcile_findings WHERE spec = %(spec)s AND status = 'resolved'),"
    " %(now)s::timestamptz"
)

# The stored lifecycle of some of the run's findings (each now has exactly one active row): the
# first ``keep`` when some may be an entity's next episode.
_LIFECYCLE = f"""
SELECT s.ord, a.id, a.status, a.times_seen, a.first_seen, a.note, a.episode
FROM reconcile_seen AS s
CROSS JOIN LATERAL (
  SELECT f.id, f.status, f.times_seen, f.first_seen, f.note, f.episode
  FROM reconcile_findings f
  WHERE f.spec = %(spec)s AND f.key_id = s.key_id AND f.status IN {_ACTIVE}
  LIMIT 1
) a
WHERE s.ord < %(keep)s
ORDER BY s.ord
"""

# The run's next findings beyond the first ``keep``, confirmed or not, read back whole.
_MORE = f"""
SELECT a.*
FROM reconcile_seen AS s
CROSS JOIN LATERAL (
  SELECT f.* FROM reconcile_findings f
  WHERE f.spec = %(spec)s AND f.key_id = s.key_id AND f.status IN {_ACTIVE}
  LIMIT 1
) a
WHERE s.ord >= %(keep)s AND (a.times_seen >= %(confirm_runs)s) = %(confirmed)s
ORDER BY s.ord
LIMIT %(limit)s
"""


@dataclass
class Recorded:
    """What recording a run's findings did: counts for the summary, the first findings."""

    # (kind, status, times seen) -> findings of the run now stored so
    counts: dict[tuple[FindingKind, FindingStatus, int], int] = field(default_factory=dict)
    confirmed: list[Finding] = field(default_factory=list)
    unconfirmed: list[Finding] = field(default_factory=list)
    first: bool = False  # nothing of the spec was stored before: no finding to resolve


def record_findings(
    conn: Any,
    *,
    spec: str,
    run_id: str,
    now: datetime,
    seen: Iterable[Finding],
    confirm_runs: int,
    keep: int,
    rebuild: Any,
) -> Recorded:
    """Insert the new and update the seen-again findings of one run (see the module's docstring).

    ``conn`` is the store's SQLAlchemy connection (its transaction holds the spec's lock row);
    ``rebuild(row, confirm_runs)`` makes a Finding of a stored row, for the rare findings
    returned beyond the first ``keep`` seen (``confirm_runs`` > 1 and a run with more findings
    than ``keep`` of which fewer than ``keep`` of one sort come first).
    """
    out = Recorded()
    held: list[Finding] = []
    params = {"spec": spec, "run_id": run_id, "now": now, "keep": keep, "confirm_runs": confirm_runs}
    with cursor(conn) as cur:
        cur.execute(_ANY_FINDING, params, prepare=False)
        (stored,) = cur.fetchone()
        if not stored:
            return _record_first(cur, params, seen, keep)
        cur.execute("SELECT set_config('plan_cache_mode', 'force_generic_plan', true)")
        cur.execute("DROP TABLE IF EXISTS reconcile_seen")
        cur.execute(_SEEN)
        n, _ = _copy(cur, f"COPY reconcile_seen ({_ROW_COLUMNS}) FROM STDIN", "", seen, held, keep)
        if n == 0:
            return out
        cur.execute("ANALYZE reconcile_seen")
        cur.execute(_ANY_RESOLVED, params, prepare=False)
        history, now_read = cur.fetchone()
        statement = _RECORD.format(episode=_NEXT_EPISODE if history else "1")
        cur.execute(statement, {**params, "n": n}, prepare=False)
        again: dict[int, tuple[Any, ...]] = {}
        for kind, status, times_seen, count, ord_, first_seen, note, episode in cur.fetchall():
            if ord_ is None:
                out.counts[(FindingKind(kind), FindingStatus(status), int(times_seen))] = int(count)
            else:
                again[ord_] = (status, times_seen, first_seen, note, episode)
        if history and len(again) < len(held):  # some of the first are new: which episode
            cur.execute(_LIFECYCLE, params, prepare=False)
            again = {r[0]: r[2:] for r in cur.fetchall()}
        new = (FindingStatus.OPEN.value, 1, now_read, None, 1)  # _RECORD's new finding
        for i, f in enumerate(held):
            status, times_seen, first_seen, note, episode = again.get(i, new)
            f = f.with_lifecycle(
                status=FindingStatus(status),
                times_seen=times_seen,
                first_seen=first_seen,
                note=note,
                episode=episode,
                confirmed=is_confirmed(times_seen, confirm_runs),
            )
            (out.confirmed if f.confirmed else out.unconfirmed).append(f)
        del out.confirmed[keep:], out.unconfirmed[keep:]
        if n > len(held):
            confirmed = sum(c for (_, _, t), c in out.counts.items() if is_confirmed(t, confirm_runs))
            for want, got, total in (
                (True, out.confirmed, confirmed),
                (False, out.unconfirmed, n - confirmed),
            ):
                limit = min(keep, total) - len(got)
                if limit > 0:
                    cur.execute(_MORE, {**params, "confirmed": want, "limit": limit}, prepare=False)
                    names = [d.name for d in cur.description]
                    got += [rebuild(_Row(names, r), confirm_runs) for r in cur.fetchall()]
        cur.execute("DROP TABLE reconcile_seen")
    return out


def _record_first(cur: Any, params: dict[str, Any], seen: Iterable[Finding], keep: int) -> Recorded:
    """A spec's first findings: COPY them straight into the findings table (what ``_RECORD``
    would insert: open, seen once, first episode, first and last seen now, by this run)."""
    out = Recorded(first=True)
    held: list[Finding] = []
    # ``now`` as the server reads and returns it (a naive datetime in the session's time zone)
    cur.execute("SELECT %(now)s::timestamptz, %(now)s::timestamptz::text", params, prepare=False)
    first_seen, now_text = cur.fetchone()
    run_id = _escape(params["run_id"])
    tail = f"\t{_escape(params['spec'])}\topen\t1\t{now_text}\t{now_text}\t{run_id}\t{run_id}\t1"
    _, kinds = _copy(cur, f"COPY reconcile_findings ({_FIRST_COLUMNS}) FROM STDIN", tail, seen, held, keep)
    for kind, count in kinds.items():
        out.counts[(kind, FindingStatus.OPEN, 1)] = count
    confirmed = is_confirmed(1, params["confirm_runs"])
    got = out.confirmed if confirmed else out.unconfirmed
    lifecycle = {"status": FindingStatus.OPEN, "times_seen": 1, "first_seen": first_seen, "note": None}
    got += (f.with_lifecycle(**lifecycle, episode=1, confirmed=confirmed) for f in held)
    return out


_BLOCK = 2_000  # rows per write to the COPY: about 200 KiB


def _copy(
    cur: Any, statement: str, tail: str, seen: Iterable[Finding], held: list[Finding], keep: int
) -> tuple[int, dict[FindingKind, int]]:
    """COPY the findings' :data:`_ROW_COLUMNS` (then ``tail``, text of the statement's other
    columns) by ``statement``; the first ``keep`` findings into ``held``. (How many, how many of
    each kind.)

    The rows are COPY text built by hand, one f-string a row, and written in blocks: psycopg's
    ``write_row`` converts every value on its own. The JSON is ASCII (``json_text``), with no tab
    or line break in it, so a backslash is all that needs escaping.
    """
    text = json_text
    columns: dict[tuple[str, ...], str] = {}  # a spec's findings share a few column tuples
    causes: dict[str, str] = {}
    kinds: dict[FindingKind, int] = {}
    n = 0
    rows = iter(seen)
    held += islice(rows, keep)
    rows = chain(held, rows)
    with cur.copy(statement) as copy:
        while True:
            block = []
            for f in islice(rows, _BLOCK):
                kind, key, truth, projection, cause = f.kind, f.key, f.truth, f.projection, f.cause
                kinds[kind] = kinds.get(kind, 0) + 1
                key_id = f.key_id
                if "\\" in key_id:
                    key_id = key_id.replace("\\", "\\\\")
                if len(key) == 1:  # one part: sorted or not, the same
                    entity_key = key_id
                else:
                    entity_key = text(key)
                    if "\\" in entity_key:
                        entity_key = entity_key.replace("\\", "\\\\")
                cols = columns.get(f.columns)
                if cols is None:
                    cols = columns[f.columns] = _escape(text(list(f.columns)))
                if truth is None:
                    truth_text = _NULL
                else:
                    truth_text = text(truth)
                    if "\\" in truth_text:
                        truth_text = truth_text.replace("\\", "\\\\")
                if projection is None:
                    projection_text = _NULL
                else:
                    projection_text = text(projection)
                    if "\\" in projection_text:
                        projection_text = projection_text.replace("\\", "\\\\")
                if cause is None:
                    cause_text = evidence = _NULL
                else:
                    cause_text = causes.get(cause) or causes.setdefault(cause, _escape(cause))
                    evidence = _escape(text(list(f.evidence)))
                block.append(
                    f"{key_id}\t{entity_key}\t{kind}\t{cols}\t{truth_text}\t{projection_text}\t{int(f.copies)}"
                    f"\t{cause_text}\t{evidence}{tail}\n"
                )
            if not block:
                break
            n += len(block)
            copy.write("".join(block))
    return n, kinds


_NULL = "\\N"  # COPY text's NULL
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escape(value: str) -> str:
    """A value as a field of COPY text."""
    return value.translate(_COPY_ESCAPES)


class _Row:
    """A row read by name, as the store's ``_finding`` reads SQLAlchemy rows."""

    def __init__(self, names: list[str], values: tuple[Any, ...]):
        self.__dict__.update(zip(names, values, strict=True))
