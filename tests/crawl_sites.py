"""Local web sites for the crawl tests: a threaded HTTP server on 127.0.0.1 whose routes are plain functions.

``Site`` counts, per path, the requests it received (``hits``) and the responses it sent completely (``served``),
so a test can prove that a URL was not fetched twice. Route factories below build well-behaved and hostile
answers: static bodies, sequences (500 then 200), redirects, a slow drip, an endless body, connection resets,
a hang, a gzip bomb, and a gate that holds a request until the test opens it.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    site: Site

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        site = self.site
        with site.lock:
            site.hits[self.path] += 1
            site.times.setdefault(self.path, []).append(time.monotonic())
            n = site.hits[self.path]
        self.nth = n
        route = site.routes.get(self.path)
        if route is None:
            route = static(b"not found", "text/plain", status=404)
        route(self)

    def send(self, body: bytes, ctype: str | None = "image/png", status: int = 200, headers: dict[str, str] | None = None) -> None:
        """A complete response; counted in ``served`` once the last byte went out."""
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        with self.site.lock:
            self.site.served[self.path] += 1

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the client gave up (timeout, size cap) and closed the socket
            super().finish()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a crawl opening 30 connections at once overflows it when the
    # accept thread is slow (a loaded machine), the kernel drops the SYN, the client's retransmit comes after 1 s,
    # past a 1 s connect timeout, and the crawler rightly retries the URL: an extra hit the test did not expect.
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that give up (timeouts, size caps) break pipes on purpose


class Site:
    """``with Site(routes) as site: site.url("/a.png")``; ``hits`` / ``served`` count per path, ``times`` when."""

    def __init__(self, routes: dict[str, Route] | None = None, *, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.hits: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}  # path -> monotonic time of each request
        self.lock = threading.Lock()
        self.stop = threading.Event()
        handler = type("Handler", (_Handler,), {"site": self})
        self.server = _Server((host, 0), handler)
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def __enter__(self) -> Site:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------ routes
def static(body: bytes, ctype: str | None = "image/png", *, status: int = 200, headers: dict[str, str] | None = None) -> Route:
    return lambda h: h.send(body, ctype, status, headers)


def html(text: str, *, headers: dict[str, str] | None = None) -> Route:
    return static(text.encode(), "text/html; charset=utf-8", headers=headers)


def sequence(*routes: Route) -> Route:
    """The n-th request gets the n-th route; later ones get the last."""
    return lambda h: routes[min(h.nth, len(routes)) - 1](h)


def redirect(location: str, status: int = 302) -> Route:
    return static(b"", None, status=status, headers={"Location": location})


def drip(total: int = 10_000, every: float = 0.1) -> Route:
    """Promise ``total`` bytes, send one every ``every`` seconds: each read is quick, the whole never ends."""

    def route(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(total))
        h.end_headers()
        # a real PNG signature first, so the drip is cut by the total timeout and not by the magic-byte check
        sig = b"\x89PNG\r\n\x1a\n"
        for i in range(total):
            if h.site.stop.wait(every):
                return
            try:
                h.wfile.write(sig[i : i + 1] or b"\x00")
                h.wfile.flush()
            except OSError:
                return

    return route


def endless(ctype: str = "image/png", chunk: int = 64 << 10) -> Route:
    """A body without a length that never ends (delimited by connection close); valid PNG signature first."""

    def route(h: _Handler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        data = b"\x89PNG\r\n\x1a\n" + b"\0" * chunk
        try:
            while not h.site.stop.is_set():
                h.wfile.write(data)
        except OSError:
            return

    return route


def reset() -> Route:
    """Close the connection with a TCP RST before answering."""

    def route(h: _Handler) -> None:
        h.close_connection = True
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()

    return route


def hang(limit: float = 30.0) -> Route:
    """Accept the request and never answer (until the site stops or ``limit`` passes)."""

    def route(h: _Handler) -> None:
        h.site.stop.wait(limit)
        h.close_connection = True

    return route


def gzip_bomb(decoded: int = 50 << 20, ctype: str = "image/png") -> Route:
    """A small gzip body that decodes to ``decoded`` bytes (a PNG signature and zeros)."""
    body = gzip.compress(b"\x89PNG\r\n\x1a\n" + b"\0" * decoded, compresslevel=9, mtime=0)
    return static(body, ctype, headers={"Content-Encoding": "gzip"})


class Gate:
    """Holds the first request of each gated path until ``open()``, then drops it unanswered; later ones are served."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.waiting: Counter[str] = Counter()
        self.lock = threading.Lock()

    def route(self, then: Route) -> Route:
        def gated(h: _Handler) -> None:
            if h.nth == 1:
                with self.lock:
                    self.waiting[h.path] += 1
                self.opened.wait(30)
                h.close_connection = True
                return
            then(h)

        return gated

    def open(self) -> None:
        self.opened.set()

    def held(self) -> int:
        with self.lock:
            return sum(self.waiting.values())


def wait_for(cond: Callable[[], bool], timeout: float = 20.0, every: float = 0.02) -> bool:
    """Poll ``cond`` until true or ``timeout`` seconds passed; returns the last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return cond()
