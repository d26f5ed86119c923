"""The context of a use case: the audit store, the transports and their settings, resolved once.

A shell makes one :class:`Context` from its flags and environment (the CLI) or from its
connections (Airflow), and passes it to every use case it calls. Nothing below the shells reads
``KAFKA_BOOTSTRAP_SERVERS``, ``RECONCILE_STORE_URL`` or chooses a transport by name: the
context does, here, once.

``conn_id:`` sides resolve through the same convention Airflow uses, so a spec runs the same
from a shell and from a DAG: the environment variable ``AIRFLOW_CONN_<CONN_ID>`` holding a URI
(``postgresql://user:pw@host:5432/db``) or JSON (``{"conn_type": "postgres", "host": ...}``).
Airflow passes its own resolvers instead: one for connections, one for the broker's settings
(its Kafka connection), each called only when a use case needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import SpecError
from ..spec import Side, Spec
from ..store import Store, open_store

if TYPE_CHECKING:
    from ..events.kafka import KafkaSettings
    from ..events.reader import TopicReader
    from ..events.transport import Transport

__all__ = ["Context", "env_connection_url", "started_by_env"]

ConnResolver = Callable[[str], str]


def env_connection_url(conn_id: str) -> str:
    """A database URL for ``conn_id`` from ``AIRFLOW_CONN_<CONN_ID>`` (a URI, or Airflow's JSON form)."""
    name = "AIRFLOW_CONN_" + conn_id.upper()
    raw = os.environ.get(name)
    if not raw:
        raise SpecError(
            f"conn_id {conn_id!r}: no connection; set {name} to a database URI "
            "(postgresql://user:password@host:5432/db) or run the spec from Airflow"
        )
    raw = raw.strip()
    if not raw.startswith("{"):
        return _uri(raw)
    try:
        c = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SpecError(f"{name}: not valid JSON ({e.msg} at char {e.pos})") from None
    extra = c.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra or "{}")
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    kind = str(c.get("conn_type") or "")
    if kind == "sqlite":
        return f"sqlite:///{c.get('host') or c.get('schema') or ''}"
    if kind == "kafka":  # a topic side's broker: librdkafka settings travel as the query
        from urllib.parse import urlencode

        where = f"{c.get('host') or ''}{':' + str(c['port']) if c.get('port') else ''}"
        return f"kafka://{where}/?{urlencode({str(k): str(v) for k, v in extra.items()})}"
    auth = ""
    if c.get("login"):
        auth = quote(str(c["login"]), safe="")
        if c.get("password"):
            auth += ":" + quote(str(c["password"]), safe="")
        auth += "@"
    port = f":{c['port']}" if c.get("port") else ""
    return _uri(f"{kind}://{auth}{c.get('host') or ''}{port}/{c.get('schema') or ''}")


# Airflow exports the running task's dag run id (``AIRFLOW_CTX_DAG_RUN_ID``) to its environment;
# the id's prefix says what made the run.
_RUN_ID_PREFIXES = (
    ("scheduled__", "schedule"),
    ("manual__", "on demand"),
    ("backfill__", "backfill"),
    ("asset_triggered__", "asset"),
    ("dataset_triggered__", "asset"),
)


def started_by_env() -> str | None:
    """What started this process's runs, as Airflow's environment tells (None outside Airflow)."""
    run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if not run_id:
        return None
    return next((who for prefix, who in _RUN_ID_PREFIXES if run_id.startswith(prefix)), "airflow")


def _uri(uri: str) -> str:
    from ..db import normalize_url

    if uri.startswith("sqlite://"):
        return uri
    return normalize_url(uri)


