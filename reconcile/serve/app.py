"""The dashboard's web application: pages, the JSON API behind them, CSV downloads and /metrics.

A thin shell like the CLI: each route parses its path and query, calls one use case of
:mod:`reconcile.app.dashboard` (or :mod:`reconcile.app.metrics`), and renders it as HTML
(Jinja2), JSON or CSV. There is no route that writes.

    GET /                                     overview of every spec
    GET /specs/<name>                         one spec          (/api/specs/<name>)
    GET /specs/<name>/findings/<key>          one entity        (/api/specs/<name>/findings/<key>)
    GET /specs/<name>/findings.csv            its active findings as CSV (?status=resolved ... repeatable)
    GET /specs/<name>/runs.csv                its runs in the window as CSV
    GET /specs/<name>/preflight/docs/<file>   the last preflight's Data Docs
    GET /api, /api/overview, /api/specs, /api/specs/<name>/runs, /api/specs/<name>/findings, /api/health
    GET /metrics                              Prometheus text format

Pages and the API take ``?days=N`` (the window, default 7); pages ``?refresh=S`` (reload every
S seconds: a wall display). When a token is set every route, /metrics included, needs it:
``Authorization: Bearer <token>``, or the cookie a browser gets by entering the token in the form
of the 401 page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import mimetypes
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..app.context import Context
from ..app.health import Thresholds
from ..compare import jsonable
from ..errors import ReconcileError, mask_url
from ..events.transport import EventConsumer, PublishReport, Transport
from ..spec import Spec, load_specs
from . import charts

__all__ = ["ServeSettings", "create_app", "SpecCatalog", "ServeContext"]

log = logging.getLogger("reconcile.serve")
HERE = Path(__file__).resolve().parent
COOKIE = "reconcile_session"


@dataclass(frozen=True)
class ServeSettings:
    """What ``reconcile serve`` serves, and how."""

    store_url: str | None = None
    specs: tuple[str, ...] = ()  # spec files or folders; () = $RECONCILE_SPECS_DIR, else ./specs
    token: str | None = None  # RECONCILE_SERVE_TOKEN
    days: int = 7
    lag_ttl_s: float = 15.0  # how long a projector-lag reading is reused
    lag_timeout_s: float = 5.0  # how long one lag reading may wait for a broker
    thresholds: Thresholds = Thresholds()


# -- the context: read-only transports, lag readings cached ---------------------------------
class _LagOnly(Transport):
    """A transport that measures lag and refuses to publish or consume: the dashboard never writes.

    A reading is reused for ``ttl_s``; after that the next request gets the last reading at once
    while a background thread takes a new one, so a broker that is down never stalls a page for
    its timeout more than once (the first reading of each group)."""

    def __init__(self, inner: Transport, ttl_s: float):
        self._inner, self._ttl = inner, ttl_s
        self._lock = threading.Lock()  # guards the cache
        self._measure = threading.Lock()  # one reading at a time on the inner transport
        self._cache: dict[tuple[str, str], tuple[float, int | ReconcileError]] = {}
        self._refreshing: set[tuple[str, str]] = set()

    @property
    def where(self) -> str:
        return self._inner.where

    def publish(self, rows: Sequence[Any]) -> PublishReport:
        raise ReconcileError("reconcile serve is read-only: it publishes nothing")

    def consumer(self, group: str, topics: Sequence[str]) -> EventConsumer:
        raise ReconcileError("reconcile serve is read-only: it consumes nothing")

    def _read(self, key: tuple[str, str]) -> int | ReconcileError:
        with self._measure:
            try:
                value: int | ReconcileError = self._inner.lag(*key)
            except ReconcileError as e:
                value = e
        with self._lock:
            self._cache[key] = (time.monotonic(), value)
            self._refreshing.discard(key)
        return value

    def lag(self, group: str, topic: str) -> int:
        key = (group, topic)
        with self._lock:
            cached = self._cache.get(key)
            stale = cached is not None and time.monotonic() - cached[0] > self._ttl
            if stale and key not in self._refreshing:
                self._refreshing.add(key)
                threading.Thread(target=self._read, args=(key,), daemon=True, name="lag").start()
        value = cached[1] if cached is not None else self._read(key)
        if isinstance(value, ReconcileError):
            raise value
        return value

    def close(self) -> None:
        self._inner.close()


@dataclass
class ServeContext(Context):
    """The use cases' context inside the server: transports wrapped read-only with cached lag."""

    lag_ttl_s: float = 15.0
    _wrapped: dict[str, Transport] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def transport(self, kind: str) -> Transport:
        with self._lock:
            if kind not in self._wrapped:
                self._wrapped[kind] = _LagOnly(super().transport(kind), self.lag_ttl_s)
            return self._wrapped[kind]


