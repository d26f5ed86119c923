"""A live `reconcile serve` (uvicorn in a thread of the test process) and the Debian programs the
dashboard's end-to-end tests drive: chromium and prometheus (scripts/debs.sh installs both)."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconcile.serve import ServeSettings, create_app

from .conftest import free_port

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"  # screenshots; kept out of git


def program(name: str, path: str | None = None) -> str:
    """The path of a Debian program the test needs; fails (never skips) with the fix when absent."""
    found = path if path and Path(path).exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run scripts/debs.sh (make test does)")
    return found


@contextmanager
def live_server(settings: ServeSettings) -> Iterator[str]:
    """Serve the dashboard on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="reconcile-serve", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the dashboard did not start within 30 s")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def get(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