@dataclass
class Context:
    """Where state and events live for the use cases of one shell invocation.

    ``store``: an open store, or ``store_url`` to open one on first use (default
    ``$RECONCILE_STORE_URL``, else a SQLite file in the working folder). ``kafka``: the broker's
    settings (default from the environment). ``embedded_url``: the database of the embedded
    log (default ``$RECONCILE_EMBEDDED_LOG_URL``, else the store's). ``resolve_conn`` turns a
    side's ``conn_id`` into a URL (default: :func:`env_connection_url`); ``resolve_kafka``
    makes the broker's settings when none are given and a use case needs them (default: the
    environment's; Airflow: its Kafka connection). ``started_by`` is
    recorded with every run (``cli``, ``schedule``, ``on demand`` ...; default: what Airflow's
    environment says, else ``api``).
    """

    store_url: str | None = None
    kafka: KafkaSettings | None = None
    embedded_url: str | None = None
    resolve_conn: ConnResolver = env_connection_url
    resolve_kafka: Callable[[], KafkaSettings] | None = None
    kafka_timeout_s: float = 30.0
    started_by: str | None = None
    _store: Store | None = field(default=None, repr=False)
    _transports: dict[str, Transport] = field(default_factory=dict, repr=False)
    _conns: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, store: Store, **settings: Any) -> Context:
        """A context over an already open store."""
        return cls(store_url=store.url, _store=store, **settings)

    # -- state -----------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The audit store, opened on first use."""
        if self._store is None:
            self._store = open_store(self.store_url)
        return self._store

    def who(self) -> str:
        """What started the runs of this context (stored in each run's scope)."""
        return self.started_by or started_by_env() or "api"

    # -- sides -----------------------------------------------------------------------------
    def side_url(self, side: Side) -> str | None:
        """A side's database URL: its ``conn_id`` resolved, else its ``url`` (None for a topic side)."""
        if side.topic:
            return None
        if side.conn_id:
            return self.conn_url(side.conn_id)
        return side.url

    def conn_url(self, conn_id: str) -> str:
        """A connection's URL, looked up once per context (an Airflow lookup can be a database query)."""
        if conn_id not in self._conns:
            self._conns[conn_id] = self.resolve_conn(conn_id)
        return self._conns[conn_id]

    def urls(self, spec: Spec) -> dict[str, str | None]:
        """``truth_url`` / ``projection_url`` of a spec, resolved."""
        return {"truth_url": self.side_url(spec.truth), "projection_url": self.side_url(spec.projection)}

    # -- events ----------------------------------------------------------------------------
    def kafka_settings(self) -> KafkaSettings:
        """The broker's settings unless given: ``resolve_kafka()``, else the environment's
        (``KAFKA_BOOTSTRAP_SERVERS``, ``RECONCILE_KAFKA_*``). Resolved once."""
        if self.kafka is None:
            if self.resolve_kafka is not None:
                self.kafka = self.resolve_kafka()
            else:
                from ..events.kafka import KafkaSettings

                self.kafka = KafkaSettings.from_env()
        return self.kafka

    def topic_reader(self, side: Side) -> TopicReader:
        """A reader of a topic side's broker (or the embedded log); the caller closes it.

        Kafka settings: the side's ``bootstrap:``, else its ``conn_id:`` resolved like a database
        connection (an Airflow Kafka connection: ``kafka://host:port`` or ``kafka:///?bootstrap.servers=...``),
        else the context's (:meth:`kafka_settings`: in Airflow its Kafka connection, else
        ``KAFKA_BOOTSTRAP_SERVERS``, ``RECONCILE_KAFKA_*``).
        """
        from ..events.reader import open_reader

        if side.transport == "embedded":
            return open_reader("embedded", embedded_url=self.log_url())
        from ..events.kafka import KafkaSettings
        from ..events.kafka_reader import settings_from_uri

        if side.bootstrap:
            settings = KafkaSettings(side.bootstrap, dict(self.kafka_settings().extra))
        elif side.conn_id:
            settings = settings_from_uri(self.conn_url(side.conn_id), self.kafka_settings())
        else:
            settings = self.kafka_settings()
        return open_reader("kafka", kafka=settings, timeout_s=self.kafka_timeout_s)

    def log_url(self) -> str:
        """Where the embedded log lives."""
        return self.embedded_url or os.environ.get("RECONCILE_EMBEDDED_LOG_URL") or self.store.url

    def transport(self, kind: str) -> Transport:
        """The transport called ``kind`` (``kafka`` or ``embedded``), made once per context."""
        if kind not in self._transports:
            from ..events import open_transport

            self._transports[kind] = open_transport(
                kind,
                kafka=self.kafka_settings() if kind == "kafka" else None,
                embedded_url=self.log_url() if kind == "embedded" else None,
                timeout_s=self.kafka_timeout_s,
            )
        return self._transports[kind]

    def close(self) -> None:
        """Release the transports and the store."""
        for t in self._transports.values():
            t.close()
        self._transports.clear()
        if self._store is not None:
            self._store.dispose()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
