"""A loopback HTTP server for curation tests (no internet).

`server.add(path, body, ...)` serves bytes; `server.script(path, [...])` serves a sequence of
behaviours, one per request (status codes, "stall", "slow", "drop" or bytes). Range requests are
honoured (206) unless `ranges=False`. Every request is logged with its headers and time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    ranges: bool = True
    script: list[Any] = field(default_factory=list)
    slow_bps: int = 0  # bytes per second for "slow"
    stall_s: float = 5.0
    hf_commit: str | None = None  # emulate the HF hub HEAD metadata


class Loopback:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                outer._serve(self, head=True)

            def do_GET(self):
                outer._serve(self, head=False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, body: bytes = b"", **kw) -> str:
        self.routes[path] = Route(body=body, **kw)
        return self.url(path)

    def script(self, path: str, steps: list[Any], body: bytes = b"", **kw) -> str:
        self.routes[path] = Route(body=body, script=list(steps), **kw)
        return self.url(path)

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.log if path is None or r["path"] == path]

    def close(self) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        with self.lock:
            self.log.append({"path": path, "method": h.command, "headers": dict(h.headers), "t": time.monotonic()})
            route = self.routes.get(path)
            step = route.script.pop(0) if route is not None and route.script else None
        if route is None:
            return self._send(h, 404, b"not found", head=head)
        if isinstance(step, int):
            hdrs = {}
            if step == 429:
                hdrs["Retry-After"] = route.headers.get("Retry-After", "0")
            return self._send(h, step, b"error", hdrs, head=head)
        if step == "stall":
            h.send_response(200)
            h.send_header("Content-Length", str(len(route.body)))
            h.end_headers()
            h.wfile.write(route.body[:10])
            h.wfile.flush()
            self.stop_event.wait(route.stall_s)
            h.close_connection = True
            return
        if step == "stall_headers":
            self.stop_event.wait(route.stall_s)
            h.close_connection = True
            return
        if step == "drop":
            h.send_response(200)
            h.send_header("Content-Length", str(len(route.body)))
            h.end_headers()
            h.wfile.write(route.body[: len(route.body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        body = step if isinstance(step, bytes) else route.body
        status, start = route.status, 0
        hdrs = dict(route.headers)
        if route.hf_commit:
            import hashlib

            hdrs.setdefault("X-Repo-Commit", route.hf_commit)
            hdrs.setdefault("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
        rng = h.headers.get("Range")
        if rng and route.ranges and status == 200 and rng.startswith("bytes="):
            start = int(rng[6:].split("-", 1)[0])
            if start >= len(body):
                return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(body)}"}, head=head)
            status = 206
            hdrs["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        if step == "slow" or route.slow_bps:
            bps = route.slow_bps or 200
            h.send_response(status)
            for k, v in hdrs.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            if head:
                return
            step_n = max(1, bps // 10)
            try:
                for i in range(0, len(payload), step_n):
                    if self.stop_event.is_set():
                        break
                    h.wfile.write(payload[i:i + step_n])
                    h.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self._send(h, status, payload, hdrs, head=head)

    @staticmethod
    def _send(h, status, body, headers=None, head=False):
        try:
            h.send_response(status)
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server():
    s = Loopback()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRELLIS_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
