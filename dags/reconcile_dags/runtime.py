"""What the reconcile tasks do at run time, one function per task: Airflow concerns only.

Each function loads the spec, makes a :class:`reconcile.app.Context` from Airflow's connections
(secrets never live in YAML), calls one use case of :mod:`reconcile.app`, logs a readable line,
sends alerts through Airflow notifiers, and returns a JSON value for XCom. Errors a retry cannot
fix (a bad spec, a failed preflight, a tripped guard) fail the task without retries.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import BaseNotifier, Connection
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

log = logging.getLogger("reconcile.airflow")

XCOM_FINDINGS = 100  # findings kept in a scheduled run's XCom (all are in the audit store)

_SCHEMES = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


# -- connections ---------------------------------------------------------------------------
def connection_url(conn_id: str) -> str:
    """A SQLAlchemy URL from an Airflow connection: its ``sqlalchemy_url`` extra, else its URI
    with the scheme mapped to the drivers reconcile ships with (psycopg 3, PyMySQL)."""
    conn = Connection.get(conn_id)
    extra = conn.extra_dejson
    if extra.get("sqlalchemy_url"):
        return str(extra["sqlalchemy_url"])
    uri = conn.get_uri()
    scheme, _, rest = uri.partition("://")
    if conn.conn_type == "sqlite":
        return f"sqlite:///{conn.host}"
    return f"{_SCHEMES.get(scheme, scheme)}://{rest}"


def _setting(env: str, variable: str) -> str | None:
    from airflow.sdk import Variable

    return os.environ.get(env) or Variable.get(variable, default=None)


def store_url() -> str | None:
    """The audit store: ``$RECONCILE_STORE_URL``, else the connection ``reconcile_store`` (or the
    one named by the Variable ``reconcile_store_conn_id``), else reconcile's default (None)."""
    if os.environ.get("RECONCILE_STORE_URL"):
        return os.environ["RECONCILE_STORE_URL"]
    conn_id = _setting("RECONCILE_STORE_CONN_ID", "reconcile_store_conn_id") or "reconcile_store"
    try:
        return connection_url(conn_id)
    except AirflowNotFoundException:
        return None


def context() -> Any:
    """The use cases' context: the store, Airflow connections for ``conn_id`` sides (a topic
    side's too: an Airflow Kafka connection), and the Airflow Kafka connection's broker settings
    for whatever talks to Kafka without naming a connection: corrections, lag, topic sides. The
    connections are looked up when a use case first needs them, not before."""
    from reconcile.app import Context

    return Context(store_url=store_url(), resolve_conn=connection_url, resolve_kafka=kafka_settings)


def kafka_config() -> dict[str, str]:
    """librdkafka settings from the Airflow Kafka connection named by ``$RECONCILE_KAFKA_CONN_ID``
    (or the Variable ``reconcile_kafka_conn_id``): its extra holds ``bootstrap.servers`` etc.
    Empty when none is named: the library then reads ``KAFKA_BOOTSTRAP_SERVERS`` itself."""
    conn_id = _setting("RECONCILE_KAFKA_CONN_ID", "reconcile_kafka_conn_id")
    if not conn_id:
        return {}
    return {str(k): str(v) for k, v in Connection.get(conn_id).extra_dejson.items()}


def kafka_settings() -> Any:
    from reconcile.events.kafka import KafkaSettings

    cfg = kafka_config()
    settings = KafkaSettings.from_env(bootstrap=cfg.pop("bootstrap.servers", None))
    if cfg and hasattr(settings, "extra"):
        import dataclasses

        settings = dataclasses.replace(settings, extra={**dict(settings.extra), **cfg})
    return settings


def load(path: str) -> Any:
    from reconcile.spec import load_spec

    with fail_fast():
        return load_spec(path)


@contextmanager
def fail_fast() -> Iterator[None]:
    """Errors a retry cannot fix fail the task at once; the rest (a database blip) retry."""
    from reconcile.errors import GuardTripped, PreflightFailed, SpecError

    try:
        yield
    except (SpecError, PreflightFailed, GuardTripped) as e:
        raise AirflowFailException(f"{type(e).__name__}: {e}") from e


