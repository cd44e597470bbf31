"""``finsent demo``: embedded broker and database, the shipped sample stream replayed
through scorer and trends, a summary, and what the demo rules raise over it."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from alerts.backtest import run_backtest
from alerts.rules import load_rules
from consumers.progress import GroupProgress
from finsent.daemon import Daemon
from finsent.roles import WORKER_ROLES, stream_role
from finsent.services import start_services
from pipeline.entities import load_watchlist
from pipeline.errors import FinsentError, InputError, ModelError
from pipeline.inference import read_manifest
from pipeline.producers.base import incoming_from_mapping, produce_documents
from pipeline.settings import KafkaTimeouts, Settings

#: The demo's assets ship inside the package (a wheel carries them as package data).
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "demo"
SAMPLE_STREAM = SAMPLE_DIR / "stream.jsonl"
SAMPLE_WATCHLIST = SAMPLE_DIR / "watchlist.yaml"
SAMPLE_RULES = SAMPLE_DIR / "rules.yaml"
#: Consumer-group timing for one-process runs (demo): the embedded broker's group join
#: waits about session_timeout_ms / 2 (see the broker notes).
QUICK_KAFKA = KafkaTimeouts(
    session_timeout_ms=2000,
    heartbeat_interval_ms=600,
    max_poll_interval_ms=10_000,
    request_timeout_ms=10_000,
    poll_timeout_ms=200,
)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="embedded everything, a sample stream, a summary")
    p.add_argument(
        "--sample",
        type=Path,
        default=None,
        help=f"JSONL stream to replay (default: {SAMPLE_STREAM.name})",
    )
    p.add_argument("--timeout", type=float, default=110.0, help="give up after this many seconds")
    p.set_defaults(func=demo)


def demo(args: argparse.Namespace, settings: Settings) -> int:
    """Replay the sample stream through every role on embedded services; print a summary."""
    return run_demo(settings, sample=args.sample, timeout_s=args.timeout)


def demo_settings(settings: Settings) -> Settings:
    """The demo's settings: an embedded broker with quick group timing, the sample
    watchlist and rules unless the user set their own."""
    # Dynamic membership: at a 2 s session a static member's first join takes ~6 s on
    # tansu, a dynamic one's ~1 s; the demo never restarts a worker.
    update: dict[str, Any] = {
        "kafka_bootstrap": None,
        "kafka": QUICK_KAFKA,
        "model_poll_s": 2.0,
        "kafka_static_membership": False,
    }
    if settings.watchlist is None:
        update["watchlist"] = SAMPLE_WATCHLIST
    if settings.rules is None and SAMPLE_RULES.is_file():
        # The sample is history: evaluate the rules on the data clock, as a replay would.
        update.update({"rules": SAMPLE_RULES, "alert_clock": "data", "alert_interval_s": 300.0})
    return settings.model_copy(update=update)


def wait_processed(
    bootstrap: str,
    settings: Settings,
    *,
    produced: int,
    timeout_s: float,
    stop: threading.Event | None = None,
) -> bool:
    """Until the scorer has committed every document and trends every scored record."""
    deadline = time.monotonic() + timeout_s
    with GroupProgress(bootstrap) as progress:
        if not progress.wait_caught_up(
            settings.group_id("scorer"),
            settings.kafka_topic_documents,
            min_records=produced,
            timeout_s=max(0.0, deadline - time.monotonic()),
        ):
            return False
        return progress.wait_caught_up(
            settings.group_id("trends"),
            settings.kafka_topic_scored,
            timeout_s=max(0.0, deadline - time.monotonic()),
        )


def load_sample(path: Path) -> list[Any]:
    """The sample stream's documents (JSONL rows in the ingest shape: text, title,
    published_at, id, url, ...). A bad row is an error: the file ships with finsent."""
    documents = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                incoming = incoming_from_mapping(json.loads(line))
                documents.append(incoming.to_document(source=incoming.source or "sample"))
            except (ValueError, InputError) as exc:
                raise InputError(f"{path} line {number}: {exc}") from None
    return documents


def run_demo(
    settings: Settings, *, sample: Path | None = None, timeout_s: float = 110.0, out: Any = None
) -> int:
    """Replay ``sample`` through scorer and trends on embedded services, wait until
    everything is applied, print what happened, the alerts the demo rules raise over the
    sample's event time and the SQL to dig further."""
    out = out or sys.stdout
    started = time.monotonic()
    settings = demo_settings(settings)
    try:
        read_manifest(settings.model_dir)
    except ModelError as exc:
        raise ModelError(
            f"{exc}. The demo needs a model: the shipped one lives in finsent/model/, or set "
            "FINSENT_MODEL_DIR to a model directory"
        ) from None
    documents = load_sample(sample or SAMPLE_STREAM)
    ids = [d.id for d in documents]
    with start_services(settings) as services:
        roles = [stream_role(name, settings, services) for name in WORKER_ROLES]
        daemon = Daemon(
            roles, shutdown_grace_s=settings.shutdown_grace_s, durable_log=services.broker is None
        )
        runner = threading.Thread(target=daemon.run, kwargs={"install_signals": False}, daemon=True)
        runner.start()
        try:
            sent = produce_documents(
                settings,
                services.bootstrap,
                documents,
                watchlist=load_watchlist(settings.watchlist),
                stage="ingest:demo",
            )
            print(
                f"replayed {sent} documents of {sample or SAMPLE_STREAM} into {services.bootstrap}",
                file=out,
            )
            remaining = timeout_s - (time.monotonic() - started)
            done = wait_processed(
                services.bootstrap, settings, produced=sent, timeout_s=max(1.0, remaining)
            )
            if daemon.failed:
                raise FinsentError(f"a role failed: {daemon.failed}; see the log above")
            if not done:
                raise FinsentError(
                    f"the demo did not finish within {timeout_s:.0f}s (a loaded machine?); "
                    "run it again with --timeout 300"
                )
        finally:
            daemon.stop.set()
            runner.join(timeout=settings.shutdown_grace_s)
        print_summary(services.engine, ids, time.monotonic() - started, out)
        print_sample_alerts(services.engine, settings, documents, out)
        print(SUMMARY_SQL, file=out)
    return 0


