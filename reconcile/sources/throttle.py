"""Gentle scans: chunks sized to a target time, paused while the database is busy.

A spec's ``throttle: {chunk_time: 0.5s, max_active_sessions: N}`` makes each side's scan read its
ordered rows in chunks (a PostgreSQL server-side cursor fetches each chunk on demand; a MySQL
stream waits on its socket between chunks). After each chunk the size is adjusted so the next one
takes about ``chunk_time``; before each chunk, while the database has more than
``max_active_sessions`` other active sessions, the scan waits. What happened is reported in the
run (``scope.throttle``): chunks, pauses, seconds paused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

__all__ = ["Throttle", "active_sessions_sql"]

log = logging.getLogger("reconcile.throttle")

MIN_ROWS, MAX_ROWS, FIRST_ROWS = 100, 200_000, 1_000
PAUSE_S = (0.25, 5.0)  # first and longest wait between two looks at a busy database


def active_sessions_sql(dialect: str) -> str | None:
    """How many sessions other than the asking one are running a statement now (None: unknown)."""
    if dialect == "postgresql":
        return (
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    if dialect in ("mysql", "mariadb"):
        return (
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
            "WHERE COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump') AND ID <> CONNECTION_ID()"
        )
    return None


@dataclass
class Throttle:
    """The pacing of one side's scan; ``probe`` counts the database's active sessions."""

    role: str
    chunk_time_s: float
    max_active: int | None = None
    probe: Callable[[], int] | None = None
    rows: int = FIRST_ROWS
    chunks: int = 0
    pauses: int = 0
    paused_s: float = 0.0
    busiest: int = 0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    @classmethod
    def for_engine(
        cls, role: str, engine: sa.Engine, chunk_time_s: float, max_active: int | None
    ) -> Throttle:
        sql = active_sessions_sql(engine.dialect.name) if max_active else None
        if sql is None:  # no limit, or a database without sessions to count (SQLite)
            return cls(role, chunk_time_s, max_active)
        query = sa.text(sql)

        def probe() -> int:
            with engine.connect() as conn:
                return int(conn.execute(query).scalar() or 0)

        return cls(role, chunk_time_s, max_active, probe)

    def wait(self) -> None:
        """Before a chunk: wait while the database is busier than the limit."""
        if self.probe is None or self.max_active is None:
            return
        pause, started, told = PAUSE_S[0], None, 0.0
        while (active := self.probe()) > self.max_active:
            self.busiest = max(self.busiest, active)
            if started is None:
                started = time.monotonic()
                self.pauses += 1
            waited = time.monotonic() - started
            if waited - told >= 10:
                told = waited
                log.warning(
                    "%s: paused %.0fs: %d active sessions > max_active_sessions %d",
                    self.role,
                    waited,
                    active,
                    self.max_active,
                )
            self.sleep(pause)
            pause = min(pause * 2, PAUSE_S[1])
        if started is not None:
            self.paused_s += time.monotonic() - started

    def done(self, rows: int, seconds: float) -> None:
        """After a chunk of ``rows`` read in ``seconds``: size the next one to the target time."""
        self.chunks += 1
        if rows < self.rows:  # the last, short chunk says nothing about speed
            return
        if seconds <= 0:
            self.rows = min(self.rows * 2, MAX_ROWS)
            return
        wanted = self.rows * self.chunk_time_s / seconds
        # Move at most 4x per chunk, so one slow chunk (a checkpoint, a lock) cannot swing it.
        self.rows = int(max(MIN_ROWS, min(MAX_ROWS, self.rows * 4, max(self.rows / 4, wanted))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_time_s": self.chunk_time_s,
            "max_active_sessions": self.max_active,
            "chunks": self.chunks,
            "chunk_rows": self.rows,
            "pauses": self.pauses,
            "paused_s": round(self.paused_s, 3),
            "busiest": self.busiest,
        }
