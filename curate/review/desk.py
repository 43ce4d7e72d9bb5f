"""The review desk: a local web page to decide on a queue of rows and commit the decisions (``curate review``).

A stdlib ``ThreadingHTTPServer`` bound to 127.0.0.1 (never another interface). Security, since any web page the user
opens in the same browser can send requests to localhost:

- a random token (``secrets.token_urlsafe``) is in the URL; every request without it gets 403, whatever the path;
- the ``Host`` header must be this server's loopback address (a DNS-rebinding page has its own host name there);
- a POST must carry the token in the ``X-Curate-Token`` header (a cross-site form cannot set one) with a JSON body,
  and is refused when ``Sec-Fetch-Site`` says ``cross-site`` / ``same-site`` or an ``Origin`` / ``Referer`` names
  another origin;
- responses set a Content-Security-Policy (scripts only with this page's nonce, nothing from outside), ``nosniff``,
  ``no-referrer`` and ``frame-ancestors 'none'``; data is HTML-escaped by ``curate.review.page``.

Images are served only for rows of the queue (and their duplicate-group members), re-encoded by Pillow (thumbnails
as ``curate.review.file`` makes them; ``full=1`` up to 1024 px), never as the stored bytes.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from curate.errors import CurateError
from curate.review import journal
from curate.review.page import DEFAULT_CAUSES, render
from curate.workspace import Workspace

HOST = "127.0.0.1"
MAX_BODY = 64 * 1024
THUMB, FULL = 128, 1024


def parse_causes(text: str | None) -> list[str]:
    """The default causes, then the user's (``"glare, Cropped"`` -> ``glare``, ``cropped``), without repeats."""
    extra = [c.strip().lower() for c in (text or "").split(",") if c.strip()]
    return list(dict.fromkeys([*DEFAULT_CAUSES, *extra]))


