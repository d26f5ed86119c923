"""``reconcile serve``: the drift dashboard and ``/metrics``, another thin shell over :mod:`reconcile.app`.

Pages (HTML rendered on the server, charts as inline SVG, no script and no CDN), the JSON API
behind them, CSV downloads and Prometheus metrics, all read-only, from the audit store and the
spec files. :func:`create_app` builds the ASGI application; :func:`run` serves it with uvicorn.
"""

from __future__ import annotations

import ipaddress

from .app import ServeSettings, create_app, token_from_env

__all__ = ["ServeSettings", "create_app", "run", "token_from_env", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    """Serve the dashboard until interrupted (uvicorn, one process)."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False)
