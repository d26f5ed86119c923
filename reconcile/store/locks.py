"""Named locks held for a block of work, in the audit store's own database.

One audit of a spec at a time: PostgreSQL session advisory locks, MySQL/MariaDB ``GET_LOCK``,
and on SQLite an OS file lock (``flock``) on a file beside the database. Each is released by the
database (or the kernel) when its holder's connection or process dies, so a crash never leaves a
stale lock behind.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..errors import ConcurrentRun

if TYPE_CHECKING:
    from . import AuditStore

__all__ = ["hold"]

POLL_S = 0.25
_memory_locks: dict[str, threading.Lock] = {}
_memory_guard = threading.Lock()


def _key(name: str) -> int:
    """A signed 64-bit advisory-lock key for a lock name."""
    return int.from_bytes(hashlib.sha256(f"reconcile:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def hold(store: AuditStore, name: str, *, wait: bool, describe: Callable[[], str]) -> Iterator[None]:
    """Hold lock ``name`` for the block; busy: raise ConcurrentRun, or wait when ``wait``."""
    backend = store.engine.dialect.name
    if backend == "postgresql":
        cm = _advisory(store, name, wait, describe)
    elif backend in ("mysql", "mariadb"):
        cm = _get_lock(store, name, wait, describe)
    else:
        cm = _file_lock(store, name, wait, describe)
    with cm:
        yield


def _busy(name: str, describe: Callable[[], str]) -> ConcurrentRun:
    what = name.replace("audit:", "spec ", 1)
    return ConcurrentRun(
        f"{what}: another audit is running ({describe()}); one audit per spec at a time: "
        "rerun when it is done, or pass --wait to wait for it"
    )


@contextmanager
def _advisory(store: AuditStore, name: str, wait: bool, describe: Callable[[], str]) -> Iterator[None]:
    key = _key(name)
    with store._errors(), store.engine.connect() as conn:
        while not conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar():
            conn.rollback()
            if not wait:
                raise _busy(name, describe)
            time.sleep(POLL_S)
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
            conn.commit()


@contextmanager
def _get_lock(store: AuditStore, name: str, wait: bool, describe: Callable[[], str]) -> Iterator[None]:
    key = "reconcile:" + hashlib.sha1(name.encode()).hexdigest()  # noqa: S324 - a name, not a secret
    with store._errors(), store.engine.connect() as conn:
        while not conn.execute(sa.text("SELECT GET_LOCK(:k, 0)"), {"k": key}).scalar():
            if not wait:
                raise _busy(name, describe)
            time.sleep(POLL_S)
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT RELEASE_LOCK(:k)"), {"k": key})


@contextmanager
def _file_lock(store: AuditStore, name: str, wait: bool, describe: Callable[[], str]) -> Iterator[None]:
    import fcntl

    database = store.engine.url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        with _memory_lock(name, wait, describe):
            yield
        return
    path = f"{os.path.abspath(database)}.{hashlib.sha1(name.encode()).hexdigest()[:16]}.lock"  # noqa: S324
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise _busy(name, describe) from None
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _memory_lock(name: str, wait: bool, describe: Callable[[], str]) -> Iterator[None]:
    with _memory_guard:
        lock = _memory_locks.setdefault(name, threading.Lock())
    if not lock.acquire(blocking=wait):
        raise _busy(name, describe)
    try:
        yield
    finally:
        lock.release()
