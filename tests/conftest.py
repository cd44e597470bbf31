"""Shared fixtures: real services over real TCP, nothing mocked.

* ``kafka_broker``: an embedded tansu broker on a free port (session), with the
  project's Kafka topics created.
* ``database_url``: a throwaway PostgreSQL database created on the local server
  (127.0.0.1:5432, started if it is down), migrated with Alembic, dropped at the end.
* ``settings``: Settings pointing at both, with short consumer-group timeouts.
* ``smtp_server``: an aiosmtpd server recording the messages it receives.
* ``http_receiver``: a local HTTP server recording requests, answering scripted statuses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline import db
from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics, free_port, port_answers
from pipeline.settings import KafkaTimeouts, Settings, get_settings, load_settings

ADMIN_URL = os.environ.get(
    "FINSENT_TEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TEST_KAFKA = KafkaTimeouts(
    session_timeout_ms=2000,
    heartbeat_interval_ms=600,
    max_poll_interval_ms=10_000,
    request_timeout_ms=10_000,
    poll_timeout_ms=200,
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No FINSENT_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("FINSENT_") and name != "FINSENT_TEST_ADMIN_URL":
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _ensure_local_postgres() -> None:
    if port_answers("127.0.0.1", 5432):
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if versions and shutil.which("pg_ctlcluster"):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
            check=False,
        )
        for _ in range(50):
            if port_answers("127.0.0.1", 5432):
                return
            time.sleep(0.2)
    pytest.exit(
        "PostgreSQL is not running on 127.0.0.1:5432 and could not be started", returncode=3
    )


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    _ensure_local_postgres()
    return ADMIN_URL


def create_database(admin_url: str, prefix: str = "finsent_test") -> str:
    """Create an empty database; return its URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = sa.engine.make_url(url).database
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A migrated throwaway database for the whole session."""
    url = create_database(postgres_admin_url)
    db.upgrade(url)
    yield url
    drop_database(postgres_admin_url, url)


@pytest.fixture
def empty_database_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, unmigrated database for one test."""
    url = create_database(postgres_admin_url, prefix="finsent_empty")
    yield url
    drop_database(postgres_admin_url, url)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.engine.Engine]:
    """An engine on the session database, with every table emptied before the test."""
    eng = db.make_engine(database_url)
    with eng.begin() as conn:
        tables = (
            conn.execute(
                sa.text(
                    "select tablename from pg_tables where schemaname = 'public' and tablename <> 'alembic_version'"
                )
            )
            .scalars()
            .all()
        )
        if tables:
            conn.execute(
                sa.text(
                    "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
                )
            )
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    broker = EmbeddedBroker(log_path=log_path).start()
    ensure_kafka_topics(broker.bootstrap, Settings().kafka_topics, partitions=4)
    yield broker
    broker.stop()


@pytest.fixture
def settings(database_url: str, kafka_broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings for a test: the session database and broker, short group timeouts, unique
    Kafka topic names and consumer groups per test so tests never read each other's records
    nor share a group's rebalances."""
    suffix = uuid.uuid4().hex[:8]
    s = load_settings(
        database_url=database_url,
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka=TEST_KAFKA,
        kafka_topic_documents=f"finsent.documents.{suffix}",
        kafka_topic_scored=f"finsent.scored.{suffix}",
        kafka_topic_dlq=f"finsent.dlq.{suffix}",
        kafka_group_prefix=f"finsent-{suffix}",
        kafka_partitions=2,
        # Several workers of one role run in one test process: dynamic membership here
        # (static member ids are per host); the fault tests turn it on with their own ids.
        kafka_static_membership=False,
        model_registry_dir=tmp_path / "registry",
        embedded_pg_dir=tmp_path / "pg",
        http_port=0,
    )
    ensure_kafka_topics(kafka_broker.bootstrap, s.kafka_topics, partitions=s.kafka_partitions)
    return s


# --- SMTP --------------------------------------------------------------------------------


@dataclass
class SmtpServer:
    host: str
    port: int
    messages: list[dict[str, object]] = field(default_factory=list)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    from aiosmtpd.controller import Controller

    server = SmtpServer(host="127.0.0.1", port=free_port())

    class Recorder:
        async def handle_DATA(self, _server, session, envelope):
            server.messages.append(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "data": envelope.content.decode("utf-8", "replace"),
                }
            )
            return "250 OK"

    controller = Controller(Recorder(), hostname=server.host, port=server.port)
    controller.start()
    yield server
    controller.stop()


# --- HTTP receiver -----------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    """Records every request; answers with scripted (status, headers) in order, then 200."""

    host: str
    port: int
    requests: list[ReceivedRequest] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def respond_with(self, *responses: int | tuple[int, dict[str, str]]) -> None:
        with self.lock:
            self.script = [r if isinstance(r, tuple) else (r, {}) for r in responses]

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[ReceivedRequest]:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.requests)


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver(host="127.0.0.1", port=0)

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with receiver.lock:
                receiver.requests.append(
                    ReceivedRequest(self.command, self.path, dict(self.headers), body)
                )
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_GET = do_PUT = _handle

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield receiver
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete model directory with a random-init tiny encoder (training/tiny.py), built
    once per session (a few seconds; needs the train extra). Predictions are meaningless."""
    pytest.importorskip("torch")
    from training.tiny import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model") / "model")