# -- alerts --------------------------------------------------------------------------------
class WebhookNotifier(BaseNotifier):
    """POST a JSON body (a Slack incoming-webhook message) to a URL or an Airflow connection."""

    def __init__(self, body: Mapping[str, Any], *, url: str | None = None, conn_id: str | None = None):
        super().__init__()
        self.body = dict(body)
        self.url = url
        self.conn_id = conn_id

    def target(self) -> str:
        if self.url:
            return self.url
        conn = Connection.get(str(self.conn_id))
        extra = conn.extra_dejson
        if extra.get("webhook_url"):
            return str(extra["webhook_url"])
        if conn.host and "://" in conn.host:
            return conn.host
        return conn.get_uri().replace(f"{conn.conn_type}://", f"{conn.schema or 'https'}://", 1)

    def notify(self, context: Any) -> None:
        req = urllib.request.Request(
            self.target(),
            data=json.dumps(self.body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - the URL is configured
            if resp.status >= 300:
                raise RuntimeError(f"webhook answered HTTP {resp.status}")


def _no_jinja(text: str) -> str:
    # SmtpNotifier renders its fields with Jinja: keep data (finding values) from being a template.
    return text.replace("{", "&#123;").replace("}", "&#125;")


def notify(spec: Any, alert: Any, context: Any | None = None) -> list[str]:
    """Send an alert on every channel the spec's ``alerts:`` configures for this event.

    A channel that fails is logged and does not hide the others (or the task's own outcome).
    Returns the channels that delivered.
    """
    cfg = spec.alerts
    if not cfg.wants(alert.event):
        return []
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    sent: list[str] = []
    notifiers: list[tuple[str, BaseNotifier]] = []
    if cfg.email:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        notifiers.append(
            (
                "email",
                SmtpNotifier(
                    to=list(cfg.email.to),
                    from_email=cfg.email.from_ or "reconcile@localhost",
                    subject=_no_jinja(alert.title),
                    html_content=_no_jinja(alert.html()),
                    smtp_conn_id=cfg.email.conn_id,
                ),
            )
        )
    if cfg.webhook:
        notifiers.append(
            ("webhook", WebhookNotifier(alert.slack(), url=cfg.webhook.url, conn_id=cfg.webhook.conn_id))
        )
    for channel, notifier in notifiers:
        try:
            notifier(context)
        except Exception as e:  # noqa: BLE001 - an alert channel down must not mask the run
            log.error("reconcile %s: %s alert via %s failed: %s", spec.name, alert.event, channel, e)
        else:
            sent.append(channel)
            log.info("reconcile %s: %s alert sent via %s", spec.name, alert.event, channel)
    return sent


# -- the tasks -----------------------------------------------------------------------------
def preflight(path: str) -> dict[str, Any]:
    """The GX gate on both sides (reachable, as the spec says); alert when it fails."""
    from reconcile.alerts import preflight_alert
    from reconcile.app import gate
    from reconcile.errors import PreflightFailed, SourceError, SpecError

    spec = load(path)
    try:
        with context() as ctx:
            passed = gate(ctx, spec)
    except (PreflightFailed, SpecError, SourceError) as e:
        # A side that cannot be read is a failed gate too: alert now, let the next run retry.
        log.error("reconcile %s: preflight failed: %s", spec.name, e)  # the one line that matters, first
        notify(spec, preflight_alert(spec.name, str(e)))
        raise AirflowFailException(f"preflight failed: {e}") from e
    log.info("reconcile %s: preflight passed", spec.name)
    return _jsonable(passed)


def _trim(run: dict[str, Any], limit: int) -> dict[str, Any]:
    n = len(run["findings"])
    if n > limit:
        run = {**run, "findings": run["findings"][:limit], "findings_truncated": n - limit}
    return run


def _log_run(run: dict[str, Any]) -> None:
    s = run["summary"]
    log.info(
        "reconcile %s run %s: compared=%s missing=%s orphan=%s mismatch=%s duplicate=%s pending=%s",
        run["spec"],
        run["run_id"],
        s["compared"],
        s["missing"],
        s["orphan"],
        s["mismatch"],
        s["duplicate"],
        s["pending"],
    )
    for f in run["findings"][:20]:
        log.info("  finding: %s", json.dumps(f, sort_keys=True))


def audit(
    path: str,
    *,
    keys: str | None = None,
    where: str | None = None,
    limit: int = XCOM_FINDINGS,
    settle_s: float | None = None,
) -> dict[str, Any]:
    """One audit; the run's summary and (the first ``limit``) findings."""
    from reconcile.app import audit as run_audit
    from reconcile.keys import parse_keys

    spec = load(path)
    settle = timedelta(seconds=settle_s) if settle_s is not None else None
    with fail_fast(), context() as ctx:
        parsed = parse_keys(keys, spec) if keys else None
        result = run_audit(ctx, spec, keys=parsed, where=where or None, settle=settle)
    run = _trim(result.to_dict(), limit)
    _log_run(run)
    return _decide_audit(spec, run)


def trace(path: str, key: str) -> dict[str, Any]:
    """One entity's story along the spec's event path (changes nothing; never fails on drift)."""
    from reconcile.app import trace as run_trace

    spec = load(path)
    with fail_fast(), context() as ctx:
        result = run_trace(ctx, spec, key)
    doc = _jsonable(result.to_dict())
    log.info(
        "reconcile %s trace %s: %s%s, %d event(s)",
        spec.name,
        key,
        result.state,
        f" ({result.kind}, cause {result.cause})" if result.state == "drift" else "",
        len(result.events),
    )
    for e in result.events:
        log.info("  event %s: %s", e["event_id"], e["stage"])
    return doc  # type: ignore[no-any-return]


def _decide_audit(spec: Any, run: dict[str, Any]) -> dict[str, Any]:
    """An audit-only spec with drift fails here, after alerting; the run stays readable in XCom."""
    from reconcile.app import audit_verdict

    verdict = audit_verdict(spec, run)
    if verdict.failure is None:
        return run
    _push_result(run)
    if verdict.alert is not None:
        notify(spec, verdict.alert)
    log.error("reconcile %s: %s", spec.name, verdict.failure)
    raise AirflowFailException(verdict.failure)


def _push_result(value: Any) -> None:
    """Keep a failing task's result in XCom (under ``return_value``) for the person on call."""
    from airflow.sdk import get_current_context

    try:
        get_current_context()["ti"].xcom_push(key="return_value", value=value)
    except Exception as e:  # noqa: BLE001 - the verdict matters more than the copy in XCom
        log.warning("reconcile: could not keep the result in XCom: %s", e)


def plan_ranges(path: str) -> list[dict[str, Any]]:
    """Fan-out: the key ranges of this spec (``fanout:`` of them at most), as JSON."""
    from reconcile.app import key_kinds
    from reconcile.app import plan_ranges as plan

    spec = load(path)
    with context() as ctx:
        kinds = key_kinds(ctx, spec)
        ranges = [{**r.to_dict(), "kind": kinds[0]} for r in plan(ctx, spec, spec.fanout)]
    log.info("reconcile %s: %d key range(s)", spec.name, len(ranges))
    return ranges


def audit_range(path: str, rng: dict[str, Any], started_at: str) -> dict[str, Any]:
    """Fan-out: diff one key range and re-check its drifted keys (reads the store, writes nothing)."""
    from reconcile.app import audit_range as diff_range
    from reconcile.app import key_kinds, outcome_to_dict
    from reconcile.sources.ranges import KeyRange

    spec = load(path)
    key_range = KeyRange.from_dict(rng, rng["kind"])
    with context() as ctx:
        outcome = diff_range(ctx, spec, key_range, now=datetime.fromisoformat(started_at))
        kinds = key_kinds(ctx, spec)
    log.info(
        "reconcile %s %s: compared=%d findings=%d",
        spec.name,
        key_range,
        outcome.compared,
        len(outcome.findings),
    )
    return outcome_to_dict(outcome, kinds)


def merge_ranges(path: str, parts: list[dict[str, Any]], started_at: str) -> dict[str, Any]:
    """Fan-out: merge the ranges' outcomes into one stored run."""
    from reconcile.app import merge_ranges as merge
    from reconcile.app import outcome_from_dict

    spec = load(path)
    outcomes = [outcome_from_dict(p, spec.key_truth) for p in parts]
    kinds = parts[0]["kinds"] if parts else None
    with context() as ctx:
        result = merge(ctx, spec, outcomes, started_at=datetime.fromisoformat(started_at), kinds=kinds)
    run = _trim(result.to_dict(), XCOM_FINDINGS)
    _log_run(run)
    return _decide_audit(spec, run)


def correct(path: str, run: dict[str, Any], *, dry_run: bool = False, force: bool = False) -> dict[str, Any]:
    """Corrective events for the confirmed findings into the outbox; guard tripped -> alert, fail."""
    from reconcile.alerts import guard_alert
    from reconcile.errors import GuardTripped

    spec = load(path)
    if spec.correction is None:
        log.info("reconcile %s: no `correction:` in the spec; nothing to correct", spec.name)
        return {"skipped": "no correction configured", "written": 0}
    if not run["findings"] and not run.get("findings_truncated"):
        return {"skipped": "no confirmed drift", "written": 0, "dry_run": dry_run}
    from reconcile.app import correct as run_correct

    try:
        with context() as ctx:
            result = run_correct(ctx, spec, dry_run=dry_run, force=force)
    except GuardTripped as e:
        if dry_run:  # a preview never pages: it says what the guard would do
            log.warning("reconcile %s: dry run: the guard would refuse: %s", spec.name, e)
            return {"dry_run": True, "written": 0, "guard": str(e)}
        log.error("reconcile %s: %s", spec.name, e)
        notify(spec, guard_alert(spec.name, str(e), run, spec.alerts.findings))
        raise AirflowFailException(f"guard tripped: {e}") from e
    out = _jsonable(result.to_dict())
    log.info("reconcile %s: correction %s", spec.name, json.dumps(out, sort_keys=True)[:2000])
    return out


def relay(path: str, corrected: dict[str, Any]) -> dict[str, Any]:
    """Publish this spec's outbox (rows marked sent only after the broker confirmed)."""
    spec = load(path)
    if corrected.get("skipped") or corrected.get("dry_run"):
        return {"skipped": "nothing to publish", "sent": 0}
    from reconcile.app import relay as run_relay

    with context() as ctx:
        result = run_relay(ctx, spec_name=spec.name, once=True)
    out = _jsonable(result.to_dict())
    log.info("reconcile %s: relay %s", spec.name, json.dumps(out, sort_keys=True))
    return out


def verify(
    path: str,
    run: dict[str, Any],
    corrected: dict[str, Any],
    relayed: dict[str, Any],
    *,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Wait for the projector to consume the corrections, then re-check those keys.

    This task decides: a projector that still lags fails it as "cannot tell" (the alert names
    the consumer group and its lag); corrections consumed but drift remaining fail it as drift.
    The timeout is ``timeout_s`` (the on-demand DAG's param), else the spec's
    ``correction.verify_timeout``.
    """
    from reconcile.app import lag_verdict, verify_verdict
    from reconcile.app import verify as run_verify
    from reconcile.errors import VerifyError

    spec = load(path)
    if corrected.get("skipped") or corrected.get("dry_run") or not corrected.get("written"):
        return {"skipped": "nothing was corrected"}
    timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
    try:
        with context() as ctx:
            result = run_verify(ctx, spec, timeout=timeout)
    except VerifyError as e:
        verdict = lag_verdict(spec, str(e))
        log.error("reconcile %s: %s", spec.name, e)
        if verdict.alert is not None:
            notify(spec, verdict.alert)
        raise AirflowFailException(str(e)) from e
    out = _jsonable(result.to_dict())
    out["exit_code"] = result.exit_code
    log.info("reconcile %s: verify %s", spec.name, json.dumps(out, sort_keys=True)[:2000])
    decided = verify_verdict(spec, run, out)
    if decided.failure is not None:
        _push_result(out)
        log.error("reconcile %s: %s", spec.name, decided.failure)
        if decided.alert is not None:
            notify(spec, decided.alert)
        raise AirflowFailException(decided.failure)
    return out


def report(
    path: str,
    run: dict[str, Any],
    corrected: dict[str, Any],
    relayed: dict[str, Any],
    verified: dict[str, Any],
) -> dict[str, Any]:
    """The story of a run that reached the end: clean, healed (a "resolved" notice when the
    spec's ``alerts.on`` asks for it), or a dry run. The deciding tasks failed earlier otherwise."""
    from reconcile.app import report as tell

    spec = load(path)
    told = tell(spec, run, corrected, relayed, verified)
    out = {**told.story, "verdict": "; ".join(told.lines)}
    if told.alert is not None:
        out["alerted"] = notify(spec, told.alert)
    log.info("reconcile %s: %s", spec.name, out["verdict"])
    return out


def health(thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """Outbox backlog, projector lag and audit recency of every spec; alert per unhealthy spec."""
    from reconcile.alerts import health_alert
    from reconcile.app import Thresholds
    from reconcile.app import health as measure
    from reconcile.spec import load_specs
    from reconcile_dags.discover import specs_dir

    specs, invalid = load_specs([specs_dir()])
    th = Thresholds(
        outbox_max_age=timedelta(seconds=float(thresholds["outbox_max_age_s"])),
        outbox_max_rows=int(thresholds["outbox_max_rows"]),
        max_lag=int(thresholds["max_lag"]),
        stale_after=timedelta(seconds=float(thresholds["stale_after_s"])),
    )
    with context() as ctx:
        ctx.kafka_timeout_s = 15.0
        report = measure(ctx, specs, th, invalid=invalid)
    by_name = {s.name: s for s in specs}
    out: dict[str, Any] = {**report.to_dict(), "alerted": {}}
    for h in report.specs:
        log.info(
            "reconcile %s: outbox=%s oldest_age_s=%s lag=%s last_run=%s %s",
            h.spec,
            h.outbox_unsent,
            None if h.outbox_oldest_age_s is None else round(h.outbox_oldest_age_s),
            h.lag,
            h.last_run_at,
            "; ".join([*h.unknown, *h.problems]) or "healthy",
        )
        if (h.problems or h.unknown) and h.spec in by_name:
            counts = {"outbox_unsent": h.outbox_unsent, "lag": h.lag}
            out["alerted"][h.spec] = notify(
                by_name[h.spec], health_alert(h.spec, [*h.unknown, *h.problems], counts)
            )
    return out


def _jsonable(value: Any) -> Any:
    """XCom-safe form: result objects by their to_dict(), values by reconcile's jsonable()."""
    from reconcile.compare import jsonable

    return jsonable(value.to_dict() if hasattr(value, "to_dict") else value)
