"""Database plumbing shared by every adapter: engines, URLs, and driver errors.

The SQL readers (truth and projection), the audit store, the embedded event log and the
reference projector all open databases the same way and translate driver errors the same way,
so both live here, below all of them, once:

* :func:`normalize_url` picks the drivers reconcile ships with when a URL names none;
* :func:`make_engine` creates an engine with reconcile's defaults (UTC sessions on PostgreSQL
  and MySQL/MariaDB, connect timeouts, SQLite busy timeout and, for databases reconcile owns,
  WAL);
* :func:`map_errors` turns any driver error raised inside it into one line of the project's
  error tree (:mod:`reconcile.errors`), naming what failed and the database, password masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from .errors import ReconcileError, SourceError, mask_url

__all__ = ["normalize_url", "make_engine", "map_errors", "first_line", "DRIVER_ERRORS"]

# Everything a database driver can raise at us. psycopg, PyMySQL and sqlite3 errors reach us
# wrapped in SQLAlchemy's DBAPIError (its ``orig`` is the driver's own); sockets fail as OSError.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, UnicodeError)


def normalize_url(url: str) -> str:
    """Pick the drivers reconcile ships with when a URL names none (psycopg 3, PyMySQL)."""
    for plain, full in (
        ("postgres://", "postgresql+psycopg://"),
        ("postgresql://", "postgresql+psycopg://"),
        ("mysql://", "mysql+pymysql://"),
        ("mariadb://", "mariadb+pymysql://"),
    ):
        if url.startswith(plain):
            return full + url[len(plain) :]
    return url


def first_line(e: BaseException) -> str:
    """The first line of a (driver) error's message, passwords masked."""
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return mask_url(text[0] if text else type(orig).__name__)


# PostgreSQL, MariaDB and MySQL's words for a statement stopped by its time limit.
_TIMED_OUT = re.compile(
    r"statement timeout|max_statement_time exceeded|maximum statement execution time exceeded", re.I
)


@contextmanager
def map_errors(what: str, url: str, error: type[ReconcileError] = SourceError) -> Iterator[None]:
    """Translate driver errors raised inside into one-line ``error``s naming ``what`` and the database.

    ``what`` is the role of the database in this run (``truth``, ``projection``, ``audit store``,
    ``embedded log``...). Errors of reconcile's own tree pass through unchanged.
    """
    where = mask_url(url)
    try:
        yield
    except ReconcileError:
        raise
    except DBAPIError as e:
        line = first_line(e)
        if _TIMED_OUT.search(line):
            line += " (raise the spec's `statement_timeout:` or RECONCILE_STATEMENT_TIMEOUT; 0 for none)"
        if e.connection_invalidated or isinstance(e, sa.exc.OperationalError | sa.exc.InterfaceError):
            raise error(f"{what}: database {where}: {line}") from None
        raise error(f"{what}: query failed on {where}: {line}") from None
    except (NoSuchModuleError, ArgumentError) as e:
        raise error(f"{what}: cannot use database URL {where}: {first_line(e)}") from None
    except SQLAlchemyError as e:
        raise error(f"{what}: database {where}: {first_line(e)}") from None
    except (OSError, UnicodeError) as e:
        raise error(f"{what}: database {where}: {mask_url(str(e))}") from None


def make_engine(
    url: str,
    *,
    sqlite_wal: bool = False,
    read_only: bool = False,
    statement_timeout_s: float | None = None,
) -> Engine:
    """An engine (no connection yet) with reconcile's defaults, for any URL it is given.

    psycopg 3 / PyMySQL when the URL names no driver; PostgreSQL and MySQL sessions in UTC; connect
    timeouts so a dead host fails fast; on SQLite a busy timeout, and WAL when ``sqlite_wal``
    (only for databases reconcile owns: the store, the embedded log, the demo shop — switching a
    user's file to WAL would be a write, and truth and projection are read-only to reconcile).

    ``read_only`` (truth and projection): every transaction of every connection is read-only,
    enforced by the database itself — PostgreSQL ``default_transaction_read_only``, MySQL and
    MariaDB ``SET SESSION TRANSACTION READ ONLY``, SQLite ``PRAGMA query_only`` — so no statement
    reconcile runs there (a query side, a filter, a function) can write. ``statement_timeout_s``
    bounds each statement on PostgreSQL (``statement_timeout``), MySQL (``max_execution_time``)
    and MariaDB (``max_statement_time``); SQLite has no such setting.
    Call it inside :func:`map_errors`: a URL that cannot be used raises SQLAlchemy's errors.
    """
    u = sa.make_url(normalize_url(url))
    kwargs: dict[str, Any] = {}
    backend = u.get_backend_name()
    session: list[str] = []
    if backend == "postgresql" and u.get_driver_name() == "psycopg":
        options = "-c timezone=UTC"
        if read_only:
            options += " -c default_transaction_read_only=on"
        if statement_timeout_s:
            options += f" -c statement_timeout={int(statement_timeout_s * 1000)}"
        kwargs["connect_args"] = {"options": options, "connect_timeout": 10}
    elif backend in ("mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": 10}
        # TIMESTAMP values are shown in the session's zone (the server's by default); in UTC they
        # mean what they say. DATETIME has no zone and is read as is, then taken as UTC.
        # A streamed side waits while the merge consumes the other one (a long run of keys only
        # the other side has, or a slower database): the server drops a connection whose writes
        # block for net_write_timeout (60 s by default), so allow a day.
        session += ["SET time_zone = '+00:00'", "SET SESSION net_write_timeout = 86400"]
        if read_only:
            session.append("SET SESSION TRANSACTION READ ONLY")
    elif backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    elif read_only and backend == "postgresql":
        kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
    engine = sa.create_engine(u, pool_pre_ping=True, **kwargs)
    if backend in ("mysql", "mariadb") and (session or statement_timeout_s):
        timeout_ms = int(statement_timeout_s * 1000) if statement_timeout_s else 0

        @sa.event.listens_for(engine, "connect")
        def _mysql_session(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for sql in session:
                cur.execute(sql)
            if timeout_ms:
                cur.execute("SELECT VERSION()")
                maria = "mariadb" in str(cur.fetchone()[0]).lower()
                if maria:
                    cur.execute(f"SET SESSION max_statement_time = {timeout_ms / 1000:.3f}")
                else:
                    cur.execute(f"SET SESSION max_execution_time = {timeout_ms}")
            cur.close()

    if backend == "sqlite":
        pragmas = ["PRAGMA busy_timeout=30000"] + (["PRAGMA journal_mode=WAL"] if sqlite_wal else [])
        if read_only:
            pragmas.append("PRAGMA query_only=ON")

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for pragma in pragmas:
                cur.execute(pragma)
            cur.close()

    return engine
