"""The HTTP server of a finsent process: ingest routes, ``/healthz``, ``/metrics``, pages.

One ASGI server per process (Starlette routing on uvicorn, HTTP/1.1 keep-alive) on
``FINSENT_HTTP_HOST``:``FINSENT_HTTP_PORT`` (port 0 picks a free one; read ``port``). It
runs its own event loop in one background thread; synchronous route handlers run in a
bounded thread pool, so the number of threads does not grow with the number of clients.

* ``GET /healthz``: liveness and readiness from the registered checks
  (``add_health_check(name, fn, kind="readiness"|"liveness")``; ``fn() -> bool``, an
  exception counts as failing). 200 when every check passes, 503 otherwise, with a JSON
  body naming each check and its status (``"ok"`` or ``"unavailable"``), never the error:
  /healthz answers unauthenticated callers, and a driver's error text names hosts, ports
  and software versions. The detail goes to the server log (once per change, so a probe
  every few seconds does not flood it). ``GET /healthz/live`` and ``/healthz/ready``
  answer one half. The checks run in threads of their own: a slow database check never
  waits behind busy ingest handlers, nor blocks the event loop.
* ``GET /metrics``: ``pipeline.metrics.REGISTRY`` in the Prometheus text format.
* Routes added with ``add_route(method, path, fn, auth=..., json_body=...)``: ``fn`` takes a
  :class:`Request` with the raw body bytes and returns a :class:`Response`. The server
  enforces, in this order: the token (401, when a token is configured and the route asks
  for auth), a ``Content-Length`` (411; chunked bodies are refused), the body size limit
  (413, checked from the header before the body is read), a JSON content type (415); then
  it reads the whole body within ``FINSENT_HTTP_READ_TIMEOUT_S`` (a client that sends less
  than its ``Content-Length`` gets 408 and the handler never runs).
* Starlette routes (HTML pages) added with ``add_routes(routes, auth=...)``: the same
  token, size and read-time rules.
* ``GET /login?token=...``: sets the ``finsent_token`` cookie (HttpOnly, SameSite=Strict) and
  redirects to ``/``. Where a token is configured, a route with ``auth`` accepts
  ``Authorization: Bearer <token>`` or that cookie (a browser following a link cannot send
  a header). A state-changing request (not GET/HEAD/OPTIONS) authenticated by the cookie
  alone must come from this server's own pages (``Origin`` / ``Sec-Fetch-Site``), else 403.

Connection limits (``pipeline.settings``): ``FINSENT_HTTP_BACKLOG`` (the kernel's accept
queue), ``FINSENT_HTTP_MAX_CONNECTIONS`` (beyond it a request gets 503 at once),
``FINSENT_HTTP_KEEPALIVE_TIMEOUT_S`` (idle connections are closed), and
``FINSENT_HTTP_READ_TIMEOUT_S`` (a client that dribbles its headers gets 408). The request
framing is strict: ``Content-Length`` must be digits only, given once, and not together
with ``Transfer-Encoding`` (400 otherwise), so no proxy in front can read a request's
length differently from us.

It is also a ``Role`` (``run(stop)`` serves until ``stop`` is set), so ``finsent run``
and ``finsent ingest http`` can hand it to the daemon. ``bind()`` takes the port early:
a busy port is a :class:`~pipeline.errors.ConfigurationError` naming
``FINSENT_HTTP_PORT``, raised where the caller can still turn it into one line.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import hmac
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote

import anyio
import anyio.to_thread
import h11
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import cookie_parser
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline.errors import ConfigurationError
from pipeline.metrics import REGISTRY
from pipeline.roles import Stage
from pipeline.settings import Settings, secret_value

log = logging.getLogger(__name__)

CheckKind = Literal["liveness", "readiness"]
#: A refused body up to this size is read and dropped, so the client sees our answer
#: instead of a connection reset; a larger one closes the connection after the answer.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
#: Threads that run health checks, apart from the route handlers' pool.
HEALTH_THREADS = 4
#: How long a stopping server lets requests in flight finish.
GRACEFUL_SHUTDOWN_S = 10
TOKEN_COOKIE = "finsent_token"
START_TIMEOUT_S = 10.0
_HEALTH_PATHS = ("/healthz", "/healthz/ready", "/healthz/live")
_BUILTIN_PATHS = frozenset((*_HEALTH_PATHS, "/metrics", "/login"))
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


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


# -- request framing (before h11 sees the request) ------------------------------------------

_END_OF_HEADERS = re.compile(rb"\n\r?\n")
_DIGITS = re.compile(rb"[0-9]{1,19}")


def framing_problem(data: bytes) -> str | None:
    """Why the request whose head starts ``data`` has an ambiguous length, or None (also
    while the head is incomplete). h11 merges repeated equal ``Content-Length`` headers and
    strips them; a proxy in front may not, so we refuse what two readers could disagree on.

    >>> framing_problem(b"POST / HTTP/1.1\\r\\nContent-Length: 5\\r\\n\\r\\nhello") is None
    True
    >>> framing_problem(b"POST / HTTP/1.1\\r\\nContent-Length: 5_0\\r\\n\\r\\n")
    "invalid Content-Length '5_0': send digits only"
    >>> framing_problem(b"POST / HTTP/1.1\\r\\nContent-Length: +5\\r\\n\\r\\n")
    "invalid Content-Length '+5': send digits only"
    >>> framing_problem(b"POST / HTTP/1.1\\r\\ncontent-length: 5\\r\\nContent-Length: 5\\r\\n\\r\\n")
    'duplicate Content-Length headers: send exactly one'
    >>> framing_problem(b"POST / HTTP/1.1\\r\\nContent-Length: 5, 5\\r\\n\\r\\n")
    "invalid Content-Length '5, 5': send digits only"
    >>> framing_problem(b"POST / HTTP/1.1\\r\\nContent-Length: 5\\r\\n") is None  # head incomplete
    True
    """
    data = data.lstrip(b"\r\n")
    end = _END_OF_HEADERS.search(data)
    if end is None:
        return None
    lengths: list[bytes] = []
    transfer_encoding = False
    for line in data[: end.start()].split(b"\n")[1:]:
        name, colon, value = line.rstrip(b"\r").partition(b":")
        if not colon:
            continue
        name = name.lower()
        if name == b"content-length":
            lengths.append(value.strip(b" \t"))
        elif name == b"transfer-encoding":
            transfer_encoding = True
    if len(lengths) > 1:
        return "duplicate Content-Length headers: send exactly one"
    if lengths and not _DIGITS.fullmatch(lengths[0]):
        return f"invalid Content-Length {lengths[0][:40].decode('latin-1')!r}: send digits only"
    if lengths and transfer_encoding:
        return "both Content-Length and Transfer-Encoding: send a Content-Length alone"
    return None


class _FinsentH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus what it leaves to a proxy: strict framing
    (:func:`framing_problem`), a deadline for a request's headers (408), and one for a refused
    body being dropped and for a connection that never sends anything."""

    read_timeout_s: float = 10.0  # set per server (a subclass made in HttpServer.start)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def handle_events(self) -> None:
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            problem = framing_problem(self.conn.trailing_data[0])
            if problem is not None:
                self.logger.debug("refused a request: %s", problem)
                self._refuse(400, problem)
                return
        super().handle_events()

    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode("utf-8")
        reason = _reason(status)
        self.transport.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode("latin-1")
            + body
        )
        self.transport.close()

    # A deadline is armed while the server waits on the client outside a request the
    # application holds: "headers" once a request has begun to arrive, "drain" while a
    # refused body is dropped, "idle" when nothing arrived yet and uvicorn's own keep-alive
    # timer is not running (a new connection, or one whose refused body was dropped).

    def _kind_now(self) -> str | None:
        if self.transport is None or self.transport.is_closing():
            return None
        theirs, ours = self.conn.their_state, self.conn.our_state
        if theirs is h11.IDLE and ours is h11.IDLE:
            if self.conn.trailing_data[0]:
                return "headers"
            return "idle" if self.timeout_keep_alive_task is None else None
        if theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE):
            return "drain"
        return None

    def _watch(self) -> None:
        kind = self._kind_now()
        if kind == self._deadline_kind:
            return
        self._disarm()
        if kind is not None:
            delay = self.timeout_keep_alive if kind == "idle" else self.read_timeout_s
            self._deadline = self.loop.call_later(delay, self._expired, kind)
            self._deadline_kind = kind

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._deadline_kind = None, None

    def _expired(self, kind: str) -> None:
        self._deadline, self._deadline_kind = None, None
        if self._kind_now() != kind:
            self._watch()
            return
        if kind == "headers":
            self._refuse(
                408,
                f"the request headers did not arrive within {self.read_timeout_s:g} s "
                "(FINSENT_HTTP_READ_TIMEOUT_S)",
            )
            return
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _UvicornServer(uvicorn.Server):
    """uvicorn in a background thread: the daemon, not uvicorn, owns the signals."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None

    def capture_signals(self) -> Any:  # uvicorn >= 0.29
        import contextlib

        return contextlib.nullcontext()


# -- ASGI helpers ---------------------------------------------------------------------------


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _send(send: Send, response: Response, *, close: bool = False) -> None:
    payload = response.encode()
    ctype = response.content_type if response.body is not None else "text/plain"
    headers = [
        (b"content-type", ctype.encode("latin-1")),
        (b"content-length", str(len(payload)).encode("latin-1")),
    ]
    headers += [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def _wants_html(headers: dict[str, str]) -> bool:
    return "text/html" in headers.get("accept", "")


class _Guard:
    """Wraps a page route's app: the server's token, size and read-time rules, then the
    route with its body already read."""

    def __init__(self, app: ASGIApp, server: HttpServer, auth: bool) -> None:
        self.app = app
        self.server = server
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if self.auth and self.server._auth_status(scope, _headers(scope), cookie=True):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        body = await self.server._admit(scope, receive, send, auth=self.auth, json_body=False)
        if body is None:
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _App:
    """The ASGI application: the server's own paths first, then the page routes."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"].rstrip("/") or "/"
            if path in _BUILTIN_PATHS or path in self.server._paths:
                await self.server._serve(scope, receive, send, path)
                return
        await self.server._pages(scope, receive, send)


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
        backlog: int = 2048,
        max_connections: int = 200,
        keepalive_timeout_s: float = 5.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.token = token or None
        self.max_body_bytes = max_body_bytes
        self.backlog = backlog
        self.max_connections = max_connections
        self.keepalive_timeout_s = keepalive_timeout_s
        self.read_timeout_s = read_timeout_s
        self._routes: dict[tuple[str, str], _Route] = {}
        self._paths: set[str] = set()
        self._checks: dict[str, tuple[CheckKind, Callable[[], bool]]] = {}
        self._pages = Starlette()
        self._pages.router.default = self._not_found
        self._socket: socket.socket | None = None
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._health_limiter: anyio.CapacityLimiter | None = None
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
            backlog=settings.http_backlog,
            max_connections=settings.http_max_connections,
            keepalive_timeout_s=settings.http_keepalive_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
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
        """A JSON API route; ``handler`` runs in the server's thread pool."""
        path = path.rstrip("/") or "/"
        self._routes[(method.upper(), path)] = _Route(handler, auth, json_body)
        self._paths.add(path)

    def add_routes(self, routes: Sequence[BaseRoute], *, auth: bool) -> None:
        """Mount Starlette routes (``Route``, ``Mount``, ...), e.g. the web console's pages.
        With ``auth`` they need the token (header or ``finsent_token`` cookie, see
        ``/login``); either way the size and read-time limits apply. The routes are copied,
        not changed."""
        for route in routes:
            if not hasattr(route, "app"):
                raise TypeError(f"cannot guard route {route!r}: it has no 'app' attribute")
            guarded = copy.copy(route)
            guarded.app = _Guard(route.app, self, auth)  # type: ignore[attr-defined]
            self._pages.router.routes.append(guarded)

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
        if self._socket is None:
            raise RuntimeError("the HTTP server is not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def bind(self) -> HttpServer:
        """Take the listening socket now (``start()`` does it when not done). Raises
        ConfigurationError naming FINSENT_HTTP_PORT (or _HOST) when the address is taken or
        not this machine's."""
        with self._lock:
            if self._socket is None:
                self._socket = self._listen()
        return self

    def _listen(self) -> socket.socket:
        where = f"{self.host}:{self.requested_port}"
        try:
            infos = socket.getaddrinfo(
                self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise ConfigurationError(
                f"cannot listen on {where}: FINSENT_HTTP_HOST {self.host!r} does not resolve "
                f"({exc.strerror}); set it to an address of this machine (127.0.0.1, 0.0.0.0)"
            ) from None
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(self.backlog)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"cannot listen on {where}: the address is in use (another finsent or "
                    "another program holds it); set FINSENT_HTTP_PORT to a free port, or 0 to "
                    "pick one"
                ) from None
            if exc.errno == errno.EACCES:
                raise ConfigurationError(
                    f"cannot listen on {where}: permission denied (ports below 1024 need "
                    "privileges); set FINSENT_HTTP_PORT to a port above 1023"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigurationError(
                    f"cannot listen on {where}: FINSENT_HTTP_HOST {self.host!r} is not an "
                    "address of this machine; set it to 127.0.0.1 or 0.0.0.0"
                ) from None
            raise ConfigurationError(
                f"cannot listen on {where} ({exc.strerror}); check FINSENT_HTTP_HOST and "
                "FINSENT_HTTP_PORT"
            ) from None
        sock.setblocking(False)
        return sock

    def start(self) -> HttpServer:
        """Bind (see ``bind``) and serve in a background thread; returns once serving."""
        with self._lock:
            if self._server is not None:
                return self
            if self._socket is None:
                self._socket = self._listen()
            sock = self._socket
            protocol = type(
                "FinsentH11Protocol",
                (_FinsentH11Protocol,),
                {"read_timeout_s": self.read_timeout_s},
            )
            config = uvicorn.Config(
                _App(self),
                http=protocol,
                ws="none",
                lifespan="off",
                interface="asgi3",
                log_config=None,
                log_level=logging.WARNING,
                access_log=False,
                proxy_headers=False,
                server_header=False,
                backlog=self.backlog,
                limit_concurrency=self.max_connections,
                timeout_keep_alive=self.keepalive_timeout_s,  # type: ignore[arg-type]
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            )
            server = _UvicornServer(config)
            thread = threading.Thread(
                target=server.run, kwargs={"sockets": [sock]}, name="finsent-http", daemon=True
            )
            self._server, self._thread = server, thread
            thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the HTTP server did not start; see the log above")
            time.sleep(0.01)
        pages = len(self._pages.router.routes)
        log.info(
            "HTTP server on %s (/healthz, /metrics%s%s)",
            self.url,
            "".join(f", {m} {p}" for m, p in sorted(self._routes)),
            f", {pages} page route(s)" if pages else "",
        )
        return self

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            thread, self._thread = self._thread, None
            sock, self._socket = self._socket, None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=GRACEFUL_SHUTDOWN_S + 5)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=5)
        if sock is not None:
            sock.close()
        self._health_limiter = None
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
        server = self._server
        return server is not None and server.started and not server.should_exit

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- health -------------------------------------------------------------------------------

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

    # -- serving (on the event loop) ------------------------------------------------------------

    async def _serve(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        if method in ("GET", "HEAD") and path in _BUILTIN_PATHS:
            await _send(send, await self._builtin(scope, path))
            return
        route = self._routes.get((method, path))
        if route is None:
            allowed = sorted(m for m, p in self._routes if p == path)
            if path in _BUILTIN_PATHS:
                allowed = ["GET", "HEAD"]
            if allowed:
                await _send(
                    send,
                    Response(
                        405,
                        {"error": f"{method} is not allowed on {path}; use {', '.join(allowed)}"},
                        headers={"Allow": ", ".join(allowed)},
                    ),
                )
            else:
                await _send(send, error(404, f"no route {method} {path}"))
            return
        body = await self._admit(scope, receive, send, auth=route.auth, json_body=route.json_body)
        if body is None:
            return
        query = scope.get("query_string", b"").decode("latin-1")
        request = Request(method, path, query, _headers(scope), body)
        try:
            response = await anyio.to_thread.run_sync(route.handler, request)
        except Exception:
            log.exception("HTTP %s %s failed", method, path)
            response = error(500, "internal error; see the server log")
        await _send(send, response)

    async def _builtin(self, scope: Scope, path: str) -> Response:
        if path in _HEALTH_PATHS:
            if self._health_limiter is None:
                self._health_limiter = anyio.CapacityLimiter(HEALTH_THREADS)
            report = await anyio.to_thread.run_sync(self.health, limiter=self._health_limiter)
            ok = report["live"] if path == "/healthz/live" else report["ready"]
            return Response(200 if ok else 503, report)
        if path == "/metrics":
            return Response(200, generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
        return self._login(scope)

    def _login(self, scope: Scope) -> Response:
        """``GET /login?token=...``: the cookie for pages, then ``/``."""
        headers = _headers(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = (query.get("token") or [""])[0]
        out = {"Location": "/", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        if self.token is None:
            return Response(303, None, headers=out)
        if not given or not _same(given, self.token):
            return self._unauthorised(headers, "wrong or missing token in /login?token=...")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        out["Set-Cookie"] = (
            f"{TOKEN_COOKIE}={quote(self.token, safe='')}; Path=/; HttpOnly; SameSite=Strict{secure}"
        )
        return Response(303, None, headers=out)

    def _unauthorised(self, headers: dict[str, str], why: str | None = None) -> Response:
        message = why or (
            "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
            "with the value of FINSENT_HTTP_TOKEN"
        )
        challenge = {"WWW-Authenticate": 'Bearer realm="finsent"'}
        if _wants_html(headers):
            page = (
                "<!doctype html><title>finsent: log in</title><h1>finsent needs its token</h1>"
                "<p>Open <code>/login?token=&lt;FINSENT_HTTP_TOKEN&gt;</code> once in this "
                "browser; it keeps the token in a cookie.</p>"
            )
            return Response(401, page, content_type="text/html; charset=utf-8", headers=challenge)
        return Response(401, {"error": message}, headers=challenge)

    def _auth_status(self, scope: Scope, headers: dict[str, str], *, cookie: bool) -> int:
        """0 when the request may pass; 401 without a valid token; 403 for a cross-site
        state-changing request carried by the cookie alone."""
        if self.token is None:
            return 0
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip() and _same(value.strip(), self.token):
            return 0
        if not cookie:
            return 401
        jar = cookie_parser(headers.get("cookie", ""))
        carried = unquote(jar.get(TOKEN_COOKIE, ""))
        if not carried or not _same(carried, self.token):
            return 401
        if scope.get("method", "GET") in _SAFE_METHODS:
            return 0
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
        if (site is not None and site not in ("same-origin", "none")) or (
            origin is not None and origin != own
        ):
            return 403
        return 0

    async def _admit(
        self, scope: Scope, receive: Receive, send: Send, *, auth: bool, json_body: bool
    ) -> bytes | None:
        """Token, framing, size and type checks, then the whole body within the read
        timeout. None when a refusal was sent (or the client went away): the handler must
        not run."""
        headers = _headers(scope)
        method = scope["method"]
        if auth:
            status = self._auth_status(scope, headers, cookie=True)
            if status == 401:
                await _send(send, self._unauthorised(headers))
                return None
            if status == 403:
                await _send(
                    send,
                    error(
                        403,
                        "cross-site request refused: a request authenticated by the "
                        f"{TOKEN_COOKIE} cookie must come from this server's own pages",
                    ),
                )
                return None
        if "transfer-encoding" in headers:
            await _send(send, error(411, "chunked bodies are not accepted: send a Content-Length"))
            return None
        raw_length = headers.get("content-length")
        if raw_length is None:
            if method in ("POST", "PUT", "PATCH"):
                await _send(send, error(411, "a Content-Length header is required"))
                return None
            return b""
        if not raw_length.isdigit():  # the protocol refused it already; kept for other servers
            await _send(send, error(400, f"invalid Content-Length {raw_length[:40]!r}"), close=True)
            return None
        length = int(raw_length)
        if length > self.max_body_bytes:
            await _send(
                send,
                error(
                    413,
                    f"body of {length} bytes is over the limit of {self.max_body_bytes} bytes "
                    "(FINSENT_HTTP_MAX_BODY_BYTES); send smaller batches",
                    max_body_bytes=self.max_body_bytes,
                ),
                close=length > DRAIN_LIMIT_BYTES,
            )
            return None
        if json_body and method in ("POST", "PUT", "PATCH"):
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json" and not ctype.endswith("+json"):
                await _send(
                    send,
                    error(
                        415,
                        f"content type {ctype or '(none)'!r} is not accepted: send application/json",
                    ),
                )
                return None
        if length == 0:
            return b""
        return await self._read_body(receive, send, length)

    async def _read_body(self, receive: Receive, send: Send, length: int) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        body = bytearray()
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await _send(
                    send,
                    error(
                        408,
                        f"the body did not arrive within {self.read_timeout_s:g} s "
                        f"(FINSENT_HTTP_READ_TIMEOUT_S): {len(body)} of {length} bytes "
                        "announced by Content-Length",
                    ),
                    close=True,
                )
                return None
            if message["type"] == "http.disconnect":
                log.debug("client left after %d of %d body bytes", len(body), length)
                return None
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        if len(body) != length:
            await _send(
                send,
                error(400, f"the body has {len(body)} bytes, Content-Length said {length}"),
                close=True,
            )
            return None
        return bytes(body)

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1000})
            return
        await _send(send, error(404, f"no route {scope['method']} {scope['path']}"))


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))
