"""Recording a run's findings on PostgreSQL (psycopg): a COPY and a few set-based statements.

:func:`reconcile.lifecycle.plan_run` says what a run does to its spec's stored findings; this
module carries it out without deciding finding by finding in Python (issue 15: recording was
8-10k findings/s when the plan ran in Python batch by batch). Inside the caller's transaction,
which already holds the spec's lock row:

1. the run's findings go into a temporary table by ``COPY`` (their order kept in ``ord``);
2. one ``UPDATE ... FROM`` moves the findings seen again: this run's values, one more
   sighting; status, first seen, note and episode stay (``plan_run``'s ``again``);
3. one ``INSERT ... SELECT`` opens the others as new findings, each the next episode of its
   entity (``plan_run``'s ``new`` with ``last_episode``);
4. both statements hand back counts by (kind, status, times seen) from ``RETURNING``, and the
   first ``keep`` findings read back their lifecycle, so the caller tallies the summary and
   returns findings exactly as ``plan_run`` would have built them.

Resolving the active findings the run did not see is the caller's (already set-wise) step.
``tests/test_record_equivalence.py`` holds this path equal to ``plan_run`` on random cases.

The plans: every statement runs as a generic plan (a spec is estimated by the number of specs,
not by statistics that may predate the spec's rows), and the lookups of the first ``keep`` go
key by key through ``LATERAL ... LIMIT 1`` (see :mod:`reconcile.store.bulk`). The two big
statements join the whole temporary table, which is ANALYZEd after the COPY, so the planner
knows how many findings the run has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..compare import jsonable
from ..findings import Finding, FindingKind, FindingStatus
from ..lifecycle import is_confirmed
from .bulk import COMPACT, cursor
from .schema import ACTIVE_STATUSES

__all__ = ["Recorded", "record_findings"]

_ACTIVE = "(" + ", ".join(f"'{s}'" for s in ACTIVE_STATUSES) + ")"

_SEEN = """
CREATE TEMPORARY TABLE reconcile_seen (
  ord bigint, key_id text, entity_key text, kind text, columns text, truth text, projection text,
  copies integer, cause text, evidence text
) ON COMMIT DROP
"""
_SEEN_COLUMNS = "ord, key_id, entity_key, kind, columns, truth, projection, copies, cause, evidence"

# Counts of the rows a statement wrote, by what the summary needs.
_COUNTS = "SELECT kind, status, times_seen, count(*) FROM w GROUP BY kind, status, times_seen"

_AGAIN = f"""
WITH w AS (
  UPDATE reconcile_findings AS f
  SET kind = s.kind, columns = s.columns::json, truth = s.truth::json,
      projection = s.projection::json, copies = s.copies, cause = s.cause,
      evidence = s.evidence::json, times_seen = f.times_seen + 1,
      last_seen = %(now)s, last_run_id = %(run_id)s
  FROM reconcile_seen AS s
  WHERE f.spec = %(spec)s AND f.key_id = s.key_id AND f.status IN {_ACTIVE}
  RETURNING f.kind, f.status, f.times_seen
)
{_COUNTS}
"""

# A key with no active finding is new; the last episode it ever had (resolved ones) + 1 is its
# episode. One index lookup per key, for both questions.
_NEW = f"""
WITH w AS (
  INSERT INTO reconcile_findings (spec, key_id, entity_key, kind, columns, truth, projection,
    copies, cause, evidence, status, times_seen, first_seen, last_seen, first_run_id, last_run_id,
    episode)
  SELECT %(spec)s, s.key_id, s.entity_key::json, s.kind, s.columns::json, s.truth::json,
    s.projection::json, s.copies, s.cause, s.evidence::json, 'open', 1, %(now)s, %(now)s,
    %(run_id)s, %(run_id)s, coalesce(e.last, 0) + 1
  FROM reconcile_seen AS s
  LEFT JOIN LATERAL (
    SELECT max(h.episode) AS last, bool_or(h.status IN {_ACTIVE}) AS active
    FROM reconcile_findings h WHERE h.spec = %(spec)s AND h.key_id = s.key_id
  ) e ON true
  WHERE e.active IS NOT TRUE
  ORDER BY s.ord
  RETURNING kind, status, times_seen
)
{_COUNTS}
"""

# The stored lifecycle of some of the run's findings (each now has exactly one active row).
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
        cur.execute("SELECT set_config('plan_cache_mode', 'force_generic_plan', true)")
        cur.execute("DROP TABLE IF EXISTS reconcile_seen")
        cur.execute(_SEEN)
        n = _copy(cur, seen, held, keep)
        if n == 0:
            return out
        cur.execute("ANALYZE reconcile_seen")
        for sql in (_AGAIN, _NEW):
            cur.execute(sql, params, prepare=False)
            for kind, status, times_seen, count in cur.fetchall():
                k = (FindingKind(kind), FindingStatus(status), int(times_seen))
                out.counts[k] = out.counts.get(k, 0) + int(count)
        cur.execute(_LIFECYCLE, params, prepare=False)
        rows = cur.fetchall()
        if len(rows) != len(held):  # a key twice in one run: one of its findings was not stored
            raise RuntimeError(f"recorded {len(rows)} of the run's first {len(held)} findings")
        for f, (_, _, status, times_seen, first_seen, note, episode) in zip(held, rows, strict=True):
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


def _copy(cur: Any, seen: Iterable[Finding], held: list[Finding], keep: int) -> int:
    """COPY the findings into ``reconcile_seen``; the first ``keep`` into ``held``. How many."""
    encode = COMPACT.encode
    columns: dict[tuple[str, ...], str] = {}  # a spec's findings share a few column tuples
    n = 0
    with cur.copy(f"COPY reconcile_seen ({_SEEN_COLUMNS}) FROM STDIN") as copy:
        write = copy.write_row
        for f in seen:
            if n < keep:
                held.append(f)
            cols = columns.get(f.columns)
            if cols is None:
                cols = columns[f.columns] = encode(list(f.columns))
            truth, projection = f.truth, f.projection
            write(
                (
                    n,
                    f.key_id,
                    encode(jsonable(f.key)),
                    f.kind.value,
                    cols,
                    None if truth is None else encode(jsonable(truth)),
                    None if projection is None else encode(jsonable(projection)),
                    f.copies,
                    f.cause,
                    encode(jsonable(list(f.evidence))) if f.cause is not None else None,
                )
            )
            n += 1
    return n


class _Row:
    """A row read by name, as the store's ``_finding`` reads SQLAlchemy rows."""

    def __init__(self, names: list[str], values: tuple[Any, ...]):
        self.__dict__.update(zip(names, values, strict=True))
