"""The small HTTP server of a finsent process: ingest routes, ``/healthz``, ``/metrics``.

One threaded server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive) per process, on
``FINSENT_HTTP_HOST``:``FINSENT_HTTP_PORT`` (port 0 picks a free one; read ``port``).

* ``GET /healthz``: liveness and readiness from the registered checks
  (``add_health_check(name, fn, kind="readiness"|"liveness")``; ``fn() -> bool``, an
  exception counts as failing). 200 when every check passes, 503 otherwise, with a JSON
  body naming each check and its status (``"ok"`` or ``"unavailable"``), never the error:
  /healthz answers unauthenticated callers, and a driver's error text names hosts, ports
  and software versions. The detail goes to the server log (once per change, so a probe
  every few seconds does not flood it). ``GET /healthz/live`` and ``/healthz/ready``
  answer one half.
* ``GET /metrics``: ``pipeline.metrics.REGISTRY`` in the Prometheus text format.
* Routes added with ``add_route(method, path, fn, auth=..., json_body=...)``. The server
  enforces, in this order: bearer token (401, when a token is configured and the route
  asks for auth), a ``Content-Length`` (411), the body size limit (413, checked before
  reading the body), a JSON content type (415); the handler gets the raw body bytes.

It is also a ``Role`` (``run(stop)`` serves until ``stop`` is set), so ``finsent run``
and ``finsent ingest http`` can hand it to the daemon.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.metrics import REGISTRY
from pipeline.roles import Stage
from pipeline.settings import Settings, secret_value

log = logging.getLogger(__name__)

CheckKind = Literal["liveness", "readiness"]
REQUEST_TIMEOUT_S = 30.0
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list -> JSON; bytes/str sent as they are
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, ensure_ascii=False, default=str).encode("utf-8")


def error(status: int, message: str, **extra: Any) -> Response:
    """A JSON error body: ``{"error": message, ...}``."""
    return Response(status, {"error": message, **extra})


RouteHandler = Callable[[Request], Response]


@dataclass(frozen=True)
class _Route:
    handler: RouteHandler
    auth: bool
    json_body: bool


class HttpServer:
    """The process's HTTP server. Add routes and checks, then ``start()`` or ``run(stop)``."""

    name = "http"
    #: Shutdown order in a daemon (pipeline.roles); ``finsent.roles.http_role`` sets it.
    stage: Stage = Stage.DOWNSTREAM

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        max_body_bytes: int = 5_000_000,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.token = token or None
        self.max_body_bytes = max_body_bytes
        self._routes: dict[tuple[str, str], _Route] = {}
        self._checks: dict[str, tuple[CheckKind, Callable[[], bool]]] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []
        self._last_failure: dict[str, str | None] = {}  # check name -> last logged detail

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpServer:
        return cls(
            settings.http_host,
            settings.http_port,
            token=secret_value(settings.http_token),
            max_body_bytes=settings.http_max_body_bytes,
        )

    # -- configuration -----------------------------------------------------------------------

    def add_route(
        self,
        method: str,
        path: str,
        handler: RouteHandler,
        *,
        auth: bool = False,
        json_body: bool = False,
    ) -> None:
        self._routes[(method.upper(), path.rstrip("/") or "/")] = _Route(handler, auth, json_body)

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` when the server stops (e.g. close the ingest producer)."""
        self._on_stop.append(fn)

    def add_health_check(
        self, name: str, fn: Callable[[], bool], kind: CheckKind = "readiness"
    ) -> None:
        """Register a check shown by /healthz; ``fn`` must be quick and must not raise on purpose."""
        if kind not in ("liveness", "readiness"):
            raise ValueError(f"health check kind must be liveness or readiness, got {kind!r}")
        self._checks[name] = (kind, fn)

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the HTTP server is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HttpServer:
        """Bind and serve in a background thread; returns at once."""
        with self._lock:
            if self._httpd is not None:
                return self
            httpd = ThreadingHTTPServer((self.host, self.requested_port), _make_handler(self))
            httpd.daemon_threads = True
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="finsent-http",
                daemon=True,
            )
            self._thread.start()
        log.info(
            "HTTP server on %s (/healthz, /metrics%s)",
            self.url,
            "".join(f", {m} {p}" for m, p in sorted(self._routes)),
        )
        return self

    def stop(self) -> None:
        with self._lock:
            httpd, self._httpd = self._httpd, None
            thread, self._thread = self._thread, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        callbacks, self._on_stop = self._on_stop, []
        for fn in callbacks:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - stopping must go on
                log.warning("HTTP server stop callback failed: %s", exc)

    def run(self, stop: threading.Event) -> None:
        """Role interface: serve until ``stop`` is set."""
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    def ready(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- built-in routes ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The /healthz report: per check its kind, ``ok`` and a generic ``status``. Why a
        check fails is logged here, not returned (see the module docstring)."""
        results: dict[str, dict[str, Any]] = {}
        for name, (kind, fn) in list(self._checks.items()):
            try:
                ok, detail = bool(fn()), None
            except Exception as exc:  # noqa: BLE001 - a failing check is reported, not raised
                ok, detail = False, " ".join(f"{type(exc).__name__}: {exc}".split())
            self._log_check(name, ok, detail)
            results[name] = {"kind": kind, "ok": ok, "status": "ok" if ok else "unavailable"}
        live = all(r["ok"] for r in results.values() if r["kind"] == "liveness")
        ready = live and all(r["ok"] for r in results.values() if r["kind"] == "readiness")
        return {
            "status": "ok" if ready else "unavailable",
            "live": live,
            "ready": ready,
            "checks": results,
        }

    def _log_check(self, name: str, ok: bool, detail: str | None) -> None:
        """Log a check's failure with its detail when it starts or its detail changes, and
        its recovery; repeats of the same failure go to DEBUG."""
        with self._lock:
            previous = self._last_failure.get(name)
            current = None if ok else (detail or "returned False")
            self._last_failure[name] = current
        if current == previous:
            if current is not None:
                log.debug("health check %s still failing: %s", name, current)
            return
        if current is None:
            log.info("health check %s recovered", name)
        else:
            log.warning("health check %s failing: %s", name, current)

    def _builtin(self, request: Request) -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return None
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/healthz/ready", "/healthz/live"):
            report = self.health()
            ok = report["live"] if path == "/healthz/live" else report["ready"]
            return Response(200 if ok else 503, report)
        if path == "/metrics":
            return Response(200, generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
        return None

    def dispatch(self, request: Request, read_body: Callable[[int], bytes]) -> Response:
        builtin = self._builtin(request)
        if builtin is not None:
            return builtin
        path = request.path.rstrip("/") or "/"
        route = self._routes.get((request.method, path))
        if route is None:
            allowed = sorted(m for m, p in self._routes if p == path)
            if allowed:
                return Response(
                    405,
                    {
                        "error": f"{request.method} is not allowed on {path}; use {', '.join(allowed)}"
                    },
                    headers={"Allow": ", ".join(allowed)},
                )
            return error(404, f"no route {request.method} {path}")
        if (
            route.auth
            and self.token
            and not self._authorised(request.headers.get("authorization", ""))
        ):
            return Response(
                401,
                {
                    "error": "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                    "with the value of FINSENT_HTTP_TOKEN"
                },
                headers={"WWW-Authenticate": 'Bearer realm="finsent"'},
            )
        body = b""
        if request.method in ("POST", "PUT", "PATCH"):
            if "chunked" in request.headers.get("transfer-encoding", "").lower():
                return error(411, "chunked bodies are not accepted: send a Content-Length")
            raw_length = request.headers.get("content-length")
            if raw_length is None:
                return error(411, "a Content-Length header is required")
            try:
                length = int(raw_length)
                if length < 0:
                    raise ValueError
            except ValueError:
                return error(400, f"invalid Content-Length {raw_length[:40]!r}")
            if length > self.max_body_bytes:
                return error(
                    413,
                    f"body of {length} bytes is over the limit of {self.max_body_bytes} bytes "
                    "(FINSENT_HTTP_MAX_BODY_BYTES); send smaller batches",
                    max_body_bytes=self.max_body_bytes,
                )
            if route.json_body:
                ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype != "application/json" and not ctype.endswith("+json"):
                    return error(
                        415,
                        f"content type {ctype or '(none)'!r} is not accepted: send application/json",
                    )
            body = read_body(length)
        try:
            return route.handler(
                Request(request.method, path, request.query, request.headers, body)
            )
        except Exception:
            log.exception("HTTP %s %s failed", request.method, path)
            return error(500, "internal error; see the server log")

    def _authorised(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip() or self.token is None:
            return False
        return hmac.compare_digest(
            value.strip().encode("utf-8", "replace"), self.token.encode("utf-8")
        )


def _make_handler(server: HttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = REQUEST_TIMEOUT_S
        server_version = "finsent"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            # Headers and body leave in separate writes: without TCP_NODELAY, Nagle plus the
            # client's delayed ACK adds ~40 ms to every keep-alive response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(self.command, parts.path, parts.query, headers, b"")
            consumed = {"done": self.command not in ("POST", "PUT", "PATCH")}

            def read_body(length: int) -> bytes:
                consumed["done"] = True
                return self.rfile.read(length) if length else b""

            response = server.dispatch(request, read_body)
            if not consumed["done"]:
                self.close_connection = True  # the unread body would corrupt the next request
            payload = response.encode()
            self.send_response(response.status)
            self.send_header(
                "Content-Type", response.content_type if response.body is not None else "text/plain"
            )
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            if not consumed["done"]:
                self._drain()

        def _drain(self) -> None:
            """Read (and drop) a refused body so the client sees our answer instead of a
            connection reset; bounded in bytes and time."""
            try:
                remaining = min(int(self.headers.get("Content-Length") or 0), DRAIN_LIMIT_BYTES)
            except ValueError:
                return
            try:
                self.wfile.flush()
                self.connection.settimeout(2.0)
                while remaining > 0:
                    chunk = self.rfile.read1(min(65536, remaining))  # type: ignore[attr-defined]
                    if not chunk:
                        break
                    remaining -= len(chunk)
            except OSError:
                pass

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
