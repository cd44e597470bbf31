"""The HTTP server's own rules over real TCP: request framing, read deadlines, the
connection cap, token cookies for pages, a busy port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request as PageRequest
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

from pipeline.errors import ConfigurationError
from pipeline.http_server import HttpServer, Request, Response
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret token;=,%"  # characters a cookie value cannot carry as they are


class Echo:
    """A route handler that records what it was called with."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.bodies: list[bytes] = []
        self.delay_s = delay_s

    def __call__(self, request: Request) -> Response:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.bodies.append(request.body)
        return Response(200, {"bytes": len(request.body)})


@pytest.fixture
def echo() -> Echo:
    return Echo()


def _server(echo: Echo, **kwargs: object) -> HttpServer:
    server = HttpServer(**kwargs)  # type: ignore[arg-type]
    server.add_route("POST", "/echo", echo, json_body=True)
    return server


@pytest.fixture
def server(echo: Echo) -> Iterator[HttpServer]:
    with _server(echo, read_timeout_s=0.5, keepalive_timeout_s=0.5) as running:
        yield running


def _raw(server: HttpServer, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _json(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def head(length_headers: bytes) -> bytes:
    return (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + length_headers
        + b"\r\n"
    )


# -- framing and deadlines -------------------------------------------------------------------


def test_a_body_shorter_than_its_content_length_gets_408_and_the_handler_never_runs(
    server: HttpServer, echo: Echo
) -> None:
    started = time.monotonic()
    answer = _raw(server, head(b"Content-Length: 50\r\n") + b'{"text": "')
    assert _status(answer) == 408, answer
    assert "FINSENT_HTTP_READ_TIMEOUT_S" in _json(answer)["error"]
    assert b"connection: close" in answer.lower()
    assert time.monotonic() - started < 3
    # a client that gives up half way is not served either
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head(b"Content-Length: 50\r\n") + b"{")
    time.sleep(0.8)
    assert echo.bodies == []
    assert _status(_raw(server, head(b"Content-Length: 2\r\nConnection: close\r\n") + b"{}")) == 200
    assert echo.bodies == [b"{}"]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (b"Content-Length: 5_0\r\n", "digits only"),
        (b"Content-Length: +5\r\n", "digits only"),
        (b"Content-Length: -1\r\n", "digits only"),
        (b"Content-Length: 0x5\r\n", "digits only"),
        (b"Content-Length: 5, 5\r\n", "digits only"),
        (b"Content-Length: 5\r\nContent-Length: 5\r\n", "duplicate"),
        (b"Content-Length: 5\r\ncontent-length: 7\r\n", "duplicate"),
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "Transfer-Encoding"),
    ],
    ids=["underscore", "plus", "negative", "hex", "list", "duplicate", "conflicting", "te"],
)
def test_an_ambiguous_content_length_is_400_and_the_handler_never_runs(
    server: HttpServer, echo: Echo, headers: bytes, reason: str
) -> None:
    answer = _raw(server, head(headers) + b"{}   \r\n\r\n")
    assert _status(answer) == 400, answer
    assert reason in _json(answer)["error"]
    assert echo.bodies == []


def test_headers_dribbled_slower_than_the_read_timeout_get_408(server: HttpServer) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer = b""
        for _ in range(40):  # one header byte every 0.05 s: never finishes in time
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)
        sock.settimeout(2)
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            pass
    assert _status(answer) == 408, answer
    assert time.monotonic() - started < 3


def test_an_idle_connection_is_closed_after_the_keepalive_timeout(server: HttpServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""  # nothing sent: closed without an answer
        assert time.monotonic() - started < 3


def test_a_refused_body_is_dropped_and_the_connection_stays_usable(server: HttpServer) -> None:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        refused = client.post(
            "/echo", content=b"{}", headers={"Content-Type": "text/plain"}
        )  # 415, body unread
        assert refused.status_code == 415
        assert client.post("/echo", json={"a": 1}).status_code == 200


def test_builtin_paths_answer_head_trailing_slash_and_405(server: HttpServer) -> None:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/healthz/").status_code == 200
        headed = client.head("/healthz")
        assert headed.status_code == 200 and headed.content == b""
        wrong = client.post("/metrics", content=b"")
        assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, HEAD"
        assert client.get("/nothing").json() == {"error": "no route GET /nothing"}


# -- connections and threads ---------------------------------------------------------------


def test_slow_clients_beyond_the_connection_cap_get_a_quick_503_and_no_threads(
    echo: Echo,
) -> None:
    with _server(echo, max_connections=20, read_timeout_s=30) as server:
        baseline = threading.active_count()
        slow = []
        try:
            for _ in range(60):  # three times the cap, each holding a half-sent request
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                slow.append(sock)
            time.sleep(0.3)
            assert threading.active_count() <= baseline + 2
            started = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=5) as client:
                probe = client.get("/healthz")
            assert probe.status_code in (200, 503)
            assert time.monotonic() - started < 1.0
        finally:
            for sock in slow:
                sock.close()
        time.sleep(0.3)
        with httpx.Client(base_url=server.url, timeout=5) as client:
            assert client.get("/healthz").status_code == 200


