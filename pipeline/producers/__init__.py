"""Producers: sources of documents (file replay, RSS/Atom feeds, HTTP ingest) and the
``DocumentProducer`` that puts them on Kafka. See ``base.py`` for the shared interface."""

from __future__ import annotations

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

__all__ = [
    "DocumentProducer",
    "IncomingDocument",
    "IterableSource",
    "ProduceCounts",
    "Rejected",
    "Source",
    "parse_event_time",
    "produce_documents",
    "run_source",
]
