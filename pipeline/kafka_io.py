"""Kafka clients configured the one way finsent uses them.

Producers are idempotent-safe for our purposes (acks=all, retries, keyed records);
consumers use manual commits (``enable_auto_commit=False``): a worker commits offsets only
after what it read is stored and forwarded, so a crash redelivers rather than loses.
Timeouts come from ``Settings.kafka`` (short in tests and the demo: the embedded broker's
group join waits about session_timeout_ms / 2).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka import codec as codecs
from kafka.errors import Cancelled

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings


class CancelledRefreshFilter(logging.Filter):
    """Demotes kafka-python's ``Metadata refresh: failed Cancelled`` from ERROR to DEBUG.

    kafka-python cancels an in-flight metadata request when a client closes, then logs
    that at ERROR level; every clean shutdown (the demo's included) printed an alarming
    line for what is expected. Any other metadata failure keeps its level."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.levelno >= logging.ERROR and args and isinstance(args[0], Cancelled):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_CLUSTER_LOG = logging.getLogger("kafka.cluster")
if not any(isinstance(f, CancelledRefreshFilter) for f in _CLUSTER_LOG.filters):
    _CLUSTER_LOG.addFilter(CancelledRefreshFilter())


def bootstrap_unreachable(bootstrap: str, timeout_s: float = 3.0) -> str | None:
    """Why no server of ``bootstrap`` (``host:port[,host:port...]``) accepts a TCP
    connection, or None when one does. A plain TCP probe, before any Kafka client: a
    kafka-python client on a closed port logs an error line per reconnect attempt for as
    long as its timeouts run, instead of failing once. ``timeout_s`` bounds the whole probe.

    >>> bootstrap_unreachable("no-port-here")
    "'no-port-here' is not host:port"
    """
    deadline = time.monotonic() + timeout_s
    reasons = []
    for server in (part.strip() for part in bootstrap.split(",")):
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            reasons.append(f"{server!r} is not host:port")
            continue
        try:
            with socket.create_connection(
                (host.strip("[]"), int(port)), timeout=max(0.2, deadline - time.monotonic())
            ):
                return None
        except OSError as exc:
            reasons.append(f"{server}: {exc.strerror or exc}")
    return "; ".join(reasons) or "no server given"


def make_producer(settings: Settings, bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A producer for finsent records (bytes in, bytes out; callers encode)."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "acks": "all",
        "retries": 10,
        "linger_ms": 10,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 1,
        "request_timeout_ms": settings.kafka.request_timeout_ms,
        "compression_type": None
        if settings.kafka_compression == "none"
        else settings.kafka_compression,
    }
    config.update(overrides)
    codec = config["compression_type"]
    if codec is not None and not _codec_installed(codec):
        raise ConfigurationError(
            f"FINSENT_KAFKA_COMPRESSION={codec} needs its Python library, which is not installed "
            f"(pip install {_CODEC_PACKAGES.get(codec, codec)}); or choose lz4 or none"
        )
    return KafkaProducer(**config)


#: The package kafka-python needs for each codec it does not have built in.
_CODEC_PACKAGES = {"snappy": "python-snappy", "zstd": "zstandard", "lz4": "lz4"}


def _codec_installed(codec: str) -> bool:
    checks = {
        "gzip": codecs.has_gzip,
        "snappy": codecs.has_snappy,
        "lz4": codecs.has_lz4,
        "zstd": codecs.has_zstd,
    }
    return bool(checks.get(codec, lambda: False)())


def make_consumer(
    settings: Settings,
    bootstrap: str,
    group_id: str,
    kafka_topics: Iterable[str],
    *,
    listener: ConsumerRebalanceListener | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A consumer in ``group_id`` subscribed to ``kafka_topics`` with manual commits;
    ``listener`` hears of partitions revoked and assigned (subscribing once: a second
    ``subscribe`` to add a listener logs a warning). With static membership
    (``Settings.kafka_static_membership``) it joins as ``Settings.group_instance_id()``."""
    t = settings.kafka
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": t.session_timeout_ms,
        "heartbeat_interval_ms": t.heartbeat_interval_ms,
        "max_poll_interval_ms": t.max_poll_interval_ms,
        "request_timeout_ms": max(t.request_timeout_ms, t.session_timeout_ms + 5000),
        "max_poll_records": settings.batch.max_size,
        "group_instance_id": settings.group_instance_id(),
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    consumer.subscribe(list(kafka_topics), listener=listener)
    return consumer
