"""Every driver error an adapter can meet is mapped, once, to the project's error tree."""

from __future__ import annotations

import inspect

import psycopg
import pytest
import sqlalchemy.exc as sa_exc

from reconcile.db import DRIVER_ERRORS, map_errors
from reconcile.errors import PublishError, ReconcileError, SourceError, StoreError, VerifyError

URL = "postgresql://app:s3cret@db.internal:5432/shop"


def _instances() -> list[BaseException]:
    """One instance of every SQLAlchemy error class (DBAPI ones wrapping a real psycopg error)."""
    out: list[BaseException] = []
    for _, cls in inspect.getmembers(sa_exc, inspect.isclass):
        if not issubclass(cls, sa_exc.SQLAlchemyError):
            continue
        if issubclass(cls, sa_exc.DBAPIError):
            orig = psycopg.OperationalError(f"connection to {URL} failed\nDETAIL: second line")
            out.append(cls("SELECT 1", {}, orig))
        else:
            try:
                out.append(cls(f"boom at {URL}\nsecond line"))
            except TypeError:
                continue  # a few classes need special arguments; their bases are covered
    out += [
        OSError(f"refused {URL}"),
        ConnectionResetError("reset"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "x"),
    ]
    return out


@pytest.mark.parametrize("error", [StoreError, SourceError, PublishError, VerifyError])
def test_every_driver_error_becomes_one_masked_line_of_the_tree(error: type[ReconcileError]) -> None:
    seen = 0
    for exc in _instances():
        assert isinstance(exc, DRIVER_ERRORS), type(exc)
        with pytest.raises(error) as got:
            with map_errors("truth", URL, error):
                raise exc
        text = str(got.value)
        assert "\n" not in text and "s3cret" not in text and text.startswith("truth:"), (type(exc), text)
        assert got.value.__cause__ is None or got.value.__suppress_context__
        seen += 1
    assert seen > 30  # every class sqlalchemy.exc defines, not a sample


def test_the_projects_own_errors_pass_through_unchanged() -> None:
    with pytest.raises(SourceError, match="^mine$"):
        with map_errors("audit store", URL, StoreError):
            raise SourceError("mine")
