"""Resolve and start the services a finsent process needs: the Kafka broker (configured or
embedded) and PostgreSQL (configured, local or embedded), migrated to the code's schema.

One log line says which broker and which database are in use; the embedded broker's line
warns that it keeps its log in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from pipeline import db
from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics
from pipeline.errors import BrokerError
from pipeline.kafka_io import bootstrap_unreachable
from pipeline.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_BROKER_WARNING = (
    "embedded Kafka broker (tansu) keeps its log in memory: a restart loses unconsumed "
    "records and committed offsets; set FINSENT_KAFKA_BOOTSTRAP for durable deployments"
)


@dataclass
class Services:
    """The broker and database of one finsent process. Close it to stop what it started."""

    settings: Settings
    bootstrap: str
    database_url: str = field(repr=False)  # holds the password; show it via redact_url
    engine: Engine
    broker: EmbeddedBroker | None = None
    descriptions: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        self.engine.dispose()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_kafka(bootstrap: str) -> None:
    """BrokerError (one line, exit 2) unless a server of the configured ``bootstrap``
    accepts TCP connections: checked before any Kafka client exists, so a wrong
    FINSENT_KAFKA_BOOTSTRAP fails in seconds instead of logging a reconnect error per
    attempt until the clients' timeouts run out."""
    reason = bootstrap_unreachable(bootstrap)
    if reason is not None:
        raise BrokerError(
            f"cannot reach the Kafka broker at {bootstrap} (FINSENT_KAFKA_BOOTSTRAP or "
            f"--kafka-bootstrap): {reason}. Start the broker there, or point "
            "FINSENT_KAFKA_BOOTSTRAP at a running one (unset it to use the embedded broker "
            "of 'finsent run' / 'finsent demo')"
        )


def start_services(
    settings: Settings,
    *,
    migrate: bool = True,
    kafka: bool = True,
    database_line: str | None = None,
) -> Services:
    """Start or connect to the broker and database; create Kafka topics; migrate.
    ``database_line`` replaces the start-up line's description of the database (the demo
    names its own database in words)."""
    if kafka and settings.kafka_bootstrap:
        require_kafka(settings.kafka_bootstrap)
    url = db.database_url(settings)
    db_line = database_line or db.database_description(settings)
    if migrate:
        db.upgrade(url)
    broker: EmbeddedBroker | None = None
    bootstrap = settings.kafka_bootstrap or ""
    broker_line = "none (not needed by this command)"
    if kafka:
        if settings.kafka_bootstrap:
            broker_line = f"Kafka at {settings.kafka_bootstrap} (FINSENT_KAFKA_BOOTSTRAP)"
        else:
            broker = EmbeddedBroker().start()
            bootstrap = broker.bootstrap
            broker_line = f"embedded tansu on {bootstrap}; {EMBEDDED_BROKER_WARNING}"
        ensure_kafka_topics(bootstrap, settings.kafka_topics, settings.kafka_partitions)
    log.info("broker: %s | database: %s", broker_line, db_line)
    if broker is not None:
        log.warning(EMBEDDED_BROKER_WARNING)
    return Services(
        settings=settings,
        bootstrap=bootstrap,
        database_url=url,
        engine=db.make_engine(url),
        broker=broker,
        descriptions={"broker": broker_line, "database": db_line},
    )
