"""HTTP ingest, /healthz and /metrics over real TCP, producing to the real broker, labels
into the real PostgreSQL."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from finsent.roles import http_role
from pipeline.entities import Watchlist
from pipeline.http_server import HttpServer
from pipeline.producers.base import DocumentProducer
from pipeline.producers.http_ingest import build_http_server
from pipeline.settings import Settings
from tests.pipeline.test_producers import read_topic

MAX_BODY = 2 * 1024 * 1024
GOOD = {
    "text": "Boeing cuts its delivery outlook",
    "title": "Boeing outlook",
    "id": "w-1",
    "published_at": "2024-05-01T12:00:00Z",
    "source": "wire",
}


@dataclass
class Ingest:
    server: HttpServer
    settings: Settings
    client: httpx.Client

    def post(
        self,
        body: object = None,
        *,
        raw: bytes | None = None,
        path: str = "/v1/documents",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        content = raw if raw is not None else json.dumps(body).encode()
        return self.client.post(
            path, content=content, headers={"Content-Type": "application/json", **(headers or {})}
        )

    def documents(self) -> list[dict]:
        return [
            v
            for _, v in read_topic(
                self.settings.kafka_bootstrap or "", self.settings.kafka_topic_documents
            )
        ]


def _start(settings: Settings, engine: sa.engine.Engine, **update: object) -> Iterator[Ingest]:
    s = settings.model_copy(update={"http_max_body_bytes": MAX_BODY, **update})
    producer = DocumentProducer(
        s,
        s.kafka_bootstrap or "",
        stage="ingest:http",
        watchlist=Watchlist.from_mapping({"BA": ["Boeing"]}),
    )
    server = build_http_server(s, producer, engine).start()
    client = httpx.Client(base_url=server.url, timeout=20)
    try:
        yield Ingest(server, s, client)
    finally:
        client.close()
        server.stop()
        producer.close()


@pytest.fixture
def ingest(settings: Settings, engine: sa.engine.Engine) -> Iterator[Ingest]:
    yield from _start(settings, engine)


@pytest.fixture
def secured(settings: Settings, engine: sa.engine.Engine) -> Iterator[Ingest]:
    yield from _start(settings, engine, http_token="s3cret-token")


def test_one_document_a_list_or_a_documents_object_are_accepted_with_their_ids(
    ingest: Ingest,
) -> None:
    one = ingest.post(GOOD)
    assert one.status_code == 202, one.text
    assert one.json()["accepted"] == 1 and one.json()["entities"] == {one.json()["ids"][0]: ["BA"]}
    many = ingest.post([{**GOOD, "id": "w-2"}, {"text": "Quiet markets", "kind": "social"}])
    wrapped = ingest.post({"documents": [{**GOOD, "id": "w-3"}]})
    assert many.status_code == 202 and wrapped.status_code == 202
    ids = one.json()["ids"] + many.json()["ids"] + wrapped.json()["ids"]
    docs = {d["id"]: d for d in ingest.documents()}
    assert set(docs) == set(ids) and len(ids) == 4
    first = docs[one.json()["ids"][0]]
    assert first["source"] == "wire" and first["published_at"] == "2024-05-01T12:00:00Z"
    assert (
        docs[many.json()["ids"][1]]["source"] == "http"
    )  # default source; published_at defaults to now
    assert docs[many.json()["ids"][1]]["kind"] == "social"


def test_posting_the_same_item_again_returns_the_same_id(ingest: Ingest) -> None:
    first, again = (
        ingest.post(GOOD),
        ingest.post({**GOOD, "text": "Boeing cuts its delivery outlook (updated)"}),
    )
    assert first.json()["ids"] == again.json()["ids"]


def test_a_batch_with_one_bad_item_is_a_400_naming_each_field_and_nothing_is_sent(
    ingest: Ingest,
) -> None:
    response = ingest.post(
        {"documents": [GOOD, {"text": 5, "published_at": "soon"}, "nope", {"text": "   "}]}
    )
    assert response.status_code == 400
    fields = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert "valid string" in fields["documents[1].text"]
    assert "unrecognised time" in fields["documents[1].published_at"]
    assert "must be a JSON object" in fields["documents[2]"]
    assert "empty" in fields["documents[3]"]
    assert "nothing was accepted" in response.json()["error"]
    single = ingest.post({"txt": "typo"})
    assert {e["field"] for e in single.json()["errors"]} == {"text", "txt"}
    listed = ingest.post([GOOD, {"text": None}])
    assert [e["field"] for e in listed.json()["errors"]] == ["[1].text"]
    assert ingest.documents() == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "body is empty"),
        (b"{not json", "body is not JSON"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8"),
        (b"[]", "no documents"),
        (b"42", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b'{"documents": 5}', "invalid body"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_unusable_bodies_are_400_with_the_reason(ingest: Ingest, raw: bytes, message: str) -> None:
    response = ingest.post(raw=raw)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_hostile_but_valid_documents_are_cleaned_and_accepted(ingest: Ingest) -> None:
    response = ingest.post(
        [
            {"text": "x" * 1_000_000},  # 1 MB text: capped
            {
                "text": "Boeing\u0000 <script>alert(1)</script> &lt;b&gt;",
                "author": "a\u0000b",
            },  # NUL, HTML
            {"text": "lone surrogate \ud800 here"},
        ]
    )
    assert response.status_code == 202, response.text
    docs = {d["id"]: d for d in ingest.documents()}
    texts = sorted(docs[i]["text"] for i in response.json()["ids"])
    assert len(texts[-1]) == 20_000
    assert "Boeing alert(1)" in texts[0] and "\x00" not in json.dumps(list(docs.values()))


def test_bodies_over_the_limit_are_413_before_being_read(ingest: Ingest) -> None:
    response = ingest.post(raw=b'{"text": "' + b"x" * (MAX_BODY + 10) + b'"}')
    assert response.status_code == 413
    assert "FINSENT_HTTP_MAX_BODY_BYTES" in response.json()["error"]
    # A much larger declared body is refused from the header alone, without sending it.
    with socket.create_connection(("127.0.0.1", ingest.server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/documents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999999\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
    assert ingest.post(GOOD).status_code == 202  # the server is fine


def test_non_json_content_types_are_415_and_missing_length_is_411(ingest: Ingest) -> None:
    response = ingest.client.post(
        "/v1/documents", content=json.dumps(GOOD), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    assert (
        ingest.client.post("/v1/documents", content=b"x").status_code == 415
    )  # no content type at all
    ok = ingest.client.post(
        "/v1/documents",
        content=json.dumps(GOOD),
        headers={"Content-Type": "application/vnd.finsent+json; charset=utf-8"},
    )
    assert ok.status_code == 202
    with socket.create_connection(("127.0.0.1", ingest.server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/documents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 411")


def test_bearer_token_is_required_when_configured(secured: Ingest) -> None:
    assert secured.post(GOOD).status_code == 401
    assert secured.post(GOOD, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert (
        secured.post(GOOD, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"}).status_code == 401
    )
    unauthorised = secured.post(GOOD, headers={"Authorization": "Bearer"})
    assert unauthorised.status_code == 401 and unauthorised.headers["WWW-Authenticate"].startswith(
        "Bearer"
    )
    assert "FINSENT_HTTP_TOKEN" in unauthorised.json()["error"]
    assert secured.post(GOOD, headers={"Authorization": "Bearer s3cret-token"}).status_code == 202
    # auth comes before the size check: an anonymous client learns nothing else
    big = secured.post(raw=b"x" * (MAX_BODY + 1))
    assert big.status_code == 401
    assert secured.client.get("/healthz").status_code == 200
    assert secured.client.get("/metrics").status_code == 200


def test_unknown_routes_are_404_and_wrong_methods_405(ingest: Ingest) -> None:
    assert ingest.client.get("/v1/nothing").status_code == 404
    wrong = ingest.client.get("/v1/documents")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"


def test_healthz_reports_each_check_and_answers_503_when_one_fails(
    ingest: Ingest, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = ingest.client.get("/healthz")
    assert healthy.status_code == 200 and healthy.json()["ready"] is True
    state = {"db": True}
    ingest.server.add_health_check("database", lambda: state["db"])
    ingest.server.add_health_check("kafka", ingest.server.ready)
    assert ingest.client.get("/healthz").json()["checks"]["database"]["ok"] is True
    state["db"] = False
    sick = ingest.client.get("/healthz")
    assert sick.status_code == 503 and sick.json()["checks"]["database"]["ok"] is False
    assert sick.json()["live"] is True and sick.json()["ready"] is False
    assert ingest.client.get("/healthz/live").status_code == 200
    assert ingest.client.get("/healthz/ready").status_code == 503

    def broken() -> bool:
        raise RuntimeError("worker thread died")

    ingest.server.add_health_check("roles", broken, kind="liveness")
    with caplog.at_level("WARNING", logger="pipeline.http_server"):
        dead = ingest.client.get("/healthz/live")
    assert dead.status_code == 503 and dead.json()["checks"]["roles"]["status"] == "unavailable"
    assert "worker thread died" not in dead.text  # the detail is for the server log only
    assert "health check roles failing: RuntimeError: worker thread died" in caplog.text


def test_healthz_does_not_echo_database_errors_to_callers(caplog: pytest.LogCaptureFixture) -> None:
    from pipeline import db
    from pipeline.embedded import free_port
    from pipeline.settings import load_settings

    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://finsent:hunter2@127.0.0.1:{port}/finsent"
    engine = db.make_engine(url)
    server = http_role(
        load_settings(http_port=0), SimpleNamespace(engine=engine, bootstrap=""), ingest=False
    )
    try:
        with (
            server,
            httpx.Client(base_url=server.url, timeout=10) as client,
            caplog.at_level("DEBUG", logger="pipeline.http_server"),
        ):
            answers = [client.get(path) for path in ("/healthz", "/healthz/ready", "/healthz")]
    finally:
        engine.dispose()
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json()["checks"] == {
            "database": {"kind": "readiness", "ok": False, "status": "unavailable"}
        }
        for leak in (str(port), "127.0.0.1", "hunter2", "psycopg", "refused", "OperationalError"):
            assert leak not in answer.text, leak
    # the operator still learns why, once, in the server log (repeats at DEBUG)
    warnings = [
        r
        for r in caplog.records
        if r.levelname == "WARNING" and "health check database" in r.message
    ]
    assert len(warnings) == 1 and "refused" in warnings[0].message
    assert "hunter2" not in caplog.text


def test_metrics_count_ingested_documents(ingest: Ingest) -> None:
    def ingested() -> float:
        text = ingest.client.get("/metrics").text
        for line in text.splitlines():
            if line.startswith('finsent_documents_ingested_total{source="http"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = ingested()
    assert ingest.post([GOOD, {**GOOD, "id": "w-9"}]).status_code == 202
    response = ingest.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert ingested() == before + 2
    assert "finsent_feed_polls_total" in response.text


def test_labels_are_stored_for_known_documents(ingest: Ingest, engine: sa.engine.Engine) -> None:
    pytest.importorskip(
        "pipeline.labels", reason="pipeline.labels (retraining) is not in this build"
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into documents (id, source, published_at, text) "
                "values ('doc-1', 'test', now(), 'Boeing falls')"
            )
        )
    ok = ingest.post(
        {"document_id": "doc-1", "sentiment": "bearish", "labelled_by": "analyst"},
        path="/v1/labels",
    )
    assert ok.status_code == 201, ok.text
    assert ingest.post({"document_id": "doc-1", "topic": 3}, path="/v1/labels").status_code == 201
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("select sentiment, topic_id, labelled_by from labels order by id")
        ).all()
    assert [tuple(r) for r in rows] == [("bearish", None, "analyst"), (None, 3, "http")]
    assert (
        ingest.post({"document_id": "nope", "sentiment": "bearish"}, path="/v1/labels").status_code
        == 404
    )
    bad = ingest.post({"document_id": "doc-1", "sentiment": "furious"}, path="/v1/labels")
    assert bad.status_code == 400 and "furious" in bad.json()["error"]
    assert ingest.post({"document_id": "doc-1"}, path="/v1/labels").status_code == 400
    typed = ingest.post({"document_id": 5, "topic": "x"}, path="/v1/labels")
    assert typed.status_code == 400 and {e["field"] for e in typed.json()["errors"]} == {
        "document_id",
        "topic",
    }


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=10,
)
DOCS = st.dictionaries(
    st.sampled_from(["text", "title", "published_at", "id", "url", "kind", "entities", "x"]),
    JSON | st.text(max_size=60),
    max_size=6,
)
BODIES = st.one_of(
    JSON, DOCS, st.lists(DOCS, max_size=4), st.fixed_dictionaries({"documents": st.lists(DOCS)})
)


@hyp_settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=BODIES)
def test_any_json_body_gets_202_or_a_400_with_reasons_never_a_crash(
    ingest: Ingest, body: object
) -> None:
    response = ingest.post(body)
    assert response.status_code in (202, 400), response.text
    payload = response.json()
    if response.status_code == 202:
        assert payload["accepted"] == len(payload["ids"]) > 0
    else:
        assert payload["error"]


@hyp_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=200))
def test_any_bytes_get_an_answer_never_a_crash(ingest: Ingest, raw: bytes) -> None:
    assert ingest.post(raw=raw).status_code in (202, 400)


def test_daemon_http_role_serves_health_of_roles_database_and_kafka(
    settings: Settings, engine: sa.engine.Engine
) -> None:
    class Daemon:
        def __init__(self) -> None:
            self.ok = True

        def alive(self) -> bool:
            return self.ok

        def ready(self) -> bool:
            return True

    daemon = Daemon()
    services = SimpleNamespace(bootstrap=settings.kafka_bootstrap, engine=engine)
    role = http_role(settings, services, daemon=daemon, ingest=True)
    stop = threading.Event()
    thread = threading.Thread(target=role.run, args=(stop,))
    thread.start()
    try:
        for _ in range(50):
            if role.ready():
                break
            stop.wait(0.05)
        with httpx.Client(base_url=role.url, timeout=10) as client:
            health = client.get("/healthz")
            assert health.status_code == 200, health.text
            assert set(health.json()["checks"]) == {"roles", "roles_ready", "database", "kafka"}
            assert client.post("/v1/documents", json=GOOD).status_code == 202
            daemon.ok = False
            assert client.get("/healthz/live").status_code == 503
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)) == 1


def test_ingest_http_command_serves_until_sigterm_and_exits_0(settings: Settings, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    watchlist = tmp_path / "w.yaml"
    watchlist.write_text("BA: [Boeing]\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env.update(
        {
            "FINSENT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
            "FINSENT_DATABASE_URL": settings.database_url or "",
            "FINSENT_KAFKA_TOPIC_DOCUMENTS": settings.kafka_topic_documents,
            "FINSENT_KAFKA_TOPIC_DLQ": settings.kafka_topic_dlq,
            "FINSENT_KAFKA_TOPIC_SCORED": settings.kafka_topic_scored,
            "FINSENT_HTTP_TOKEN": "tok",
        }
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finsent.cli",
            "ingest",
            "http",
            "--port",
            "0",
            "--watchlist",
            str(watchlist),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("HTTP ingest on http://"), line
        url = line.split()[3].rstrip(":")
        with httpx.Client(base_url=url, timeout=10) as client:
            deadline = time.monotonic() + 10
            while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get("/healthz").json()["checks"].keys() == {"kafka", "database"}
            accepted = client.post(
                "/v1/documents", json=GOOD, headers={"Authorization": "Bearer tok"}
            )
            assert accepted.status_code == 202 and accepted.json()["entities"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)) == 1
