"""Producers: sources of documents (file replay, RSS/Atom feeds, HTTP ingest) and the
``DocumentProducer`` that puts them on Kafka. See ``base.py`` for the shared interface."""

from __future__ import annotations

from typing import Any

from pipeline.producers.base import (
    DocumentProducer,
    IncomingDocument,
    IterableSource,
    ProduceCounts,
    Rejected,
    Source,
    parse_event_time,
    produce_documents,
    run_source,
)
from pipeline.settings import Settings


def roles_from_settings(settings: Settings, services: Any) -> list[Any]:
    """The producer roles ``finsent run`` starts from configuration: an RSS poller when
    ``FINSENT_FEEDS__URLS`` lists feeds (HTTP ingest is the HTTP server's role)."""
    if not settings.feeds.urls:
        return []
    from pipeline.producers.rss import RssRole

    return [RssRole(settings, services.bootstrap, services.engine)]


__all__ = [
    "DocumentProducer",
    "IncomingDocument",
    "IterableSource",
    "ProduceCounts",
    "Rejected",
    "Source",
    "parse_event_time",
    "produce_documents",
    "roles_from_settings",
    "run_source",
]
