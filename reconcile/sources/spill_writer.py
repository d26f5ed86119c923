"""The topic spill's writer as its own process: batches of rows in on stdin, INSERTed into SQLite.

Reading a long topic is CPU-bound in one Python process (bench/TOPIC.md), and about a quarter of
it is SQLite inserting the rows into the spill. :class:`SpillWriter` hands that part to a second
process, so it runs on another core while the audit consumes and decodes the next batches. The
process is a plain interpreter running this file as a script (``python -I -S``): standard library
only (sqlite3, marshal, pickle), no ``reconcile`` imports, so it starts in tens of milliseconds,
and fork is never used beside librdkafka's threads. Its CPU time is the audit's children's, so a
run's CPU time counts it.

The rows are the same Python values either way (marshal and pickle give back what they were
given), inserted by the same statement in the same order, so the spill is the same file as one
written in-process. Memory stays bounded: the pipe holds at most one batch in flight, and
``write`` waits while the writer is behind.

Protocol, on the writer's stdin: frames of one kind byte and a 4-byte little-endian length, then
the payload. ``S``: the setup, JSON (the file, its pragmas, the insert statement); ``M``: a batch
of rows, marshalled; ``P``: a batch pickled (a value marshal cannot write); ``E``: the end (commit
and exit 0). A SQLite error ends the writer with its text on stderr and exit status 3.
"""

from __future__ import annotations

import json
import marshal
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["SpillWriter", "SpillWriteError", "available"]

_HEAD = struct.Struct("<cI")
_FAILED = 3


def available() -> bool:
    """Whether a writer process can be started: an interpreter to run, and this file on disk
    (not inside a zip archive)."""
    return bool(sys.executable) and os.path.isfile(__file__)


class SpillWriteError(Exception):
    """The writer process failed: its SQLite error (or how it ended) as the message."""


class SpillWriter:
    """A writer process inserting rows into one spill file (the table made by the caller)."""

    def __init__(self, path: str, pragmas: Sequence[str], insert: str):
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdin is not None
        self._out: IO[bytes] = self.process.stdin
        _grow_pipe(self._out)
        self._send(b"S", json.dumps({"path": path, "pragmas": list(pragmas), "insert": insert}).encode())

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Queue one batch for insertion (waits while the writer is a batch behind)."""
        try:
            payload, kind = marshal.dumps(rows), b"M"
        except ValueError:  # a value of a type marshal does not write
            payload, kind = pickle.dumps(rows, pickle.HIGHEST_PROTOCOL), b"P"
        self._send(kind, payload)

    def finish(self) -> None:
        """Commit and wait for the writer; raises SpillWriteError when it failed."""
        try:
            self._send(b"E", b"")
            self._out.close()
        except SpillWriteError:
            pass  # it is gone: its own error below says why
        self._wait()

    def stop(self) -> None:
        """End the writer without committing (the run failed elsewhere)."""
        if self.process.poll() is None:
            self.process.kill()
        try:
            self._out.close()
        except OSError:
            pass
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def _send(self, kind: bytes, payload: bytes) -> None:
        try:
            self._out.write(_HEAD.pack(kind, len(payload)))
            self._out.write(payload)
        except (BrokenPipeError, ValueError):  # the writer stopped: say why
            self._wait()
            raise SpillWriteError("the spill writer stopped") from None

    def _wait(self) -> None:
        assert self.process.stderr is not None
        err = self.process.stderr.read().decode("utf-8", "replace").strip()
        self.process.stderr.close()
        code = self.process.wait()
        if code != 0:
            last = err.splitlines()[-1] if err else f"the spill writer ended with status {code}"
            raise SpillWriteError(last)


def _grow_pipe(pipe: IO[bytes]) -> None:
    """A pipe of 1 MiB (Linux; the default is 64 KiB): one batch fits while the writer is busy."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


def _read(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError("the audit closed the pipe before the end of the rows")
    return data


def _serve(stream: IO[bytes]) -> None:
    kind, size = _HEAD.unpack(_read(stream, _HEAD.size))
    if kind != b"S":
        raise EOFError(f"expected the setup frame, got {kind!r}")
    setup = json.loads(_read(stream, size))
    conn = sqlite3.connect(setup["path"], isolation_level=None)
    try:
        for pragma in setup["pragmas"]:
            conn.execute(f"PRAGMA {pragma}")
        insert = setup["insert"]
        conn.execute("BEGIN")
        while True:
            kind, size = _HEAD.unpack(_read(stream, _HEAD.size))
            if kind == b"E":
                break
            data = _read(stream, size)
            rows = marshal.loads(data) if kind == b"M" else pickle.loads(data)  # noqa: S301 - our own parent
            conn.executemany(insert, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def main() -> int:
    """Serve one spill: frames on stdin until the end frame (see the module's docstring)."""
    try:
        _serve(sys.stdin.buffer)
    except (sqlite3.Error, EOFError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return _FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
