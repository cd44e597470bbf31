"""HTTP ingest: ``POST /v1/documents`` and ``POST /v1/labels``.

``POST /v1/documents`` takes one JSON document, a JSON list of them, or
``{"documents": [...]}`` (fields of ``IncomingDocument``: ``text`` required; ``title``,
``published_at`` (default: now), ``id``/``guid``, ``url``, ``source`` (default ``http``),
``kind``, ``author``, ``language``, ``entities``, ``time_precision``: one of second,
minute, hour, day; default ``day`` for a date-only ``published_at`` such as ``2024-05-01``,
else ``second``; with a coarser precision, send the start of the period as
``published_at``). A batch is all or nothing: when any item is invalid the answer is 400
with every bad field (``documents[3].text: ...``) and nothing is produced, so a client
can fix and resend the whole batch. Otherwise the documents are sent to Kafka and flushed
before the answer, 202 with their ids: a 202 means the documents are in Kafka. Ids are
stable (source + id/guid, else URL, else content), so a client retrying after a timeout or
a 503 creates no duplicates.

``POST /v1/labels`` takes ``{"document_id", "sentiment"?, "topic"? (topic id),
"labelled_by"?}`` and stores it with ``pipeline.labels.store_label``: 201 with the label
id, 400 for invalid values, 404 for a document finsent has not stored.

Both need ``Authorization: Bearer <FINSENT_HTTP_TOKEN>`` when that variable is set.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import Engine

from pipeline.errors import BrokerError, InputError
from pipeline.http_server import HttpServer, Request, Response, error
from pipeline.labels import store_label
from pipeline.producers.base import DocumentProducer, IncomingDocument, field_errors
from pipeline.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "http"
MAX_BATCH = 10_000
MAX_REPORTED_ERRORS = 100


def _parse_json(body: bytes) -> tuple[Any, Response | None]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, error(400, f"body is not valid UTF-8 (byte {exc.start}): send UTF-8 JSON")
    if not text.strip():
        return None, error(
            400, 'body is empty: send a JSON document, a list, or {"documents": [...]}'
        )
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, error(
            400, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        )
    except RecursionError:
        return None, error(400, "body is not acceptable JSON: nested too deeply")


class LabelRequest(BaseModel):
    """Body of ``POST /v1/labels``."""

    model_config = ConfigDict(extra="forbid")

    document_id: str = Field(min_length=1, max_length=200)
    sentiment: str | None = None
    topic: int | None = None
    topic_id: int | None = None
    labelled_by: str = Field("http", min_length=1, max_length=200)


class HttpIngest:
    """The ingest routes, bound to one ``DocumentProducer`` (and an engine for labels)."""

    def __init__(
        self, settings: Settings, producer: DocumentProducer | None, engine: Engine | None = None
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.engine = engine

    def install(self, server: HttpServer) -> None:
        """Both routes; needs a producer."""
        if self.producer is None:
            raise ValueError("POST /v1/documents needs a DocumentProducer")
        server.add_route("POST", "/v1/documents", self.post_documents, auth=True, json_body=True)
        self.install_labels(server)

    def install_labels(self, server: HttpServer) -> None:
        """``POST /v1/labels`` alone (the console's label buttons on a server that takes no
        documents, e.g. ``finsent worker`` or ``finsent demo --serve``)."""
        server.add_route("POST", "/v1/labels", self.post_labels, auth=True, json_body=True)

    # -- documents ------------------------------------------------------------------------------

    def post_documents(self, request: Request) -> Response:
        data, problem = _parse_json(request.body)
        if problem is not None:
            return problem
        if isinstance(data, dict) and "documents" in data and len(data) == 1:
            items, prefix = data["documents"], "documents"
            if not isinstance(items, list):
                return error(
                    400,
                    "invalid body",
                    errors=[{"field": "documents", "message": "must be a list"}],
                )
        elif isinstance(data, dict):
            items, prefix = [data], None
        elif isinstance(data, list):
            items, prefix = data, ""
        else:
            return error(
                400,
                "body must be a JSON object (one document), a list of them, "
                'or {"documents": [...]}',
            )
        if not items:
            return error(400, "no documents in the body")
        if len(items) > MAX_BATCH:
            return error(400, f"{len(items)} documents in one request; send at most {MAX_BATCH}")
        now = datetime.now(UTC)
        docs = []
        errors: list[dict[str, str]] = []
        for i, item in enumerate(items):
            where = "" if prefix is None else (f"documents[{i}]." if prefix else f"[{i}].")
            if not isinstance(item, dict):
                errors.append(
                    {
                        "field": where.rstrip(".") or "(body)",
                        "message": f"must be a JSON object, got {type(item).__name__}",
                    }
                )
                continue
            try:
                incoming = IncomingDocument.model_validate(item)
                docs.append(incoming.to_document(source=DEFAULT_SOURCE, default_time=now, now=now))
            except ValidationError as exc:
                errors.extend(field_errors(exc, where))
            except InputError as exc:
                errors.append({"field": where.rstrip(".") or "(body)", "message": str(exc)})
        if errors:
            return error(
                400,
                f"{len(errors)} invalid field(s); nothing was accepted",
                errors=errors[:MAX_REPORTED_ERRORS],
            )
        try:
            assert self.producer is not None  # install() refuses to serve documents without one
            sent = [self.producer.send(doc) for doc in docs]
            self.producer.flush(timeout_s=min(30.0, self.settings.kafka.request_timeout_ms / 1000))
        except BrokerError as exc:
            log.warning("HTTP ingest: %s", exc)
            return Response(
                503,
                {
                    "error": f"Kafka is unavailable: {exc}; retry later (ids are stable, "
                    "so retrying creates no duplicates)"
                },
                headers={"Retry-After": "5"},
            )
        return Response(
            202,
            {
                "accepted": len(sent),
                "ids": [d.id for d in sent],
                "entities": {d.id: list(d.entities) for d in sent if d.entities},
            },
        )

    # -- labels -----------------------------------------------------------------------------------

    def post_labels(self, request: Request) -> Response:
        if self.engine is None:
            return error(501, "this server has no database configured, so it cannot store labels")
        data, problem = _parse_json(request.body)
        if problem is not None:
            return problem
        if not isinstance(data, dict):
            return error(
                400, "body must be a JSON object {document_id, sentiment?, topic?, labelled_by?}"
            )
        try:
            label = LabelRequest.model_validate(data)
        except ValidationError as exc:
            return error(400, "invalid label", errors=field_errors(exc))
        if label.topic is not None and label.topic_id is not None and label.topic != label.topic_id:
            return error(
                400,
                "invalid label",
                errors=[{"field": "topic", "message": "topic and topic_id disagree"}],
            )
        topic_id = label.topic_id if label.topic_id is not None else label.topic
        try:
            with self.engine.begin() as conn:
                label_id = store_label(
                    conn,
                    label.document_id,
                    sentiment=label.sentiment,
                    topic_id=topic_id,
                    labelled_by=label.labelled_by,
                )
        except InputError as exc:
            status = 404 if "not in the database" in str(exc) else 400
            return error(status, str(exc))
        except Exception as exc:  # noqa: BLE001 - database down: tell the client to retry
            log.warning("HTTP labels: %s", exc)
            return Response(
                503,
                {"error": "the database is unavailable; retry later"},
                headers={"Retry-After": "5"},
            )
        return Response(201, {"label_id": label_id, "document_id": label.document_id})


def build_http_server(
    settings: Settings, producer: DocumentProducer, engine: Engine | None = None
) -> HttpServer:
    """An ``HttpServer`` from settings with the ingest routes installed (not started)."""
    server = HttpServer.from_settings(settings)
    HttpIngest(settings, producer, engine).install(server)
    return server
