"""The spec: one YAML file per truth/projection pair, loaded into frozen, validated models.

A spec says how to read each side, which key identifies an entity, which columns are compared
(with their projection names, tolerances and normalisers), the freshness rules that keep
in-flight entities out of the findings, and how to correct drift. ``${VAR}`` (and
``${VAR:-default}``) in any string expands from the environment when the file is loaded.

Every problem is raised as one :class:`~reconcile.errors.SpecError` line naming the file and
the field, e.g. ``spec inventory.yaml: columns.price.tolerance: must be >= 0``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SpecError, mask_url
from .fields import BUILTIN_COLUMNS, FieldError, parse_field

__all__ = [
    "load_specs",
    "default_specs_dir",
    "Spec",
    "Side",
    "KeyColumn",
    "Column",
    "Freshness",
    "EventPath",
    "PathEntities",
    "PathSource",
    "PathApplied",
    "Correction",
    "Checks",
    "Throttle",
    "Expectation",
    "Alerts",
    "EmailAlert",
    "WebhookAlert",
    "ALERT_EVENTS",
    "load_spec",
    "parse_duration",
    "NORMALIZERS",
]

NORMALIZERS = ("strip", "casefold", "lower", "upper", "collapse_spaces")
Normalizer = Literal["strip", "casefold", "lower", "upper", "collapse_spaces"]

_DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_ENV_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def parse_duration(value: Any) -> timedelta:
    """Parse ``30s``, ``5m``, ``1h``, ``2d``, ``250ms`` or a number of seconds into a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r} (use 30s, 5m, 1h ...)")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use 30s, 5m, 1h ...)")
    return timedelta(seconds=float(m["n"]) * _UNIT_SECONDS[m["unit"]])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Side(_Model):
    """How to read one side: a table or query of a database (a SQLAlchemy URL or an Airflow
    connection id), or a Kafka topic read as a table (``topic:`` with its ``fields:``)."""

    url: str | None = None
    conn_id: str | None = None
    table: str | None = None
    query: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    where: str | None = None
    # -- a topic side ----------------------------------------------------------------------
    topic: str | None = None
    bootstrap: str | None = None  # default: the context's Kafka settings (KAFKA_BOOTSTRAP_SERVERS)
    transport: Literal["kafka", "embedded"] = "kafka"
    since: timedelta | None = None  # messages from the first offset at or after now - since
    from_: Literal["earliest"] | None = Field(default=None, alias="from")
    latest_per_key: bool = False  # a compacted-topic view: the last message per message key
    fields: dict[str, str] = Field(default_factory=dict)  # column name -> message field

    @field_validator("since", mode="before")
    @classmethod
    def _since(cls, v: Any) -> timedelta | None:
        return None if v is None else parse_duration(v)

    @field_validator("fields", mode="before")
    @classmethod
    def _fields(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name, expr in v.items():
                if not isinstance(expr, str):
                    raise ValueError(f"{name}: {expr!r} is not a field (a string such as header:ce_id)")
                try:
                    parse_field(expr)
                except FieldError as e:
                    raise ValueError(f"{name}: {e}") from None
                if str(name) in BUILTIN_COLUMNS:
                    raise ValueError(f"{name}: a built-in column of every topic side; pick another name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Side:
        if self.topic is not None:
            return self._topic_side()
        topical = [
            name
            for name, given in (
                ("bootstrap", self.bootstrap),
                ("since", self.since),
                ("from", self.from_),
                ("latest_per_key", self.latest_per_key),
                ("fields", self.fields),
                ("transport", self.transport != "kafka"),
            )
            if given
        ]
        if topical:
            raise ValueError(f"`{topical[0]}:` is only for a topic side (one with `topic:`)")
        if not self.url and not self.conn_id:
            raise ValueError(
                "needs `url:` (a SQLAlchemy URL), `conn_id:` (an Airflow connection) or `topic:` (Kafka)"
            )
        if bool(self.table) == bool(self.query):
            raise ValueError("needs exactly one of `table:` or `query:`")
        if self.where is not None:
            # Checked as an expression here (columns are checked against the side when it is
            # opened): a `where:` is rebuilt from its parse tree, never pasted into SQL.
            from .filters import parse_filter

            try:
                parse_filter(self.where, origin="where")
            except SpecError as e:
                raise ValueError(str(e)) from None
        return self

    def _topic_side(self) -> Side:
        if not self.topic or not self.topic.strip():
            raise ValueError("`topic:` needs a topic name")
        for name, given in (("url", self.url), ("table", self.table), ("query", self.query)):
            if given:
                raise ValueError(
                    f"`{name}:` cannot go with `topic:` (a topic side takes `bootstrap:` or `conn_id:`)"
                )
        if self.schema_:
            raise ValueError("`schema:` cannot go with `topic:`")
        if self.since is not None and self.from_ is not None:
            raise ValueError("give `since:` or `from: earliest`, not both")
        if self.since is not None and self.since.total_seconds() <= 0:
            raise ValueError("`since:` must be a positive duration (24h, 30m ...)")
        if not self.fields:
            raise ValueError("a topic side needs `fields:` (column: key | header:NAME | $.json.path ...)")
        return self

    @property
    def is_topic(self) -> bool:
        """True when this side is a Kafka topic read as a table."""
        return self.topic is not None

    @property
    def columns(self) -> tuple[str, ...]:
        """A topic side's column names: its fields, then the built-in ones (empty for SQL sides)."""
        return (*self.fields, *BUILTIN_COLUMNS) if self.is_topic else ()

    @property
    def display(self) -> str:
        """Where this side lives, with any password masked."""
        if self.is_topic:
            at = self.bootstrap or (f"conn_id {self.conn_id}" if self.conn_id else None)
            via = " (embedded log)" if self.transport == "embedded" else ""
            return f"topic {self.topic}{via}" + (f" at {mask_url(at)}" if at else "")
        what = f"table {self.schema_ + '.' if self.schema_ else ''}{self.table}" if self.table else "query"
        return f"{what} at {mask_url(self.url or 'conn_id ' + str(self.conn_id))}"


class KeyColumn(_Model):
    """One key column: its truth name and its projection name (the same unless renamed)."""

    truth: str
    projection: str


class Column(_Model):
    """One compared column (keyed by its truth name in ``Spec.columns``)."""

    projection: str | None = None
    tolerance: float | None = Field(default=None, ge=0)
    normalize: tuple[Normalizer, ...] = ()

    @field_validator("normalize", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Freshness(_Model):
    """Which entities are still in flight (pending) rather than drifted."""

    truth_column: str | None = None
    projection_column: str | None = None
    grace: timedelta = timedelta(minutes=5)
    confirm_runs: int = Field(default=1, ge=1)
    # On a topic side: messages at or past this group's committed offsets are in flight (pending).
    consumer_group: str | None = None

    @field_validator("grace", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Throttle(_Model):
    """Gentle on production: scans in chunks sized to ``chunk_time``, paused while the database
    has more than ``max_active_sessions`` active sessions (pt-table-checksum's habit)."""

    chunk_time: timedelta = timedelta(milliseconds=500)
    max_active_sessions: int | None = Field(default=None, ge=1)

    @field_validator("chunk_time", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        d = parse_duration(v)
        if d <= timedelta(0):
            raise ValueError("must be more than 0 (such as 0.5s)")
        return d


class PathEntities(_Model):
    """Which entities (by truth key names) one event changes: ``key`` maps each truth key column
    to a JSON path into the event value; with ``each``, one entity per element of that array
    (a ``key`` path not starting with ``$`` is then relative to the element)."""

    each: str | None = None
    key: dict[str, str]

    @field_validator("each")
    @classmethod
    def _each(cls, v: Any) -> Any:
        if v is not None:
            _json_path(v, "each")
        return v

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, v: Any) -> Any:
        if not isinstance(v, dict) or not v:
            raise ValueError("needs a mapping of truth key column -> JSON path ({sku: $.data.sku})")
        for name, path in v.items():
            if not isinstance(path, str) or not path.strip():
                raise ValueError(f"{name}: {path!r} is not a JSON path")
        return {str(k): str(p) for k, p in v.items()}


class PathSource(_Model):
    """The table whose rows each become one event (an outbox, or the facts table)."""

    table: str
    url: str | None = None  # default: the truth's database
    conn_id: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    event_id: str = "event_id"
    payload: str | None = None  # a JSON (or JSON text) column holding the event value
    published: str | None = None  # NULL until the relay published the row
    # When the row was written (for publish_grace): a column, or a JSON path into the payload.
    # Default: a ``created_at`` column, else the CloudEvents time (``$.time``, or ``ce_time`` of a
    # ``headers`` JSON column), when the table has them.
    written: str | None = None

    @model_validator(mode="after")
    def _one_database(self) -> PathSource:
        if self.url and self.conn_id:
            raise ValueError("give `url:` or `conn_id:`, not both")
        if not self.table.strip():
            raise ValueError("`table:` needs a table name")
        return self


class PathApplied(_Model):
    """The projector's journal of applied events (one row per applied event id)."""

    table: str
    url: str | None = None  # default: the projection's database
    conn_id: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    event_id: str = "event_id"

    @model_validator(mode="after")
    def _one_database(self) -> PathApplied:
        if self.url and self.conn_id:
            raise ValueError("give `url:` or `conn_id:`, not both")
        return self


class EventPath(_Model):
    """How the projection is fed: source table -> topic -> consumer group -> applied journal.

    With a path every finding carries its ``cause`` (the first broken stage), and pending is
    decided by positions (offsets, the outbox's published flag) rather than by ``freshness.grace``.
    """

    topic: str
    consumer_group: str
    event_id: str = "header:ce_id"  # where an event's id is (default: the CloudEvents id)
    window: timedelta = timedelta(hours=24)
    entities: PathEntities
    source: PathSource | None = None
    applied: PathApplied | None = None
    publish_grace: timedelta = timedelta(minutes=1)
    settle: timedelta = timedelta(seconds=30)
    # Where the topic is (default: the context's Kafka settings), as on a topic side.
    bootstrap: str | None = None
    transport: Literal["kafka", "embedded"] = "kafka"

    @field_validator("window", "publish_grace", "settle", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, v: str) -> str:
        try:
            parse_field(v)
        except FieldError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("topic", "consumer_group")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("needs a name")
        return v

    @model_validator(mode="after")
    def _positive(self) -> EventPath:
        if self.window.total_seconds() <= 0:
            raise ValueError("window: must be a positive duration (24h, 30m ...)")
        for name in ("publish_grace", "settle"):
            if getattr(self, name).total_seconds() < 0:
                raise ValueError(f"{name}: must not be negative")
        return self

    def topic_side(self) -> Side:
        """The path's topic as a topic side (for the topic-reading port)."""
        return Side(
            topic=self.topic,
            bootstrap=self.bootstrap,
            transport=self.transport,
            fields={"event_id": self.event_id},
        )


def _json_path(text: str, where: str) -> None:
    from .jsonpath import JsonPathError, compile_path

    if not text.startswith("$"):
        raise ValueError(f"{text!r} is not a JSON path (start it with $, as in $.data.lines[*])")
    try:
        compile_path(text)
    except JsonPathError as e:
        raise ValueError(str(e)) from None


class Correction(_Model):
    """Where and how corrective events go, and the blast-radius guard."""

    topic: str
    event_type: str
    consumer_group: str | None = None
    max_ratio: float = Field(default=0.01, ge=0)
    max_count: int = Field(default=1000, ge=0)
    payload: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    transport: Literal["kafka", "embedded"] = "kafka"
    # A corrective event larger than this (key, value and headers, in bytes) is refused by
    # `correct` (its finding stays open, saying why): below Kafka's default 1 MB message limit.
    max_event_bytes: int = Field(default=900_000, ge=1)
    verify_timeout: timedelta = timedelta(minutes=5)  # how long verify waits for the projector

    @field_validator("verify_timeout", mode="before")
    @classmethod
    def _verify_timeout(cls, v: Any) -> timedelta:
        return parse_duration(v)


class Expectation(_Model):
    """One user expectation in Great Expectations' own configuration format, plus its side.

    ``type`` and ``kwargs`` are exactly what GX writes in a suite file
    (``{"type": "expect_column_values_to_be_between", "kwargs": {"column": "on_hand", "min_value": 0}}``);
    column names are that side's own names. GX itself checks the kwargs when the gate runs.
    """

    side: Literal["truth", "projection", "both"]
    type: str = Field(pattern=r"^expect_[a-z0-9_]+$")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)


class Checks(_Model):
    """The preflight gates (``reconcile check``): the default suite's knobs and user expectations."""

    # Each side must keep at least this share of the rows it had in the last full audit
    # (0 keeps only "never empty when it had rows").
    min_row_ratio: float = Field(default=0.5, ge=0, le=1)
    expectations: tuple[Expectation, ...] = ()
    # GX suite JSON files per side; a relative path is taken from the spec file's folder.
    suites: dict[Literal["truth", "projection"], str] = Field(default_factory=dict)


AlertEvent = Literal["drift", "guard", "preflight", "health", "verify", "resolved"]
# Sent unless `on:` says otherwise. "resolved" (a healed incident) is sent only when asked for.
ALERT_EVENTS: tuple[AlertEvent, ...] = ("drift", "guard", "preflight", "health", "verify")


class EmailAlert(_Model):
    """Mail an alert through an SMTP connection (an Airflow connection id; no password here)."""

    to: tuple[str, ...]
    conn_id: str = "smtp_default"
    from_: str | None = Field(default=None, alias="from")

    @field_validator("to", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class WebhookAlert(_Model):
    """POST a Slack-compatible JSON alert (``{"text": ..., "blocks": ...}``) to a URL.

    The URL often holds a secret: name an Airflow connection (``conn_id``, its host/URI is the
    URL) instead of writing it here.
    """

    url: str | None = None
    conn_id: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> WebhookAlert:
        if bool(self.url) == bool(self.conn_id):
            raise ValueError("needs exactly one of `url:` or `conn_id:`")
        return self


class Alerts(_Model):
    """Who hears about confirmed drift, a tripped guard, a failed preflight or a health problem."""

    email: EmailAlert | None = None
    webhook: WebhookAlert | None = None
    on: tuple[AlertEvent, ...] = ALERT_EVENTS
    findings: int = Field(default=5, ge=0)  # how many findings an alert quotes
    stale_after: timedelta | None = None  # health: alert when the spec was not audited for this long

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean True.
        if isinstance(data, dict) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("email", mode="before")
    @classmethod
    def _email(cls, v: Any) -> Any:
        return {"to": v} if isinstance(v, str | list) else v

    @field_validator("webhook", mode="before")
    @classmethod
    def _webhook(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v

    @field_validator("on", mode="before")
    @classmethod
    def _on(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("stale_after", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> timedelta | None:
        return None if v is None else parse_duration(v)

    @property
    def channels(self) -> bool:
        return self.email is not None or self.webhook is not None

    def wants(self, event: str) -> bool:
        """True when this event should be sent to the configured channels."""
        return self.channels and event in self.on


class Spec(_Model):
    """One truth/projection pair. Frozen: narrow it by copy (``model_copy(update=...)``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str | None = None
    truth: Side
    projection: Side
    key: tuple[KeyColumn, ...]
    columns: dict[str, Column] = Field(default_factory=dict)
    freshness: Freshness = Freshness()
    path: EventPath | None = None
    correction: Correction | None = None
    schedule: str | None = "@hourly"
    alerts: Alerts = Alerts()
    fanout: int = Field(default=1, ge=1, le=256)  # key ranges the scheduled audit is split into
    checks: Checks = Checks()
    throttle: Throttle | None = None  # chunked, paused scans of truth and projection
    statement_timeout: timedelta | None = None  # each statement on truth/projection; 0: none

    @field_validator("statement_timeout", mode="before")
    @classmethod
    def _statement_timeout(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    source_path: str | None = Field(default=None, exclude=True)

    @field_validator("key", mode="before")
    @classmethod
    def _keys(cls, v: Any) -> Any:
        if isinstance(v, str | dict):
            v = [v]
        if not isinstance(v, list | tuple) or not v:
            raise ValueError("must be a non-empty list of column names or {truth: projection} maps")
        out = []
        for item in v:
            if isinstance(item, str):
                out.append({"truth": item, "projection": item})
            elif isinstance(item, dict) and len(item) == 1:
                ((t, p),) = item.items()
                out.append({"truth": str(t), "projection": str(p)})
            elif isinstance(item, dict) and set(item) == {"truth", "projection"}:
                out.append(item)
            else:
                raise ValueError(f"entry {item!r} must be a name or a one-entry {{truth: projection}} map")
        return out

    @field_validator("columns", mode="before")
    @classmethod
    def _columns(cls, v: Any) -> Any:
        if isinstance(v, list):  # a bare list of names: same name on both sides, exact compare
            return {str(name): {} for name in v}
        if isinstance(v, dict):
            return {k: ({} if c is None else c) for k, c in v.items()}
        return v

    @model_validator(mode="after")
    def _no_key_in_columns(self) -> Spec:
        keys = {k.truth for k in self.key}
        both = keys & set(self.columns)
        if both:
            raise ValueError(f"key column(s) {sorted(both)} cannot also be compared columns")
        return self

    @model_validator(mode="after")
    def _topic_sides(self) -> Spec:
        topics = [r for r in ("truth", "projection") if getattr(self, r).is_topic]
        if self.freshness.consumer_group and not topics:
            raise ValueError("freshness.consumer_group: only applies to a topic side (`topic:`)")
        if topics and self.fanout > 1:
            raise ValueError(f"fanout: a topic side ({topics[0]}) is read whole, once per run; use fanout: 1")
        for role in topics:
            side: Side = getattr(self, role)
            names = [k.truth if role == "truth" else k.projection for k in self.key]
            names += [c if role == "truth" else self.projection_name(c) for c in self.columns]
            fresh = self.freshness.truth_column if role == "truth" else self.freshness.projection_column
            names += [fresh] if fresh else []
            have = set(side.columns)
            for name in names:
                if name not in have:
                    raise ValueError(
                        f"{role}.fields: no field {name!r} on topic {side.topic} "
                        f"(add `{name}: $.path` or header:NAME under {role}.fields; "
                        f"built-in: {', '.join(BUILTIN_COLUMNS)})"
                    )
        return self

    @model_validator(mode="after")
    def _path_keys(self) -> Spec:
        if self.path is None:
            return self
        if self.fanout > 1:
            raise ValueError("fanout: causes are found in one pass over the path per audit; use fanout: 1")
        ent = self.path.entities
        keys = self.key_truth
        extra = [k for k in ent.key if k not in keys]
        if extra:
            raise ValueError(f"path.entities.key: {extra[0]!r} is not a key column (key: {', '.join(keys)})")
        absent = [k for k in keys if k not in ent.key]
        if absent:
            raise ValueError(f"path.entities.key: needs a path for key column {absent[0]!r}")
        for name, expr in ent.key.items():
            if expr.startswith("$"):
                try:
                    _json_path(expr, name)
                except ValueError as e:
                    raise ValueError(f"path.entities.key.{name}: {e}") from None
            elif ent.each is None:
                raise ValueError(
                    f"path.entities.key.{name}: {expr!r} is relative, which needs `each:` "
                    "(or write a path starting with $)"
                )
            else:
                try:
                    _json_path("$." + expr, name)
                except ValueError as e:
                    raise ValueError(f"path.entities.key.{name}: {e}") from None
        return self

    # -- derived names ---------------------------------------------------------------------
    @property
    def key_truth(self) -> list[str]:
        return [k.truth for k in self.key]

    @property
    def key_projection(self) -> list[str]:
        return [k.projection for k in self.key]

    def projection_name(self, truth_column: str) -> str:
        """The projection's name of a compared column (given by its truth name)."""
        col = self.columns[truth_column]
        return col.projection or truth_column

    @property
    def label(self) -> str:
        return self.source_path or self.name


def _expand_env(value: Any, path: str, where: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            got = os.environ.get(m["name"])
            if got is None or (got == "" and m["default"] is not None):
                if m["default"] is not None:
                    return m["default"]
                raise SpecError(f"spec {where}: {path}: environment variable {m['name']} is not set")
            return got

        return _ENV_VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), where) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", where) for i, v in enumerate(value)]
    return value


def _field_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append("schema" if p == "schema_" else str(p))
    return ".".join(parts)


def spec_from_dict(data: Any, where: str = "<dict>") -> Spec:
    """Validate a mapping (already parsed YAML) into a Spec, or raise a one-line SpecError."""
    if not isinstance(data, dict):
        raise SpecError(f"spec {where}: expected a mapping at the top level, got {type(data).__name__}")
    data = _expand_env(data, "", where)
    try:
        return Spec.model_validate({**data, "source_path": where})
    except ValidationError as e:
        err = e.errors()[0]
        field = _field_path(tuple(err["loc"])) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        if field == "(top level)" and msg.startswith("path."):  # names its own field already
            field, msg = msg.split(": ", 1)
        raise SpecError(f"spec {where}: {field}: {msg}{more}") from None


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read, expand and validate one spec file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec {p}: file not found") from None
    except OSError as e:
        raise SpecError(f"spec {p}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise SpecError(f"spec {p}: YAML error{at}: {problem}") from None
    return spec_from_dict(data, str(p))


def default_specs_dir() -> Path:
    """``$RECONCILE_SPECS_DIR``, else ``specs/`` in the working folder."""
    return Path(os.environ.get("RECONCILE_SPECS_DIR") or "specs")


def load_specs(
    paths: Sequence[str | os.PathLike[str]] = (),
) -> tuple[list[Spec], list[tuple[str, str]]]:
    """Specs from files and folders (a folder: its ``*.yaml`` / ``*.yml``; none given: the
    default folder). Returns (specs, invalid) where invalid holds (file, one-line error); a
    second spec with a name already taken is invalid too."""
    files: list[Path] = []
    for item in paths or [default_specs_dir()]:
        p = Path(item)
        if p.is_dir():
            files += sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        else:
            files.append(p)
    specs: dict[str, Spec] = {}
    origin: dict[str, Path] = {}
    invalid: list[tuple[str, str]] = []
    for f in files:
        try:
            spec = load_spec(f)
        except SpecError as e:
            invalid.append((str(f), str(e)))
            continue
        if spec.name in specs:
            invalid.append((str(f), f"spec {f}: name {spec.name!r} already used by {origin[spec.name]}"))
            continue
        specs[spec.name], origin[spec.name] = spec, f
    return list(specs.values()), invalid
