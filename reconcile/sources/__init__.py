"""Readers of truth and projection (rows in)."""

from .sql import SqlSource, key_kind, normalize_url, open_engine, source_errors

__all__ = ["SqlSource", "key_kind", "normalize_url", "open_engine", "source_errors"]
