"""Recording a run's findings on PostgreSQL (psycopg): a COPY and a few set-based statements.

:func:`reconcile.lifecycle.plan_run` says what a run does to its spec's stored findings; this
module carries it out without deciding finding by finding in Python (issue 15: recording was
8-10k findings/s when the plan ran in Python batch by batch). Inside the caller's transaction,
which already holds the spec's lock row:

1. the run's findings go into a temporary table by ``COPY`` (their order kept in ``ord``);
2. one statement moves the findings seen again (this run's values, one more sighting; status,
   first seen, note and episode stay: ``plan_run``'s ``again``) and inserts the others as new
   findings, each the next episode of its entity (``plan_run``'s ``new`` with
   ``last_episode``), and hands back counts by (kind, status, times seen) for the summary;
3. the first ``keep`` findings read back their lifecycle, so the caller returns them exactly
   as ``plan_run`` would have built them.

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
from typing import Any

from ..compare import json_text
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

# One statement: the findings seen again move (``u``), the others are inserted as new (``i``),
# and what both wrote comes back counted by what the summary needs. Both parts read the table
# as it was before the statement, so ``i`` tells the seen-again ones by ``u``'s output.
_RECORD = f"""
WITH u AS (
  UPDATE reconcile_findings AS f
  SET kind = s.kind, columns = s.columns::json, truth = s.truth::json,
      projection = s.projection::json, copies = s.copies, cause = s.cause,
      evidence = s.evidence::json, times_seen = f.times_seen + 1,
      last_seen = %(now)s, last_run_id = %(run_id)s
  FROM reconcile_seen AS s
  WHERE f.spec = %(spec)s AND f.key_id = s.key_id AND f.status IN {_ACTIVE}
  RETURNING s.ord, f.kind, f.status, f.times_seen
), i AS (
  INSERT INTO reconcile_findings (spec, key_id, entity_key, kind, columns, truth, projection,
    copies, cause, evidence, status, times_seen, first_seen, last_seen, first_run_id, last_run_id,
    episode)
  SELECT %(spec)s, s.key_id, s.entity_key::json, s.kind, s.columns::json, s.truth::json,
    s.projection::json, s.copies, s.cause, s.evidence::json, 'open', 1, %(now)s, %(now)s,
    %(run_id)s, %(run_id)s, {{episode}}
  FROM reconcile_seen AS s
  WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.ord = s.ord)
  ORDER BY s.ord
  RETURNING kind, status, times_seen
)
SELECT kind, status, times_seen, count(*)
FROM (SELECT kind, status, times_seen FROM u UNION ALL SELECT kind, status, times_seen FROM i) w
GROUP BY kind, status, times_seen
"""

# A new finding's episode: one more than the last its entity had (every finding of an entity
# with no active one is resolved), looked up key by key. A spec with no resolved finding at
# all (its first audits) skips the lookups: every new finding is an entity's first episode.
_NEXT_EPISODE = (
    "coalesce((SELECT max(h.episode) FROM reconcile_findings h"
    " WHERE h.spec = %(spec)s AND h.key_id = s.key_id), 0) + 1"
)
_ANY_RESOLVED = (
    "SELECT EXISTS (SELECT 1 FROM reconcile_findings WHERE spec = %(spec)s AND status = 'resolved')"
)

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
        cur.execute(_ANY_RESOLVED, params, prepare=False)
        (history,) = cur.fetchone()
        cur.execute(_RECORD.format(episode=_NEXT_EPISODE if history else "1"), params, prepare=False)
        for kind, status, times_seen, count in cur.fetchall():
            out.counts[(FindingKind(kind), FindingStatus(status), int(times_seen))] = int(count)
        cur.execute(_LIFECYCLE, params, prepare=False)
        rows = cur.fetchall()
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
            key, truth, projection = f.key, f.truth, f.projection
            key_id = f.key_id
            write(
                (
                    n,
                    key_id,
                    key_id if len(key) == 1 else json_text(key),  # one part: sorted or not, the same
                    f.kind.value,
                    cols,
                    None if truth is None else json_text(truth),
                    None if projection is None else json_text(projection),
                    f.copies,
                    f.cause,
                    json_text(list(f.evidence)) if f.cause is not None else None,
                )
            )
            n += 1
    return n


class _Row:
    """A row read by name, as the store's ``_finding`` reads SQLAlchemy rows."""

    def __init__(self, names: list[str], values: tuple[Any, ...]):
        self.__dict__.update(zip(names, values, strict=True))