def test_many_concurrent_requests_run_on_a_bounded_thread_pool() -> None:
    echo = Echo(delay_s=0.2)
    with _server(echo, max_connections=500) as server:
        baseline = threading.active_count()
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], threading.active_count())

        sampler = threading.Thread(target=sample)
        sampler.start()
        clients = [
            socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(120)
        ]
        try:
            for sock in clients:
                sock.sendall(head(b"Content-Length: 2\r\nConnection: close\r\n") + b"{}")
            answers = []
            for sock in clients:
                data = b""
                while chunk := sock.recv(4096):
                    data += chunk
                answers.append(_status(data))
        finally:
            done.set()
            sampler.join()
            for sock in clients:
                sock.close()
    assert answers == [200] * 120
    # 120 requests in flight; the handlers share anyio's pool (40) -- not a thread each
    assert peak[0] - baseline <= 45, (baseline, peak[0])


# -- pages and the token cookie ----------------------------------------------------------------


async def _page(request: PageRequest) -> HTMLResponse:
    return HTMLResponse("<h1>console</h1>")


async def _action(request: PageRequest) -> PlainTextResponse:
    return PlainTextResponse(f"got {len(await request.body())} bytes")


@pytest.fixture
def console() -> Iterator[HttpServer]:
    server = HttpServer(token=TOKEN, read_timeout_s=0.5)
    server.add_routes(
        [Route("/", _page), Route("/console/action", _action, methods=["POST"])], auth=True
    )
    server.add_routes([Route("/about", _page)], auth=False)
    with server:
        yield server


def test_pages_need_the_token_in_a_header_or_the_login_cookie(console: HttpServer) -> None:
    with httpx.Client(base_url=console.url, timeout=5) as client:
        assert client.get("/about").status_code == 200  # public page
        anonymous = client.get("/", headers={"Accept": "text/html"})
        assert anonymous.status_code == 401 and "/login?token=" in anonymous.text
        assert anonymous.headers["content-type"].startswith("text/html")
        assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/login", params={"token": "wrong"}).status_code == 401
        assert client.get("/", headers={"Cookie": "finsent_token=wrong"}).status_code == 401
        login = client.get("/login", params={"token": TOKEN})
        assert login.status_code == 303 and login.headers["Location"] == "/"
        cookie = login.headers["Set-Cookie"]
        assert cookie.startswith("finsent_token=") and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie and "Path=/" in cookie
        assert TOKEN not in cookie  # percent-encoded, never quoted into pieces
        value = cookie.split(";")[0].split("=", 1)[1]
    with httpx.Client(base_url=console.url, timeout=5, cookies={"finsent_token": value}) as user:
        page = user.get("/")
        assert page.status_code == 200 and "console" in page.text
        posted = user.post("/console/action", content=b"hello", headers={"Origin": console.url})
        assert posted.status_code == 200 and posted.text == "got 5 bytes"
        assert user.get("/nowhere").status_code == 404


def test_a_cross_site_post_carried_by_the_cookie_alone_is_refused(console: HttpServer) -> None:
    value = httpx.get(f"{console.url}/login", params={"token": TOKEN}).headers["Set-Cookie"]
    cookie = {"finsent_token": value.split(";")[0].split("=", 1)[1]}
    with httpx.Client(base_url=console.url, timeout=5, cookies=cookie) as user:
        foreign = user.post("/console/action", content=b"x", headers={"Origin": "http://evil"})
        assert foreign.status_code == 403 and "cookie" in foreign.json()["error"]
        fetched = user.post(
            "/console/action", content=b"x", headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert fetched.status_code == 403
    bearer = httpx.post(
        f"{console.url}/console/action",
        content=b"x",
        headers={"Origin": "http://evil", "Authorization": f"Bearer {TOKEN}"},
    )
    assert bearer.status_code == 200  # a header cannot be forged cross-site


def test_pages_get_the_body_limits_too(console: HttpServer) -> None:
    auth = f"Bearer {TOKEN}".encode()
    short = _raw(
        console,
        b"POST /console/action HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + auth
        + b"\r\nContent-Length: 9\r\n\r\nabc",
    )
    assert _status(short) == 408
    big = httpx.post(
        f"{console.url}/console/action",
        content=b"x" * (console.max_body_bytes + 1),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert big.status_code == 413


# -- the port --------------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def test_a_busy_port_is_a_configuration_error_naming_the_setting(busy_port: int) -> None:
    server = HttpServer("127.0.0.1", busy_port)
    with pytest.raises(ConfigurationError) as caught:
        server.start()
    message = str(caught.value)
    assert "FINSENT_HTTP_PORT" in message and f"127.0.0.1:{busy_port}" in message
    assert "in use" in message
    assert not server.ready()


def test_the_port_is_free_again_after_stop(echo: Echo) -> None:
    with _server(echo) as first:
        port = first.port
    with _server(echo, port=port) as again, httpx.Client(base_url=again.url) as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("argv", [["run"], ["ingest", "http"]], ids=["run", "ingest-http"])
def test_commands_on_a_busy_port_print_one_line_and_exit_2(
    argv: list[str], settings: Settings, busy_port: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env.update(
        {
            "FINSENT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
            "FINSENT_DATABASE_URL": settings.database_url or "",
            "FINSENT_KAFKA_TOPIC_DOCUMENTS": settings.kafka_topic_documents,
            "FINSENT_KAFKA_TOPIC_DLQ": settings.kafka_topic_dlq,
            "FINSENT_KAFKA_TOPIC_SCORED": settings.kafka_topic_scored,
            "FINSENT_HTTP_PORT": str(busy_port),
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "finsent.cli", *argv],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("finsent: error: cannot listen on 127.0.0.1:")
    assert "FINSENT_HTTP_PORT" in errors[0] and str(busy_port) in errors[0]
