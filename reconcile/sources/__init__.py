"""Rows in: the SQL readers of truth and projection (read-only), key ranges, checksum pushdown."""

from .sql import SqlSource, key_kind, open_engine, source_errors

__all__ = ["SqlSource", "key_kind", "open_engine", "source_errors"]