class Desk:
    """One review session of a version: its queue, the journal, the server.

    Args:
        ws: the workspace.
        version: the version reference to review (default HEAD).
        queue: ``curate.review.queues.QUEUES`` or ``errors:RUN``.
        causes: the cause tags offered (``parse_causes``).
        port: the port on 127.0.0.1 (0: a free one).
        limit: at most this many rows, worst first.

    Raises:
        CurateError: an unknown version, or the version lacks the queue's columns.
    """

    def __init__(
        self, ws: Workspace, version: str | None = None, *, queue: str = "label_issues", causes: list[str] | None = None,
        port: int = 0, limit: int = 500,
    ) -> None:  # fmt: skip
        from curate.review.queues import select

        self.ws, self.vid, self.queue = ws, ws.resolve(version), queue
        table = ws.samples(self.vid)
        self.items = select(table, queue, vid=self.vid, limit=limit)
        self.causes = causes if causes is not None else list(DEFAULT_CAUSES)
        ok = [lab for lab, st in zip(table.column("label").to_pylist(), table.column("status").to_pylist(), strict=True) if st == "ok"]
        self.classes = sorted({lab for lab in ok if lab is not None})
        self.journal = ws.review_journal(self.vid)
        self.token = secrets.token_urlsafe(24)
        self.by_id = {it["sample_id"]: it for it in self.items}
        self.packs = {r["sample_id"]: r["pack"] for it in self.items for r in (it, *(it.get("group") or []))}
        self._thumbs: dict[tuple[str, bool], tuple[bytes, str]] = {}
        self.server = ThreadingHTTPServer((HOST, port), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def origins(self) -> set[str]:
        return {f"http://{HOST}:{self.port}", f"http://localhost:{self.port}"}

    def start(self) -> Desk:
        """Serve in a background thread (tests; the CLI calls ``serve_forever``)."""
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
        self.server.server_close()

    # ----------------------------------------------------------------- actions
    def page(self, nonce: str) -> str:
        n = len(self.items)
        note = f"{n} rows of the {self.queue} queue, worst first; decisions are saved at once to {self.journal}. "
        return render(
            title=f"curate review: version {self.vid}", items=self.items, decisions=journal.read(self.journal),
            classes=self.classes, causes=self.causes, token=self.token, nonce=nonce, note=note,
        )  # fmt: skip

    def decide(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check a decision from the page and append it to the journal; returns the line written."""
        item = self.by_id.get(body.get("sample_id"))  # type: ignore[arg-type]
        if item is None:
            raise CurateError(f"sample {body.get('sample_id')!r} is not in this review queue")
        decision = body.get("decision")
        label = body.get("label")
        if decision == "accept":
            label = item.get("suggested_label")
            if label is None:
                raise CurateError(f"sample {item['sample_id']} has no suggested label to accept")
        elif decision == "label" and label not in self.classes:
            raise CurateError(f"unknown label {label!r}; use one of this version's classes: {', '.join(self.classes)}")
        return journal.append(self.journal, {**body, "label": label})

    def commit(self) -> dict[str, Any]:
        from curate.review.decisions import commit_review

        res = commit_review(self.ws, self.vid)
        return {k: res[k] for k in ("version", "parent", "cached", "journal")} | {"stats": res["stats"]}

    def image(self, sid: str, full: bool) -> tuple[bytes, str]:
        """The image of ``sid`` re-encoded (PNG or JPEG) and its content type."""
        from curate.review.file import thumbnail_uri

        key = (sid, full)
        if key not in self._thumbs:
            data = self.ws.blobs.get_many([sid], [self.packs[sid]]).get(sid)
            if data is None:
                raise KeyError(sid)
            uri = thumbnail_uri(data, FULL if full else THUMB)[0]
            head, _, b64 = uri.partition(",")
            got = (base64.b64decode(b64), head[len("data:") :].split(";")[0])
            if full:  # large: not kept, a reviewer opens few of them
                return got
            self._thumbs[key] = got
        return self._thumbs[key]


def _security_headers(nonce: str) -> list[tuple[str, str]]:
    """Headers of every answer: no caching, no sniffing, no framing, and only the page's own nonce'd script and style."""
    src = f"'nonce-{nonce}'" if nonce else "'none'"
    csp = f"default-src 'none'; img-src 'self'; style-src {src}; script-src {src}; connect-src 'self'; "
    return [
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
        ("Content-Security-Policy", csp + "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ]


def _handler(desk: Desk) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "curate-review"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            return None  # the URL holds the token: keep it out of logs

        def _send(self, code: int, body: bytes, ctype: str, nonce: str = "") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in _security_headers(nonce):
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, payload: Any) -> None:
            self._send(code, json.dumps(payload, default=str).encode(), "application/json")

        def _allowed(self, post: bool) -> bool:
            """Token, Host, and for a POST the same-origin checks (module doc); sends the 403 itself."""
            query = parse_qs(urlsplit(self.path).query)
            given = self.headers.get("X-Curate-Token", "") if post else (query.get("token") or [""])[0]
            host_ok = self.headers.get("Host", "") in {o.removeprefix("http://") for o in desk.origins()}
            ok = host_ok and secrets.compare_digest(given.encode(), desk.token.encode())
            if ok and post:
                origin, referer = self.headers.get("Origin"), self.headers.get("Referer")
                site = self.headers.get("Sec-Fetch-Site")
                ok = site in (None, "same-origin", "none") and (origin is None or origin in desk.origins())
                ok = ok and (referer is None or any(referer.startswith(o + "/") for o in desk.origins()))
                ok = ok and (self.headers.get("Content-Type") or "").split(";")[0].strip() == "application/json"
            if not ok:
                self._json(403, {"error": "forbidden: open the URL curate review printed (it holds the token)"})
            return ok

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if not self._allowed(post=False):
                return
            parts = urlsplit(self.path)
            if parts.path == "/":
                nonce = secrets.token_urlsafe(16)
                self._send(200, desk.page(nonce).encode("utf-8"), "text/html; charset=utf-8", nonce)
            elif parts.path == "/api/state":
                self._json(200, journal.read(desk.journal))
            elif parts.path.startswith("/image/") and parts.path[len("/image/") :] in desk.packs:
                full = parse_qs(parts.query).get("full") == ["1"]
                try:
                    data, ctype = desk.image(parts.path[len("/image/") :], full)
                except Exception:  # noqa: BLE001 - a bad or missing image costs its picture, not the desk
                    self._json(404, {"error": "image not available"})
                    return
                self._send(200, data, ctype)
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            if not self._allowed(post=True):
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 <= length <= MAX_BODY:
                    raise CurateError(f"request body of {length} bytes (at most {MAX_BODY})")
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise CurateError("the request body must be a JSON object")
                path = urlsplit(self.path).path
                if path == "/api/decide":
                    self._json(200, desk.decide(body))
                elif path == "/api/commit":
                    self._json(200, desk.commit())
                else:
                    self._json(404, {"error": "not found"})
            except (CurateError, ValueError) as exc:
                self._json(400, {"error": getattr(exc, "message", None) or str(exc)})

    return Handler
