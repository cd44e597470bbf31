"""Load benchmark of the HTTP server: the real ingest route on the embedded broker.

Each server runs in a child process of its own (``--serve``), so the clients here do not
share its interpreter, and its thread count is read from ``/proc/PID/status``. Measured in
one run, against each server:

1. **ingest**: 2,000 ``POST /v1/documents`` (one document each, unique ids) from 50
   concurrent clients (threads, one keep-alive httpx client each): accepted (202 with the
   expected id), other answers, connection errors (resets, refused, protocol errors),
   latency p50/p99, documents/s, and every accepted id read back from the Kafka topic;
2. **slow clients**: 200 connections that dribble a request's headers (one byte per
   connection every 0.5 s) while a fresh client probes ``/healthz`` every 0.1 s for
   ``--slow-seconds``: probe answers by status, probe latency, and what the slow clients
   got back; the server's peak thread count in both phases.

The servers: **stdlib**, the previous ``ThreadingHTTPServer`` (``pipeline/http_server.py``
at git revision ``STDLIB_REV``, the last one that served with it; ``--baseline-rev``) as
the baseline; **asgi** (uvicorn + Starlette) with the default settings
(FINSENT_HTTP_MAX_CONNECTIONS=1000, FINSENT_HTTP_READ_TIMEOUT_S=10); **asgi-200**, the same
with a connection cap only as large as the number of slow clients (they fill it: probes get
a quick 503 until the read timeout cuts them).

Results go to ``bench/results/http_load.json`` and ``.md``. Run: ``python bench/http_load.py``.
Uses the embedded broker and a throwaway database on the local PostgreSQL (or
FINSENT_DATABASE_URL's server), dropped at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import db  # noqa: E402
from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ADMIN_URL = os.environ.get(
    "FINSENT_BENCH_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SERVERS: dict[str, dict[str, Any]] = {
    "stdlib": {"server": "stdlib"},
    "asgi": {"server": "asgi"},
    "asgi-200": {"server": "asgi", "max_connections": 200},
}
CONNECTION_ERRORS = (httpx.TransportError,)


# -- the server side (child process) ----------------------------------------------------------


#: the last commit whose pipeline/http_server.py is the stdlib ThreadingHTTPServer
STDLIB_REV = "7edf179"


def _stdlib_server_class(rev: str = STDLIB_REV) -> Any:
    """``HttpServer`` of pipeline/http_server.py at ``rev``, when it is the stdlib one."""
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:pipeline/http_server.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    if "ThreadingHTTPServer" not in source:
        return None
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"finsent_stdlib_http_{os.getpid()}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("finsent_stdlib_http", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    path.unlink()
    return module.HttpServer


def _same_checks_as_http_role(server: Any, engine: sa.engine.Engine, bootstrap: str) -> None:
    """The health checks ``finsent.roles.http_role`` adds (database, kafka)."""
    from pipeline.embedded import port_answers

    def database() -> bool:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        return True

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    server.add_health_check("database", database)
    server.add_health_check("kafka", lambda: port_answers(host, int(port), timeout=1.0))


def serve(args: argparse.Namespace) -> int:
    """Child: the HTTP role with ingest on the given broker and database until SIGTERM."""
    from finsent.roles import http_role
    from pipeline.producers.base import DocumentProducer
    from pipeline.producers.http_ingest import HttpIngest

    update: dict[str, Any] = {"http_port": 0}
    if args.max_connections:
        update["http_max_connections"] = args.max_connections
    settings = load_settings(
        kafka_bootstrap=args.bootstrap,
        database_url=args.database_url,
        kafka_topic_documents=args.kafka_topic,
        **update,
    )
    engine = db.make_engine(args.database_url)
    services = SimpleNamespace(bootstrap=args.bootstrap, engine=engine)
    if args.server == "stdlib":
        cls = _stdlib_server_class()
        if cls is None:
            print("NO-BASELINE", flush=True)
            return 0
        server = cls.from_settings(settings)
        producer = DocumentProducer.from_settings(settings, args.bootstrap, stage="ingest:http")
        HttpIngest(settings, producer, engine).install(server)
        server.on_stop(producer.close)
        _same_checks_as_http_role(server, engine, args.bootstrap)
    else:
        server = http_role(settings, services, ingest=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"URL {server.url}", flush=True)
    stop.wait()
    server.stop()
    engine.dispose()
    return 0


# -- the client side -------------------------------------------------------------------------


def _threads(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class ThreadSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _threads(self.pid))

    def __enter__(self) -> ThreadSampler:
        self.peak = _threads(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ingest_phase(url: str, pid: int, run: str, requests: int, clients: int) -> dict[str, Any]:
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    accepted_ids: set[str] = set()
    expected: dict[str, str] = {}
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                doc = {
                    "id": f"{run}-{i:05d}",
                    "text": f"Boeing shares move after delivery update {i}",
                    "published_at": "2026-03-02T10:00:00Z",
                    "source": "bench",
                }
                started = time.perf_counter()
                try:
                    response = http.post("/v1/documents", json=doc)
                except CONNECTION_ERRORS as exc:
                    with lock:
                        outcomes[f"connection error: {type(exc).__name__}"] += 1
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if response.status_code == 202 and response.json().get("accepted") == 1:
                        (doc_id,) = response.json()["ids"]
                        accepted_ids.add(doc_id)
                        expected[doc["id"]] = doc_id
                        outcomes["202"] += 1
                    else:
                        outcomes[str(response.status_code)] += 1

    workers = [threading.Thread(target=client) for _ in range(clients)]
    with ThreadSampler(pid) as threads:
        started = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - started
    errors = sum(n for k, n in outcomes.items() if k.startswith("connection error"))
    return {
        "requests": requests,
        "clients": clients,
        "outcomes": dict(outcomes),
        "accepted": outcomes["202"],
        "connection_errors": errors,
        "failures": requests - outcomes["202"],
        "p50_ms": round(_pct(latencies, 0.50) * 1000, 1),
        "p99_ms": round(_pct(latencies, 0.99) * 1000, 1),
        "docs_per_s": round(outcomes["202"] / wall, 1),
        "wall_s": round(wall, 2),
        "max_threads": threads.peak,
        "_ids": accepted_ids,
    }


def slow_phase(url: str, pid: int, slow: int, seconds: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sockets: list[socket.socket] = []
    opened_errors = 0
    for _ in range(slow):
        try:
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")
            sock.setblocking(False)
            sockets.append(sock)
        except OSError:
            opened_errors += 1
    slow_answers: Counter[str] = Counter()
    stop = threading.Event()

    def dribble() -> None:
        live = list(sockets)
        while live and not stop.wait(0.5):
            for sock in list(live):
                try:
                    data = sock.recv(4096)
                    slow_answers[data.split(b" ", 2)[1].decode() if data else "closed"] += 1
                    live.remove(sock)
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    slow_answers["reset"] += 1
                    live.remove(sock)
                    continue
                try:
                    sock.send(b"X")
                except OSError:
                    slow_answers["reset"] += 1
                    live.remove(sock)

    dribbler = threading.Thread(target=dribble, daemon=True)
    probes: list[tuple[float, str, float]] = []  # (t, status, latency)
    with ThreadSampler(pid) as threads:
        dribbler.start()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t0 = time.perf_counter()
            try:
                status = str(httpx.get(f"{url}/healthz", timeout=5).status_code)
            except CONNECTION_ERRORS as exc:
                status = f"error: {type(exc).__name__}"
            probes.append((round(t0 - started, 2), status, time.perf_counter() - t0))
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))
        stop.set()
        dribbler.join(timeout=5)
    for sock in sockets:
        sock.close()
    by_status = Counter(status for _, status, _ in probes)
    first_200 = next((t for t, status, _ in probes if status == "200"), None)
    return {
        "slow_clients": slow,
        "slow_open_errors": opened_errors,
        "seconds": seconds,
        "probes": len(probes),
        "probe_statuses": dict(by_status),
        "probe_p50_ms": round(_pct([p[2] for p in probes], 0.5) * 1000, 1),
        "probe_max_ms": round(max(p[2] for p in probes) * 1000, 1),
        "first_200_after_s": first_200,
        "slow_clients_got": dict(slow_answers),
        "max_threads": threads.peak,
    }


def read_ids(bootstrap: str, kafka_topic: str) -> set[str]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(kafka_topic) or set()
        tps = [TopicPartition(kafka_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        ids: set[str] = set()
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                ids.update(json.loads(r.value)["id"] for r in records)
        return ids
    finally:
        consumer.close()


def bench_server(
    name: str, spec: dict[str, Any], bootstrap: str, database_url: str, args: argparse.Namespace
) -> dict[str, Any] | None:
    kafka_topic = f"bench.http.{name}.{uuid.uuid4().hex[:6]}"
    ensure_kafka_topics(bootstrap, [kafka_topic], 2)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        spec["server"],
        "--bootstrap",
        bootstrap,
        "--database-url",
        database_url,
        "--kafka-topic",
        kafka_topic,
        "--max-connections",
        str(spec.get("max_connections", 0)),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line == "NO-BASELINE" or not line.startswith("URL "):
            print(f"{name}: no server ({line or 'exited'})")
            return None
        url = line.split()[1]
        for _ in range(100):
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        idle_threads = _threads(proc.pid)
        run = f"{name}-{uuid.uuid4().hex[:6]}"
        print(f"{name}: ingest {args.requests} POSTs from {args.clients} clients ...", flush=True)
        ingest = ingest_phase(url, proc.pid, run, args.requests, args.clients)
        in_kafka = read_ids(bootstrap, kafka_topic)
        ids = ingest.pop("_ids")
        ingest["accepted_in_kafka"] = len(ids & in_kafka)
        ingest["accepted_missing_from_kafka"] = len(ids - in_kafka)
        print(f"{name}: {args.slow} slow clients for {args.slow_seconds:g} s ...", flush=True)
        slow = slow_phase(url, proc.pid, args.slow, args.slow_seconds)
        return {"idle_threads": idle_threads, "ingest": ingest, "slow": slow, "spec": spec}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _database(admin_url: str, *, create: bool = False, drop: str | None = None) -> str:
    """Create a throwaway database on ``admin_url``'s server (its URL), or drop ``drop``."""
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = (
        sa.engine.make_url(drop).database
        if drop
        else f"finsent_bench_http_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    )
    try:
        with engine.connect() as conn:
            if create:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            else:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()
    url = sa.engine.make_url(admin_url).set(database=name)
    return url.render_as_string(hide_password=False)


def _ratio(new: float, old: float) -> str:
    return f"{new / old:.2f}×" if old else "–"


def write_results(report: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http_load.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    servers = report["servers"]
    names = [n for n in SERVERS if servers.get(n)]
    lines = [
        "# HTTP load benchmark",
        "",
        f"{report['when']}, {report['cpus']} CPUs, Python {report['python']}. "
        f"Command: `python bench/http_load.py`. Real ingest route (`POST /v1/documents`, one "
        "document per request, flushed to the embedded tansu broker before the 202), each "
        "server in its own process.",
        "",
        f"## Ingest: {report['requests']} POSTs from {report['clients']} concurrent clients",
        "",
        "| server | accepted | in Kafka | failures | connection errors | p50 | p99 | docs/s | "
        "max threads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        i = servers[n]["ingest"]
        lines.append(
            f"| {n} | {i['accepted']} | {i['accepted_in_kafka']} | {i['failures']} | "
            f"{i['connection_errors']} | {i['p50_ms']} ms | {i['p99_ms']} ms | "
            f"{i['docs_per_s']} | {i['max_threads']} |"
        )
    lines += [
        "",
        f"## {report['slow']} slow clients (headers dribbled, 1 byte / 0.5 s) while probing "
        f"/healthz every 0.1 s for {report['slow_seconds']:g} s",
        "",
        "| server | /healthz probes by status | probe p50 | probe max | first 200 after | "
        "slow clients got | max threads |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        s = servers[n]["slow"]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(s["probe_statuses"].items()))
        got = ", ".join(f"{k}: {v}" for k, v in sorted(s["slow_clients_got"].items())) or "–"
        first = "never" if s["first_200_after_s"] is None else f"{s['first_200_after_s']} s"
        lines.append(
            f"| {n} | {statuses} | {s['probe_p50_ms']} ms | {s['probe_max_ms']} ms | {first} | "
            f"{got} | {s['max_threads']} |"
        )
    if "stdlib" in names and "asgi" in names:
        old, new = servers["stdlib"], servers["asgi"]
        lines += [
            "",
            "## asgi vs the stdlib baseline (same run)",
            "",
            f"- ingest throughput {_ratio(new['ingest']['docs_per_s'], old['ingest']['docs_per_s'])}, "
            f"p50 {_ratio(new['ingest']['p50_ms'], old['ingest']['p50_ms'])}, "
            f"p99 {_ratio(new['ingest']['p99_ms'], old['ingest']['p99_ms'])}",
            f"- peak threads under ingest {_ratio(new['ingest']['max_threads'], old['ingest']['max_threads'])}, "
            f"under slow clients {_ratio(new['slow']['max_threads'], old['slow']['max_threads'])}",
        ]
    lines += [
        "",
        "Reading it: `asgi` runs at the default FINSENT_HTTP_MAX_CONNECTIONS=1000: 200 slow "
        "connections leave room and /healthz answers 200 throughout, on a bounded thread pool. "
        "`asgi-200` has a cap only as large as the slow clients: they fill it and /healthz gets a "
        "fast 503 until FINSENT_HTTP_READ_TIMEOUT_S (10 s after their first byte) cuts them with "
        "a 408. The stdlib server gave every connection a thread. Machine: "
        "2 cores shared with other engineers' jobs; figures move by ±30 % between runs.",
        "",
    ]
    (RESULTS / "http_load.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=["stdlib", "asgi"], help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--kafka-topic", help=argparse.SUPPRESS)
    parser.add_argument("--max-connections", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--slow-seconds", type=float, default=14.0)
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated: " + ", ".join(SERVERS)
    )
    args = parser.parse_args()
    if args.serve:
        args.server = args.serve
        return serve(args)

    admin = os.environ.get("FINSENT_DATABASE_URL") or ADMIN_URL
    database_url = _database(admin, create=True)
    broker = EmbeddedBroker(log_path=Path(os.environ.get("TMPDIR", "/tmp")) / "bench_http.log")
    broker.start()
    try:
        db.upgrade(database_url)
        report: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "requests": args.requests,
            "clients": args.clients,
            "slow": args.slow,
            "slow_seconds": args.slow_seconds,
            "servers": {},
        }
        for name in args.servers.split(","):
            report["servers"][name] = bench_server(
                name, SERVERS[name], broker.bootstrap, database_url, args
            )
            print(json.dumps({name: report["servers"][name]}, indent=1), flush=True)
        report["load_average"] = os.getloadavg()
        write_results(report)
    finally:
        broker.stop()
        _database(admin, drop=database_url)
    print(f"wrote {RESULTS / 'http_load.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
