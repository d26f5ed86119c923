"""The exception tree of reconcile.

Every error a user can cause or meet is one of these; the CLI prints its message on one line
and exits with its ``exit_code`` (diff(1) style: 1 means "drift or a refusal", 2 "trouble").
Driver errors (SQLAlchemy, psycopg, confluent-kafka) are translated once, at the adapter edge,
with ``raise ... from e``.

    ReconcileError                 exit 2
    ├── SpecError                  a spec file is unreadable, malformed or names something absent
    ├── SourceError                reading truth or projection failed (connect, table, column, order)
    ├── StoreError                 the audit store cannot be opened, migrated or written
    │   └── ConcurrentRun          another audit of the same spec holds its lock (--wait waits)
    ├── PublishError               corrective events could not be delivered to the broker
    ├── VerifyError                verification could not run (no lag reading, timeout)
    ├── PreflightFailed            a data-quality gate failed before the diff
    ├── SchemaIncompatible         an event schema breaks its compatibility mode
    └── GuardTripped               exit 1: the blast-radius guard refused to auto-correct
"""

from __future__ import annotations

import re

__all__ = [
    "ReconcileError",
    "SpecError",
    "SourceError",
    "StoreError",
    "ConcurrentRun",
    "PublishError",
    "VerifyError",
    "PreflightFailed",
    "SchemaIncompatible",
    "GuardTripped",
    "mask_url",
]


class ReconcileError(Exception):
    """Base of every error reconcile raises on purpose; ``str(e)`` is one line for a user."""

    exit_code = 2


class SpecError(ReconcileError):
    """A spec file is unreadable, malformed, or names a table or column that does not exist."""


class SourceError(ReconcileError):
    """Reading the truth or the projection failed."""


class StoreError(ReconcileError):
    """The audit store cannot be opened, migrated, read or written."""


class ConcurrentRun(StoreError):
    """Another audit of the same spec is running; one audit per spec at a time."""


class PublishError(ReconcileError):
    """Corrective events could not be delivered to the broker."""


class VerifyError(ReconcileError):
    """Verification could not run to a verdict (for example the consumer lag never reached 0)."""


class PreflightFailed(ReconcileError):
    """A preflight data-quality gate failed; the run stopped before the diff.

    ``result`` is the :class:`~reconcile.gates.expectations.PreflightResult` (per-side outcomes, docs path).
    """

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result


class SchemaIncompatible(ReconcileError):
    """An event schema version breaks the compatibility mode of its subject."""


class GuardTripped(ReconcileError):
    """The blast-radius guard refused to correct: more drift than the spec allows."""

    exit_code = 1


_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^\s]*)(?P<at>@)")
_PASSWORD_PARAM = re.compile(r"(?P<head>(?:password|passwd|pwd)=)(?P<pw>[^&\s]*)", re.IGNORECASE)


def mask_url(text: str) -> str:
    """Replace every password inside URLs (``user:pw@`` and ``password=``) in text with ``***``."""
    text = _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***{m['at']}", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['head']}***", text)
