"""Database plumbing shared by every adapter: engines, URLs, and driver errors.

The SQL readers (truth and projection), the audit store, the embedded event log and the
reference projector all open databases the same way and translate driver errors the same way,
so both live here, below all of them, once:

* :func:`normalize_url` picks the drivers reconcile ships with when a URL names none;
* :func:`make_engine` creates an engine with reconcile's defaults (UTC sessions, connect
  timeouts, SQLite busy timeout and, for databases reconcile owns, WAL);
* :func:`map_errors` turns any driver error raised inside it into one line of the project's
  error tree (:mod:`reconcile.errors`), naming what failed and the database, password masked.
"""

from __future__ import annotations

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
        if e.connection_invalidated or isinstance(e, sa.exc.OperationalError | sa.exc.InterfaceError):
            raise error(f"{what}: database {where}: {first_line(e)}") from None
        raise error(f"{what}: query failed on {where}: {first_line(e)}") from None
    except (NoSuchModuleError, ArgumentError) as e:
        raise error(f"{what}: cannot use database URL {where}: {first_line(e)}") from None
    except SQLAlchemyError as e:
        raise error(f"{what}: database {where}: {first_line(e)}") from None
    except (OSError, UnicodeError) as e:
        raise error(f"{what}: database {where}: {mask_url(str(e))}") from None


def make_engine(url: str, *, sqlite_wal: bool = False) -> Engine:
    """An engine (no connection yet) with reconcile's defaults, for any URL it is given.

    psycopg 3 / PyMySQL when the URL names no driver; PostgreSQL sessions in UTC; connect
    timeouts so a dead host fails fast; on SQLite a busy timeout, and WAL when ``sqlite_wal``
    (only for databases reconcile owns: the store, the embedded log, the demo shop — switching a
    user's file to WAL would be a write, and truth and projection are read-only to reconcile).
    Call it inside :func:`map_errors`: a URL that cannot be used raises SQLAlchemy's errors.
    """
    u = sa.make_url(normalize_url(url))
    kwargs: dict[str, Any] = {}
    backend = u.get_backend_name()
    if backend == "postgresql" and u.get_driver_name() == "psycopg":
        kwargs["connect_args"] = {"options": "-c timezone=UTC", "connect_timeout": 10}
    elif backend in ("mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    elif backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    engine = sa.create_engine(u, pool_pre_ping=True, **kwargs)
    if backend == "sqlite":
        pragmas = ["PRAGMA busy_timeout=30000"] + (["PRAGMA journal_mode=WAL"] if sqlite_wal else [])

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for pragma in pragmas:
                cur.execute(pragma)
            cur.close()

    return engine
