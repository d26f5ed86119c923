"""Real local receivers for alert tests (an SMTP server, an HTTP endpoint), run in threads,
and helpers to run DAGs with ``dag.test()`` in-process."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib: EHLO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 localhost reconcile-test SMTP")
        rcpt: list[str] = []
        sender = ""
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            cmd = raw.decode(errors="replace").strip()
            verb = cmd[:4].upper()
            if verb == "EHLO":
                self.reply("250-localhost")
                self.reply("250 8BITMIME")
            elif verb == "HELO":
                self.reply("250 localhost")
            elif verb == "MAIL":
                sender, rcpt = cmd.split(":", 1)[1].strip(), []
                self.reply("250 OK")
            elif verb == "RCPT":
                rcpt.append(cmd.split(":", 1)[1].strip().strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                lines: list[bytes] = []
                while (line := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(line[1:] if line.startswith(b"..") else line)
                self.server.messages.append(  # type: ignore[attr-defined]
                    {"from": sender, "to": rcpt, "message": message_from_bytes(b"".join(lines))}
                )
                self.reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self.reply("250 OK")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    messages: list[dict[str, Any]]


@contextmanager
def smtp_receiver() -> Iterator[_SmtpServer]:
    """A real SMTP server on 127.0.0.1 (random port); ``.messages`` collects what arrived."""
    server = _SmtpServer(("127.0.0.1", 0), _SmtpHandler)
    server.messages = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append(  # type: ignore[attr-defined]
            {"path": self.path, "type": self.headers.get("Content-Type"), "json": json.loads(body)}
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    posts: list[dict[str, Any]]


@contextmanager
def webhook_receiver() -> Iterator[_HttpServer]:
    """A real HTTP endpoint on 127.0.0.1 (random port); ``.posts`` collects JSON bodies."""
    server = _HttpServer(("127.0.0.1", 0), _Hook)
    server.posts = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def mail_text(m: Message) -> str:
    parts = [m] if not m.is_multipart() else [p for p in m.walk() if not p.is_multipart()]
    out = []
    for p in parts:
        payload = p.get_payload(decode=True)
        if isinstance(payload, bytes):
            out.append(payload.decode(p.get_content_charset() or "utf-8", errors="replace"))
    return "\n".join(out)
