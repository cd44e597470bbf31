"""The role registry: every role ``finsent run``, ``finsent worker`` and ``finsent demo``
start, imported at the top. A broken install (a missing dependency of any role) fails at
start-up with its ImportError instead of quietly running without alerts or health checks.

A role is anything with ``name``, ``run(stop)`` and ``ready()`` (``pipeline.roles``)."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from alerts.service import AlertService
from consumers.scorer import Scorer
from consumers.trends import Trends
from finsent.console.pages import console_routes
from pipeline.embedded import port_answers
from pipeline.http_server import HttpServer
from pipeline.producers.base import DocumentProducer
from pipeline.producers.http_ingest import HttpIngest
from pipeline.producers.rss import RssRole
from pipeline.roles import Stage
from pipeline.settings import Settings

log = logging.getLogger(__name__)

#: The stream workers, in data-flow order; ``finsent worker`` runs one of them.
WORKER_ROLES = ("scorer", "trends")


def stream_role(name: str, settings: Settings, services: Any) -> Scorer | Trends:
    """The scorer or trends role on ``services``' broker and database. On the embedded
    broker (log in memory) it drains its input Kafka topic when stopped, since whatever
    it leaves there is lost with the process; on Apache Kafka it stops after the batch in
    hand and the rest waits in the durable log."""
    drain = getattr(services, "broker", None) is not None
    if name == "scorer":
        return Scorer(settings, services.bootstrap, services.engine, drain=drain)
    if name == "trends":
        return Trends(settings, services.bootstrap, services.engine, drain=drain)
    raise ValueError(f"unknown role {name!r}: choose one of {', '.join(WORKER_ROLES)}")


def producer_roles(settings: Settings, services: Any) -> list[RssRole]:
    """The producers configuration asks for: an RSS poller when ``FINSENT_FEEDS__URLS``
    lists feeds (HTTP ingest is part of the HTTP role)."""
    if not settings.feeds.urls:
        return []
    return [RssRole(settings, services.bootstrap, services.engine)]


def alert_roles(settings: Settings, services: Any) -> list[AlertService]:
    """The alert service on the process's engine, or nothing when no rules are configured
    (the stream runs without alerts, and says so in one WARNING). A bad rules file raises
    RuleError: it stops the daemon at start-up rather than being skipped."""
    if settings.rules is None:
        log.warning("FINSENT_RULES is not set: running without alerts (see examples/rules.yaml)")
        return []
    return [AlertService(settings, engine=services.engine)]


def http_role(
    settings: Settings,
    services: Any,
    *,
    daemon: Any = None,
    ingest: bool = True,
    console: bool = True,
) -> HttpServer:
    """The HTTP server of ``finsent run`` / ``finsent worker``, as a role (not started).

    Health checks: ``roles`` (liveness: no role crashed, from ``daemon.alive()``),
    ``roles_ready`` (readiness: ``daemon.ready()``), ``database`` and ``kafka`` (readiness).
    With ``ingest`` the server also takes ``POST /v1/documents`` and ``/v1/labels`` through
    its own producer, closed when the server stops. With a database and ``console`` it
    also serves the web console (``/``, ``/keys/…``, ``/alerts``; behind the token when one
    is set) and ``POST /v1/labels`` for its label buttons.

    The port is taken here, in the caller's thread: a busy FINSENT_HTTP_PORT is a
    ConfigurationError (one line, exit 2) before any role or producer starts.
    """
    server = HttpServer.from_settings(settings).bind()
    # Taking documents in is the first stage of the data flow: at shutdown it stops first,
    # so nothing arrives after the scorer stopped. Health and metrics alone stop last.
    server.stage = Stage.INGEST if ingest else Stage.DOWNSTREAM
    if daemon is not None:
        server.add_health_check("roles", daemon.alive, kind="liveness")
        server.add_health_check("roles_ready", daemon.ready, kind="readiness")
    engine = getattr(services, "engine", None)
    if engine is not None:

        def database() -> bool:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            return True

        server.add_health_check("database", database)
    bootstrap = getattr(services, "bootstrap", "") or ""
    if bootstrap:
        first = bootstrap.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        server.add_health_check("kafka", lambda: port_answers(host, int(port), timeout=1.0))
    if ingest and bootstrap:
        producer = DocumentProducer.from_settings(settings, bootstrap, stage="ingest:http")
        HttpIngest(settings, producer, engine).install(server)
        server.on_stop(producer.close)
    elif engine is not None and console:
        HttpIngest(settings, None, engine).install_labels(server)
    if engine is not None and console:
        server.add_routes(console_routes(engine, settings), auth=True)
    return server