# -- spec files, reloaded when they change ---------------------------------------------------
class SpecCatalog:
    """The spec files, loaded again only when a file is added, removed or modified."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._loaded: tuple[list[Spec], list[tuple[str, str]]] = ([], [])

    def _files(self) -> tuple[Any, ...]:
        from ..spec import default_specs_dir

        out: list[tuple[str, int | None, int | None]] = []
        for item in self.paths or [str(default_specs_dir())]:
            p = Path(item)
            files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p]
            for f in files:
                try:
                    st = f.stat()
                    out.append((str(f), st.st_mtime_ns, st.st_size))
                except OSError:
                    out.append((str(f), None, None))
        return tuple(out)

    def load(self) -> tuple[list[Spec], list[tuple[str, str]]]:
        """(specs, invalid files with their error), as :func:`reconcile.spec.load_specs` returns them."""
        stamp = self._files()
        with self._lock:
            if stamp != self._stamp:
                self._loaded = load_specs(self.paths) if (self.paths or stamp) else ([], [])
                self._stamp = stamp
            return self._loaded

    def get(self, name: str) -> Spec | None:
        return next((s for s in self.load()[0] if s.name == name), None)


# -- rendering helpers ---------------------------------------------------------------------
def _utc(value: Any) -> str:
    if not isinstance(value, datetime):
        return "—" if value is None else str(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | None) -> str:
    """How long ago, for people: "4m 10s ago"; "—" for never."""
    if value is None:
        return "—"
    return duration(max((datetime.now(UTC) - value).total_seconds(), 0.0)) + " ago"


def duration(seconds: float | None) -> str:
    """A duration for people: 0.4s, 42s, 3m 05s, 2h 07m, 3d 4h."""
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m = int(s // 60)
    if m < 60:
        return f"{m}m {int(s % 60):02d}s"
    h = m // 60
    if h < 48:
        return f"{h}h {m % 60:02d}m"
    return f"{h // 24}d {h % 24}h"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = _utc
    env.filters["ago"] = ago
    env.filters["duration"] = duration
    env.filters["num"] = lambda n: "—" if n is None else f"{n:,}"
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["value"] = lambda v: (
        "NULL" if v is None else json.dumps(jsonable(v)) if isinstance(v, dict | list) else str(jsonable(v))
    )
    env.globals.update(charts=charts, version=__version__, kind_colours=charts.KIND_COLOURS)
    return env


def _json(doc: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(jsonable(doc), status_code=status)


def _days(request: Request, default: int) -> int:
    raw = request.query_params.get("days")
    if raw is None:
        return default
    try:
        days = int(raw)
    except ValueError:
        raise _BadRequest(f"days: {raw!r} is not a whole number of days") from None
    if not 1 <= days <= 366:
        raise _BadRequest(f"days: {days} is not between 1 and 366")
    return days


class _BadRequest(Exception):
    pass


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="reconcile"'}


# -- the token gate ------------------------------------------------------------------------
class TokenGate:
    """When a token is set, every request needs it: ``Authorization: Bearer <token>`` or the
    session cookie. ``POST /login`` (the form on the 401 page) trades the token for the cookie."""

    def __init__(self, app: ASGIApp, token: str | None, page: Callable[[str, str | None], str]):
        self.app, self.token, self.page = app, token, page
        self.session = (
            hmac.new(token.encode(), b"reconcile serve session", hashlib.sha256).hexdigest() if token else ""
        )

    def _ok(self, headers: Headers) -> bool:
        assert self.token is not None
        auth = headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.session.encode()):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self._ok(headers):
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/login" and scope["method"] == "POST":
            body = await _body(receive)
            form = parse_qs(body.decode("utf-8", "replace"))
            given = (form.get("token") or [""])[0]
            target = (form.get("next") or ["/"])[0]
            if not target.startswith("/") or target.startswith("//"):
                target = "/"
            if hmac.compare_digest(given.encode(), self.token.encode()):
                resp: Response = RedirectResponse(target, status_code=303)
                resp.set_cookie(COOKIE, self.session, httponly=True, samesite="strict", path="/")
                await resp(scope, receive, send)
                return
            page = self.page(target, "That is not the token.")
            await HTMLResponse(page, status_code=401, headers=CHALLENGE)(scope, receive, send)
            return
        await self._deny(scope, headers)(scope, receive, send)

    def _deny(self, scope: Scope, headers: Headers) -> Response:
        path = scope["path"]
        if "text/html" in headers.get("accept", "") and not path.startswith(("/api", "/metrics")):
            nxt = path + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")
            return HTMLResponse(self.page(nxt, None), status_code=401, headers=CHALLENGE)
        return JSONResponse(
            {"error": "unauthorized: send Authorization: Bearer <RECONCILE_SERVE_TOKEN>"},
            status_code=401,
            headers=CHALLENGE,
        )


async def _body(receive: Receive, limit: int = 16_384) -> bytes:
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            break
        chunks.append(chunk)
        if not msg.get("more_body"):
            break
    return b"".join(chunks)


# Pages load nothing from elsewhere and run no script: charts are inline SVG, styles one file.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
# GX Data Docs are GX's own HTML (inline scripts and styles): they get a looser policy, still
# with no network.
DOCS_CSP = "default-src 'self' 'unsafe-inline' data:; frame-ancestors 'none'"


class SecurityHeaders:
    """Security headers on every response (the Data Docs keep their own looser CSP)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = "/preflight/docs/" in scope["path"]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", (DOCS_CSP if docs else CSP).encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, with_headers)


