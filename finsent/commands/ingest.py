"""``finsent ingest replay FILE | rss URL... | http``: the producers as commands.

These run next to a Kafka cluster (``FINSENT_KAFKA_BOOTSTRAP``): a separate ingest process
cannot reach the in-memory broker that ``finsent run`` / ``finsent demo`` embed, so
without a configured bootstrap they stop with an error saying so. ``replay`` needs only
Kafka; ``rss`` also keeps its feed cursors in PostgreSQL; ``http`` uses PostgreSQL for
``POST /v1/labels``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("ingest", help="produce documents: rss URL… | replay FILE | http")
    isub = p.add_subparsers(dest="ingest_command", metavar="SOURCE", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--watchlist",
        type=Path,
        default=None,
        help="entity watchlist YAML (overrides FINSENT_WATCHLIST)",
    )

    r = isub.add_parser(
        "replay", parents=[common], help="replay a CSV/TSV/JSONL file (optionally .gz) to Kafka"
    )
    r.add_argument("file", type=Path)
    r.add_argument(
        "--format",
        choices=["csv", "tsv", "jsonl"],
        default=None,
        help="file format (default: from the file name)",
    )
    r.add_argument("--text-column", default=None, help="column with the text (default: text)")
    r.add_argument(
        "--time-column", default=None, help="column with the published time (default: published_at)"
    )
    r.add_argument("--id-column", default=None, help="column with the item's own id (default: id)")
    r.add_argument("--title-column", default=None, help="column with the title (default: title)")
    r.add_argument("--url-column", default=None, help="column with the URL (default: url)")
    r.add_argument(
        "--source",
        default=None,
        help="source name for every row (default: a 'source' column, "
        "else the file name without extensions); part of every document id",
    )
    r.add_argument(
        "--kind",
        choices=["news", "social"],
        default=None,
        help="kind where there is no 'kind' column",
    )
    r.add_argument(
        "--missing-time",
        choices=["reject", "now"],
        default=None,
        help="a row without a published time: dead-letter it (default) or stamp it now",
    )
    r.add_argument(
        "--time-precision",
        choices=["auto", "second", "minute", "hour", "day"],
        default=None,
        help="how precise the rows' times are (default: auto: a date-only value, or a file whose "
        "times are all midnight, is day; all on whole minutes is minute; else second). A day "
        "document's time is the start of its day",
    )
    r.add_argument(
        "--timezone",
        default=None,
        metavar="ZONE",
        help="IANA time zone of naive times and dates, e.g. America/New_York (default: UTC); "
        "times with an offset keep it",
    )
    r.add_argument(
        "--speed",
        type=float,
        default=None,
        help="replay at N times real time by event-time gaps (default: as fast as possible)",
    )
    r.set_defaults(func=replay)

    f = isub.add_parser(
        "rss", parents=[common], help="poll RSS/Atom feeds and produce their new entries"
    )
    f.add_argument("urls", nargs="*", help="feed URLs (default: FINSENT_FEEDS__URLS)")
    f.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between polls (default: FINSENT_FEEDS__INTERVAL_S)",
    )
    f.add_argument("--once", action="store_true", help="poll every feed once and exit")
    f.set_defaults(func=rss)

    h = isub.add_parser(
        "http", parents=[common], help="serve POST /v1/documents and /v1/labels, /healthz, /metrics"
    )
    h.add_argument("--host", default=None, help="overrides FINSENT_HTTP_HOST")
    h.add_argument("--port", type=int, default=None, help="overrides FINSENT_HTTP_PORT")
    h.set_defaults(func=http)


def _bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise ConfigurationError(
            "finsent ingest needs a Kafka cluster: set FINSENT_KAFKA_BOOTSTRAP (or --kafka-bootstrap). "
            "The embedded broker lives inside 'finsent run' and 'finsent demo', which ingest themselves "
            "(feeds from FINSENT_FEEDS__URLS, HTTP ingest on FINSENT_HTTP_PORT)"
        )
    from pipeline.embedded import ensure_kafka_topics

    ensure_kafka_topics(settings.kafka_bootstrap, settings.kafka_topics, settings.kafka_partitions)
    return settings.kafka_bootstrap


def _settings(args: argparse.Namespace, settings: Settings) -> Settings:
    if args.watchlist is not None:
        settings = settings.model_copy(update={"watchlist": args.watchlist})
    return settings


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM/SIGINT, so a long-running ingest finishes what it holds."""
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, _frame: Any) -> None:
        log.info("%s: finishing and exiting", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def replay(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.services import require_kafka
    from pipeline.documents import Document
    from pipeline.entities import load_watchlist
    from pipeline.producers.base import DocumentProducer
    from pipeline.producers.replay import ColumnMapping, replay_file

    ids: set[str] = set()

    class IdCountingProducer(DocumentProducer):
        """Remembers the ids it sent: rows with the same id are one document (the scorer
        stores it once), so the command reports documents, not Kafka records."""

        def send(self, doc: Document) -> Document:
            sent = super().send(doc)
            ids.add(sent.id)
            return sent

    mapping = {
        "text_column": args.text_column,
        "time_column": args.time_column,
        "id_column": args.id_column,
        "title_column": args.title_column,
        "url_column": args.url_column,
        "source": args.source,
        "kind": args.kind,
        "missing_time": args.missing_time,
        "time_precision": args.time_precision,
        "timezone": args.timezone,
    }
    ColumnMapping.from_options(**mapping)  # a bad --timezone fails here, before Kafka
    settings = _settings(args, settings)
    watchlist = load_watchlist(settings.watchlist)
    if settings.kafka_bootstrap:
        require_kafka(settings.kafka_bootstrap)  # one line, before any Kafka client retries
    bootstrap = _bootstrap(settings)
    with (
        _stop_on_signals() as stop,
        IdCountingProducer(
            settings, bootstrap, stage="ingest:replay", watchlist=watchlist
        ) as producer,
    ):
        report = replay_file(
            settings,
            bootstrap,
            args.file,
            speed=args.speed,
            fmt=args.format,
            stop=stop,
            producer=producer,
            **mapping,
        )
    documents = len(ids)
    collapsed = report.sent - documents
    rows = (
        f" ({report.sent} rows: {collapsed} repeated the id of an earlier row and collapsed "
        "into its document)"
        if collapsed
        else ""
    )
    print(
        f"sent {documents} document{'s' if documents != 1 else ''}{rows}, "
        f"dead-lettered {report.dead_lettered} ({report})"
    )
    if report.dead_lettered:
        print(
            f"dead-lettered rows are in Kafka topic {settings.kafka_topic_dlq} with their reasons"
        )
    return 0


def rss(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.services import start_services
    from pipeline.producers.base import DocumentProducer
    from pipeline.producers.rss import RssPoller

    settings = _settings(args, settings)
    urls = list(args.urls) or list(settings.feeds.urls)
    bootstrap = _bootstrap(settings)
    with (
        start_services(settings) as services,
        DocumentProducer.from_settings(settings, bootstrap, stage="ingest:rss") as producer,
    ):
        poller = RssPoller(settings, producer, services.engine, urls, interval_s=args.interval)
        try:
            if args.once:
                results = poller.poll_all()
                for r in results:
                    print(
                        f"{r.feed_url}: {r.outcome}, {r.sent} sent, {r.dead_lettered} dead-lettered"
                        + (f" ({r.error})" if r.error else "")
                    )
                return 1 if any(r.outcome == "error" for r in results) else 0
            with _stop_on_signals() as stop:
                poller.run(stop)
        finally:
            poller.close()
    return 0


def http(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.roles import http_role
    from finsent.services import start_services

    overrides = {
        k: v for k, v in (("http_host", args.host), ("http_port", args.port)) if v is not None
    }
    settings = _settings(args, settings).model_copy(update=overrides)
    _bootstrap(settings)
    with start_services(settings) as services:
        # A busy FINSENT_HTTP_PORT raises ConfigurationError here: one line, exit 2.
        server = http_role(settings, services, ingest=True)  # checks: database, kafka
        with _stop_on_signals() as stop:
            try:
                server.start()
                print(
                    f"HTTP ingest on {server.url}: POST /v1/documents, POST /v1/labels, GET /healthz, GET /metrics",
                    flush=True,
                )
                stop.wait()
            finally:
                server.stop()  # also closes the ingest producer
    return 0