def print_sample_alerts(engine: Any, settings: Settings, documents: list[Any], out: Any) -> None:
    """What the alert rules raise over the sample's event-time span (the alert engine's
    backtest: the same evaluator the live service runs, stored nowhere, notifying no one)."""
    if settings.rules is None:
        return
    start = min(d.published_at for d in documents)
    end = max(d.published_at for d in documents) + timedelta(hours=1)
    result = run_backtest(engine, load_rules(settings.rules, settings), start, end, 300.0)
    print(
        f"\nalerts the rules ({settings.rules.name}) raise over the sample, in event time:",
        file=out,
    )
    if not result.fired:
        print("  none", file=out)
    for episode in result.fired:
        resolved = f", resolved {episode.resolved_at:%Y-%m-%d %H:%M}" if episode.resolved_at else ""
        print(
            f"  {episode.rule_name} on {episode.key}: firing {episode.fired_at:%Y-%m-%d %H:%M}{resolved} "
            f"(value {episode.value:.2f})"
            if episode.value is not None
            else f"  {episode.rule_name} on {episode.key}: firing {episode.fired_at:%Y-%m-%d %H:%M}{resolved}",
            file=out,
        )


def print_summary(engine: Any, ids: list[str], elapsed_s: float, out: Any) -> None:
    with engine.connect() as conn:
        scored = conn.execute(
            sa.text(
                "SELECT count(DISTINCT document_id) FROM predictions WHERE document_id = ANY(:ids)"
            ),
            {"ids": ids},
        ).scalar()
        versions = conn.execute(
            sa.text(
                "SELECT string_agg(DISTINCT model_version, ', ') FROM predictions WHERE document_id = ANY(:ids)"
            ),
            {"ids": ids},
        ).scalar()
        sentiment = conn.execute(
            sa.text(
                "SELECT sentiment, count(*) FROM latest_predictions WHERE document_id = ANY(:ids) GROUP BY 1 ORDER BY 1"
            ),
            {"ids": ids},
        ).all()
        keys = conn.execute(
            sa.text(
                "SELECT k.key, k.doc_count, k.negative_count, k.expected_negative_rate, k.surge_score "
                "FROM key_state k WHERE k.key IN (SELECT DISTINCT key FROM applied_documents WHERE document_id = ANY(:ids)) "
                "AND k.doc_count >= 3 ORDER BY k.surge_score DESC NULLS LAST, k.key LIMIT 8"
            ),
            {"ids": ids},
        ).all()
        has_alerts = conn.execute(sa.text("SELECT to_regclass('alerts') IS NOT NULL")).scalar()
        alerts = (
            conn.execute(
                sa.text(
                    "SELECT rule_name, key, state, severity, value FROM alerts "
                    "WHERE key IN (SELECT DISTINCT key FROM applied_documents WHERE document_id = ANY(:ids)) "
                    "ORDER BY created_at DESC LIMIT 10"
                ),
                {"ids": ids},
            ).all()
            if has_alerts
            else []
        )
    print(
        f"\ndocuments scored: {scored} of {len(ids)} (model {versions}) in {elapsed_s:.1f}s",
        file=out,
    )
    print("sentiment: " + ", ".join(f"{s} {n}" for s, n in sentiment), file=out)
    print("\ntop negative keys (by the memory's surge score):", file=out)
    print(f"  {'key':34} {'docs':>5} {'negative':>9} {'exp. neg. rate':>15} {'surge':>7}", file=out)
    for row in keys:
        share = row.negative_count / row.doc_count if row.doc_count else 0.0
        print(
            f"  {row.key[:34]:34} {row.doc_count:5d} {share:9.0%} {row.expected_negative_rate or 0:15.3f} "
            f"{row.surge_score or 0:7.2f}",
            file=out,
        )
    if alerts:
        print("\nalerts in the alerts table for these keys:", file=out)
        for a in alerts:
            print(
                f"  [{a.state}] {a.rule_name} on {a.key} ({a.severity}, value {a.value})", file=out
            )


SUMMARY_SQL = """
look further (psql, pandas, Grafana) with SQL such as:
  -- hourly sentiment of a watched ticker
  SELECT * FROM entity_sentiment_hourly WHERE entity = 'NVLX' ORDER BY hour;
  -- how a key's memory moved, document by document
  SELECT event_at, sentiment, expected_negative_rate, surge_score FROM trend_points
   WHERE key = 'entity:NVLX' ORDER BY order_at, document_id;
  -- every key's current memory
  SELECT key, doc_count, negative_count, expected_negative_rate, surge_score FROM key_state ORDER BY surge_score DESC;
  -- open alerts
  SELECT * FROM open_alerts;"""
