"""Shared fixtures.

Integration tests (marker ``integration``) talk to the real PostgreSQL, MariaDB and Kafka that
``make services`` starts; they never skip when those are down — they fail with a hint, so a
green suite always means the real services were exercised. Every test gets its own database
or topic with a uuid suffix, so tests (and developers) never share state.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("RECONCILE_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
MYSQL_URL = os.environ.get("RECONCILE_TEST_MYSQL_URL", "mysql://reconcile:reconcile@127.0.0.1:3306/mysql")
KAFKA = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def _pg(url: str) -> str:
    return (
        url.replace("postgresql://", "postgresql+psycopg://", 1) if url.startswith("postgresql://") else url
    )


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    """An AUTOCOMMIT engine on the test server's maintenance database."""
    engine = sa.create_engine(_pg(PG_URL), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as e:
        pytest.fail(f"PostgreSQL at {PG_URL.split('@')[-1]} is not reachable: run `make services` ({e.orig})")
    yield engine
    engine.dispose()


@pytest.fixture
def make_pg_db(pg_admin: sa.Engine) -> Iterator[object]:
    """Factory: a fresh PostgreSQL database per call, dropped after the test. Returns its URL."""
    made: list[str] = []

    def make(prefix: str = "rc") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return str(sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False))

    yield make
    with pg_admin.connect() as conn:
        for name in made:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(make_pg_db) -> str:  # type: ignore[no-untyped-def]
    """A fresh PostgreSQL database for this test."""
    return make_pg_db()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def mysql_admin() -> Iterator[sa.Engine]:
    """An AUTOCOMMIT engine on the MariaDB/MySQL test server (a user that may create databases)."""
    from reconcile.db import normalize_url

    engine = sa.create_engine(normalize_url(MYSQL_URL), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as e:
        pytest.fail(
            f"MariaDB at {MYSQL_URL.split('@')[-1]} is not reachable: run `make services` "
            f"or set RECONCILE_TEST_MYSQL_URL ({e.orig})"
        )
    yield engine
    engine.dispose()


@pytest.fixture
def make_mysql_db(mysql_admin: sa.Engine) -> Iterator[object]:
    """Factory: a fresh MariaDB database per call, dropped after the test. Returns its URL."""
    made: list[str] = []

    def make(prefix: str = "rc") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with mysql_admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
        made.append(name)
        return str(sa.make_url(MYSQL_URL).set(database=name).render_as_string(hide_password=False))

    yield make
    with mysql_admin.connect() as conn:
        for name in made:
            # Like PostgreSQL's DROP ... WITH (FORCE): a session left open on it would block the drop.
            others = "SELECT id FROM information_schema.processlist WHERE db = :db AND id <> CONNECTION_ID()"
            for (pid,) in conn.execute(sa.text(others), {"db": name}):
                with contextlib.suppress(sa.exc.DBAPIError):  # it may have ended meanwhile
                    conn.execute(sa.text(f"KILL {int(pid)}"))
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The real broker's bootstrap servers; fails (not skips) when it does not answer."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": KAFKA})
    try:
        admin.list_topics(timeout=10)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"Kafka at {KAFKA} is not reachable: run `make services` ({e})")
    return KAFKA


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh topic (3 partitions) for this test, deleted afterwards."""
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"test.{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])[name].result(30)
    yield name
    admin.delete_topics([name])[name].result(30)


@pytest.fixture
def make_store() -> Iterator[object]:
    """Factory: an AuditStore on a URL, disposed after the test (no connection left open)."""
    from reconcile.store import AuditStore

    made: list[AuditStore] = []

    def make(url: str) -> AuditStore:
        made.append(AuditStore(url))
        return made[-1]

    yield make
    for s in made:
        s.dispose()


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A second, private Kafka broker (same jars, own port and data) that this test may stop."""
    env = {
        **os.environ,
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_HOME_DIR": str(tmp_path / "kafka"),
    }

    def ctl(action: str) -> None:
        subprocess.run(
            [str(ROOT / "scripts" / "kafka.sh"), action],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    ctl("start")
    yield f"127.0.0.1:{env['KAFKA_PORT']}", ctl
    ctl("stop")