# -- the application -----------------------------------------------------------------------
def create_app(settings: ServeSettings = ServeSettings(), *, ctx: Context | None = None) -> ASGIApp:
    """The dashboard as an ASGI application (``uvicorn`` serves it in ``reconcile serve``)."""
    from ..app import dashboard
    from ..app.metrics import HealCache, snapshot
    from .metrics import CONTENT_TYPE, render

    ctx = ctx or ServeContext(
        store_url=settings.store_url, kafka_timeout_s=settings.lag_timeout_s, lag_ttl_s=settings.lag_ttl_s
    )
    store = ctx.store
    store.migrate()  # opened once, before the first request, so no two threads race to do it
    catalog = SpecCatalog(settings.specs)
    heal_cache = HealCache()
    env = _env()
    env.globals["store"] = store.display

    def page(name: str, request: Request | None, status: int = 200, **values: Any) -> HTMLResponse:
        refresh = None
        if request is not None:
            raw = request.query_params.get("refresh", "")
            refresh = int(raw) if raw.isdigit() and 5 <= int(raw) <= 3600 else None
        html = env.get_template(name).render(refresh=refresh, now=datetime.now(UTC), **values)
        return HTMLResponse(html, status_code=status)

    def login_page(next_path: str, error: str | None) -> str:
        return env.get_template("login.html").render(next=next_path, error=error)

    def guarded(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """Expected errors become a page (or JSON) naming them, never a traceback."""

        def run(request: Request) -> Response:
            api = request.url.path.startswith("/api")
            try:
                return fn(request)
            except _BadRequest as e:
                return (
                    _json({"error": str(e)}, 400) if api else page("error.html", request, 400, message=str(e))
                )
            except ReconcileError as e:
                msg = mask_url(str(e))
                log.warning("%s %s: %s", request.method, request.url.path, msg)
                return _json({"error": msg}, 503) if api else page("error.html", request, 503, message=msg)

        run.__name__ = fn.__name__
        return run

    def not_found(request: Request, what: str) -> Response:
        if request.url.path.startswith("/api"):
            return _json({"error": f"not found: {what}"}, 404)
        return page("error.html", request, 404, message=f"not found: {what}")

    # -- data ------------------------------------------------------------------------------
    def overview_of(request: Request) -> Any:
        specs, invalid = catalog.load()
        return dashboard.overview(
            ctx, specs, invalid, days=_days(request, settings.days), thresholds=settings.thresholds
        )

    def detail_of(request: Request) -> Any:
        name = request.path_params["name"]
        return dashboard.spec_detail(
            ctx, name, catalog.get(name), days=_days(request, settings.days), thresholds=settings.thresholds
        )

    def finding_of(request: Request) -> Any:
        name, key = request.path_params["name"], request.path_params["key"]
        return dashboard.finding_detail(ctx, name, key, catalog.get(name))

    def statuses(request: Request) -> list[str] | None:
        wanted = request.query_params.getlist("status")
        bad = [s for s in wanted if s not in ("open", "correcting", "acknowledged", "resolved")]
        if bad:
            raise _BadRequest(f"status: {bad[0]!r} is not one of open, correcting, acknowledged, resolved")
        return wanted or None

    def findings_of(request: Request) -> tuple[str, list[Any]] | None:
        from ..lifecycle import ACTIVE

        name = request.path_params["name"]
        spec = catalog.get(name)
        if spec is None and name not in store.spec_names():
            return None
        wanted = statuses(request) or [s.value for s in ACTIVE]
        confirm = spec.freshness.confirm_runs if spec else 1
        return name, store.findings(name, wanted, confirm)

    # -- pages -----------------------------------------------------------------------------
    @guarded
    def overview_page(request: Request) -> Response:
        return page("overview.html", request, ov=overview_of(request))

    @guarded
    def spec_page(request: Request) -> Response:
        d = detail_of(request)
        if d is None:
            return not_found(request, f"spec {request.path_params['name']}")
        return page("spec.html", request, d=d)

    @guarded
    def finding_page(request: Request) -> Response:
        d = finding_of(request)
        if d is None:
            return not_found(
                request, f"finding {request.path_params['key']} of {request.path_params['name']}"
            )
        return page("finding.html", request, d=d)

    @guarded
    def findings_csv(request: Request) -> Response:
        got = findings_of(request)
        if got is None:
            return not_found(request, f"spec {request.path_params['name']}")
        name, items = got
        return Response(
            dashboard.findings_csv(name, items),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}-findings.csv"'},
        )

    @guarded
    def runs_csv(request: Request) -> Response:
        from datetime import timedelta

        name = request.path_params["name"]
        if catalog.get(name) is None and name not in store.spec_names():
            return not_found(request, f"spec {name}")
        since = datetime.now(UTC) - timedelta(days=_days(request, settings.days))
        frame = dashboard.runs_frame(store.runs(name, since=since)).reset_index()
        frame["started_at"] = frame["started_at"].map(lambda t: t.isoformat().replace("+00:00", "Z"))
        return Response(
            frame.to_csv(index=False, lineterminator="\n"),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}-runs.csv"'},
        )

    @guarded
    def docs_file(request: Request) -> Response:
        name, rel = request.path_params["name"], request.path_params["path"]
        history = store.preflight_history(name, 1)
        if not history or not history[0].docs:
            return not_found(request, f"Data Docs of {name}")
        root = Path(history[0].docs).resolve().parent
        target = (root / (rel or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return not_found(request, f"Data Docs file {rel}")
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return Response(target.read_bytes(), media_type=kind)

    # -- API -------------------------------------------------------------------------------
    def api_index(request: Request) -> Response:
        return _json(
            {
                "version": __version__,
                "store": store.display,
                "routes": {
                    "/api/overview": "every spec's state, open findings by kind, last audit, outbox, lag",
                    "/api/specs": "the specs, as on the overview",
                    "/api/specs/{name}": "one spec: drift over time, runs, findings, funnel, time to heal",
                    "/api/specs/{name}/runs": "its runs in the window (?days=N)",
                    "/api/specs/{name}/findings": "its findings (?status=open|correcting|acknowledged|...)",
                    "/api/specs/{name}/findings/{key}": "one entity: every episode, run and corrective event",
                    "/api/health": "outbox backlog, projector lag and audit recency of every spec file",
                    "/metrics": "Prometheus text format",
                },
            }
        )

    @guarded
    def api_overview(request: Request) -> Response:
        return _json(overview_of(request).to_dict())

    @guarded
    def api_specs(request: Request) -> Response:
        return _json({"specs": overview_of(request).to_dict()["specs"]})

    @guarded
    def api_spec(request: Request) -> Response:
        d = detail_of(request)
        return not_found(request, f"spec {request.path_params['name']}") if d is None else _json(d.to_dict())

    @guarded
    def api_runs(request: Request) -> Response:
        from datetime import timedelta

        name = request.path_params["name"]
        if catalog.get(name) is None and name not in store.spec_names():
            return not_found(request, f"spec {name}")
        days = _days(request, settings.days)
        runs = store.runs(name, since=datetime.now(UTC) - timedelta(days=days))
        return _json({"spec": name, "days": days, "runs": [dashboard.RunRow.of(r).to_dict() for r in runs]})

    @guarded
    def api_findings(request: Request) -> Response:
        got = findings_of(request)
        if got is None:
            return not_found(request, f"spec {request.path_params['name']}")
        name, items = got
        if request.query_params.get("format") == "csv":
            return Response(dashboard.findings_csv(name, items), media_type="text/csv; charset=utf-8")
        rows = [{**f.to_dict(), "key_text": dashboard.key_text(f.key)} for f in items]
        return _json({"spec": name, "findings": rows})

    @guarded
    def api_finding(request: Request) -> Response:
        d = finding_of(request)
        if d is None:
            return not_found(
                request, f"finding {request.path_params['key']} of {request.path_params['name']}"
            )
        return _json(d.to_dict())

    @guarded
    def api_health(request: Request) -> Response:
        from ..app.health import health

        specs, invalid = catalog.load()
        return _json(health(ctx, specs, settings.thresholds, invalid=invalid).to_dict())

    @guarded
    def metrics(request: Request) -> Response:
        specs, _ = catalog.load()
        snap = snapshot(ctx, specs, heal_cache=heal_cache)
        for name, why in snap.lag_errors.items():
            log.warning("metrics: %s: projector lag unknown: %s", name, why)
        return Response(render(snap), media_type=CONTENT_TYPE)

    routes = [
        Route("/", overview_page),
        Route("/specs/{name}", spec_page),
        Route("/specs/{name}/findings.csv", findings_csv),
        Route("/specs/{name}/runs.csv", runs_csv),
        Route("/specs/{name}/findings/{key:path}", finding_page),
        Route("/specs/{name}/preflight/docs/{path:path}", docs_file),
        Route("/api", api_index),
        Route("/api/overview", api_overview),
        Route("/api/specs", api_specs),
        Route("/api/specs/{name}", api_spec),
        Route("/api/specs/{name}/runs", api_runs),
        Route("/api/specs/{name}/findings", api_findings),
        Route("/api/specs/{name}/findings/{key:path}", api_finding),
        Route("/api/health", api_health),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def missing(request: Request, exc: Exception) -> Response:
        return not_found(request, request.url.path)

    app = Starlette(routes=routes, exception_handlers={404: missing})
    app.state.ctx = ctx
    app.state.catalog = catalog
    return SecurityHeaders(TokenGate(app, settings.token, login_page))


def token_from_env() -> str | None:
    """``RECONCILE_SERVE_TOKEN`` when set and not blank."""
    value = os.environ.get("RECONCILE_SERVE_TOKEN", "").strip()
    return value or None
