"""Prometheus metrics of every finsent role, in one registry served at ``/metrics``.

Names follow Prometheus conventions (``finsent_<thing>_<unit>``, ``_total`` for counters).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

DOCUMENTS_INGESTED = Counter(
    "finsent_documents_ingested_total",
    "documents produced to Kafka by producers",
    ["source"],
    registry=REGISTRY,
)
DOCUMENTS_SCORED = Counter(
    "finsent_documents_scored_total", "documents scored and stored by the scorer", registry=REGISTRY
)
BATCHES = Counter("finsent_batches_total", "micro-batches processed", ["role"], registry=REGISTRY)
BATCH_LATENCY = Histogram(
    "finsent_batch_latency_seconds",
    "time to process one micro-batch",
    ["role"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CONSUMER_LAG = Gauge(
    "finsent_consumer_lag_records",
    "records behind the end of the Kafka topic",
    ["role", "partition"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "finsent_dead_letters_total",
    "records sent to the dead-letter topic",
    ["stage"],
    registry=REGISTRY,
)
TREND_UPDATES = Counter(
    "finsent_trend_updates_total",
    "key memory updates applied (exactly once per key and document)",
    registry=REGISTRY,
)
ALERTS_FIRED = Counter(
    "finsent_alerts_fired_total", "alerts that went to firing", ["rule"], registry=REGISTRY
)
ALERTS_OPEN = Gauge("finsent_alerts_open", "alerts pending or firing", registry=REGISTRY)
DELIVERIES = Counter(
    "finsent_alert_deliveries_total",
    "alert delivery attempts by outcome",
    ["channel", "outcome"],
    registry=REGISTRY,
)
FEED_POLLS = Counter(
    "finsent_feed_polls_total",
    "RSS/Atom feed polls by outcome (new, not_modified, error)",
    ["outcome"],
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "finsent_model_loaded",
    "1 for the model version this process serves",
    ["version"],
    registry=REGISTRY,
)
