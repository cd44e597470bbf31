"""``finsent demo``: embedded broker, a database of its own, the shipped sample stream
replayed through scorer and trends, a summary, and what the demo rules raise over it.

The demo never touches live data: it writes into its own database (``finsent_demo``) on
the server ``finsent run`` would use (configured, local or embedded), dropped and recreated
on every run, and says so. ``--serve`` keeps the HTTP role up on that database afterwards.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from alerts.backtest import run_backtest
from alerts.lifecycle import Episode
from alerts.rules import SpikeRule, ThresholdRule, format_duration, load_rules
from consumers.progress import GroupProgress
from finsent.daemon import Daemon, tune_interpreter
from finsent.roles import WORKER_ROLES, stream_role
from finsent.services import start_services
from pipeline import db
from pipeline.entities import load_watchlist
from pipeline.errors import ConfigurationError, DatabaseError, FinsentError, InputError, ModelError
from pipeline.inference import read_manifest
from pipeline.producers.base import incoming_from_mapping, produce_documents
from pipeline.settings import KafkaTimeouts, Settings

#: the demo's own database, on the server ``finsent run`` uses; dropped and recreated per run
DEMO_DATABASE = "finsent_demo"
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
    p.add_argument(
        "--serve",
        action="store_true",
        help="after the summary, keep the HTTP server (health, metrics, console) up on the "
        "demo database until Ctrl-C (port: FINSENT_HTTP_PORT)",
    )
    p.set_defaults(func=demo)


def demo(args: argparse.Namespace, settings: Settings) -> int:
    """Replay the sample stream through every role on embedded services; print a summary."""
    return run_demo(settings, sample=args.sample, timeout_s=args.timeout, serve=args.serve)


@dataclass(frozen=True)
class DemoDatabase:
    """Where the demo writes: ``name`` on the server of the live database ``live_url``.
    ``server`` says in words which server that is."""

    url: str = ""
    name: str = DEMO_DATABASE
    live_url: str = ""
    server: str = ""

    @property
    def live_name(self) -> str:
        return sa.engine.make_url(self.live_url).database or "?"

    def description(self) -> str:
        """One line for people: which database, on which server, and that it is separate."""
        return (
            f"{self.name} on {self.server}, the demo's own database, dropped and recreated on "
            f"every run (the live database {self.live_name} is not touched)"
        )

    def psql(self) -> str:
        """A ready-to-paste psql command for the demo database (never the password)."""
        url = sa.engine.make_url(self.url)
        socket_dir = url.query.get("host")
        host = url.host or (socket_dir if isinstance(socket_dir, str) else None)
        parts = ["psql"]
        if host:
            parts += ["-h", host]
        if url.port:
            parts += ["-p", str(url.port)]
        if url.username:
            parts += ["-U", url.username]
        parts += ["-d", self.name]
        line = shlex.join(parts)
        return line + ("  # it asks for the password (or set PGPASSWORD)" if url.password else "")


def demo_database(settings: Settings, name: str = DEMO_DATABASE) -> DemoDatabase:
    """The demo's database next to the one ``finsent run`` would use (FINSENT_DATABASE_URL,
    else the local server, else the embedded pgserver: ``pipeline.db.resolve``)."""
    live_url, how = db.resolve(settings)
    live = sa.engine.make_url(live_url)
    if live.database == name:
        raise ConfigurationError(
            f"FINSENT_DATABASE_URL names the database {name}, which 'finsent demo' drops and "
            "recreates for itself; point FINSENT_DATABASE_URL at your live database"
        )
    if how.startswith("configured"):
        where = f"{live.host}:{live.port or 5432}" if live.host else "its socket"
        server = f"the server of FINSENT_DATABASE_URL ({where})"
    elif how.startswith("local server"):
        server = f"the local PostgreSQL server on {live.host}:{live.port or 5432}"
    else:
        server = how.replace("embedded PostgreSQL", "the embedded PostgreSQL", 1)
    url = live.set(database=name).render_as_string(hide_password=False)
    return DemoDatabase(url=url, name=name, live_url=live_url, server=server)


def recreate_database(target: DemoDatabase) -> None:
    """Drop the demo database (with its connections) and create it empty. The statements
    run on the live database's connection, which they never change."""
    engine = sa.create_engine(
        target.live_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    quoted = '"' + target.name.replace('"', '""') + '"'
    try:
        with db.connection_errors(target.live_url), engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    except sa.exc.DBAPIError as exc:
        raise DatabaseError(
            f"the demo writes into a database of its own, {target.name} on {target.server}, "
            f"and could not recreate it: {db.driver_reason(exc)}; grant this user CREATEDB, or "
            "point FINSENT_DATABASE_URL at a server where it may create databases"
        ) from exc
    finally:
        engine.dispose()


def demo_settings(settings: Settings, database: DemoDatabase | None = None) -> Settings:
    """The demo's settings: an embedded broker with quick group timing, the demo's own
    database, the sample watchlist and rules unless the user set their own."""
    # Dynamic membership: at a 2 s session a static member's first join takes ~6 s on
    # tansu, a dynamic one's ~1 s; the demo never restarts a worker.
    update: dict[str, Any] = {
        "kafka_bootstrap": None,
        "database_url": database.url if database else settings.database_url,
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
    settings: Settings,
    *,
    sample: Path | None = None,
    timeout_s: float = 110.0,
    out: Any = None,
    serve: bool = False,
    serve_stop: threading.Event | None = None,
    database_name: str = DEMO_DATABASE,
) -> int:
    """Replay ``sample`` through scorer and trends on an embedded broker and the demo's own
    database (``database_name``, recreated), wait until everything is applied, print what
    happened, the alerts the demo rules raise over the sample's event time, SQL to dig
    further and the psql line for that database. With ``serve`` the HTTP role then stays up
    until Ctrl-C (or ``serve_stop`` is set)."""
    out = out or sys.stdout
    started = time.monotonic()
    try:
        read_manifest(settings.model_dir)
    except ModelError as exc:
        raise ModelError(
            f"{exc}. The demo needs a model: the shipped one lives in finsent/model/, or set "
            "FINSENT_MODEL_DIR to a model directory"
        ) from None
    documents = load_sample(sample or SAMPLE_STREAM)
    ids = [d.id for d in documents]
    target = demo_database(settings, database_name)
    settings = demo_settings(settings, target)
    recreate_database(target)
    print(f"database: {target.description()}", file=out, flush=True)
    tune_interpreter(settings)
    with start_services(settings, database_line=target.description()) as services:
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
                f"replayed {sent} documents of {sample or SAMPLE_STREAM} into the embedded broker "
                f"on {services.bootstrap}",
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
        top = print_summary(services.engine, ids, time.monotonic() - started, out)
        print_sample_alerts(services.engine, settings, documents, out)
        sql_key = top or busiest_key(services.engine)
        if sql_key:
            print("\nlook further (psql, pandas, Grafana) with SQL such as:", file=out)
            for comment, statement in suggested_sql(sql_key):
                print(f"  -- {comment}\n  {statement}", file=out)
        print(f"\nopen the demo database ({target.name}) with:\n  {target.psql()}", file=out)
        if serve:
            serve_demo(settings, services, out, serve_stop or threading.Event())
    return 0


def serve_demo(settings: Settings, services: Any, out: Any, stop: threading.Event) -> None:
    """The daemon's HTTP role (no ingest) on the demo's services, with the web console's
    routes, until Ctrl-C or ``stop``."""
    from finsent.roles import http_role

    server = http_role(settings, services, ingest=False)
    server.start()
    try:
        print(
            f"\nthe console on the demo database: {server.url}/ (also GET /healthz, GET /metrics); "
            "Ctrl-C to stop",
            file=out,
            flush=True,
        )
        stop.wait()
    except KeyboardInterrupt:
        print("stopped", file=out)
    finally:
        server.stop()


def print_sample_alerts(engine: Any, settings: Settings, documents: list[Any], out: Any) -> None:
    """What the alert rules raise over the sample's event-time span (the alert engine's
    backtest: the same evaluator the live service runs, stored nowhere, notifying no one)."""
    if settings.rules is None:
        return
    start = min(d.published_at for d in documents)
    end = max(d.published_at for d in documents) + timedelta(hours=1)
    ruleset = load_rules(settings.rules, settings)
    result = run_backtest(engine, ruleset, start, end, 300.0)
    print(
        f"\nalerts the rules ({settings.rules.name}) raise over the sample, in event time:",
        file=out,
    )
    if not result.fired:
        print("  none", file=out)
    rules = {rule.name: rule for rule in ruleset.rules}
    for episode in result.fired:
        line = f"  {episode.rule_name} on {episode.key}: firing {episode.fired_at:%Y-%m-%d %H:%M}"
        if episode.resolved_at is None:
            last = f" (value {episode.value:.2f})" if episode.value is not None else ""
            line += f", still firing at the end of the sample{last}"
        else:
            line += f"; resolved {episode.resolved_at:%Y-%m-%d %H:%M}: " + why_resolved(
                rules.get(episode.rule_name), episode
            )
        print(line, file=out)


#: the condition under which ``op`` no longer holds (what "calm" means for a level)
_NOT = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}


def why_resolved(rule: Any, episode: Episode) -> str:
    """Why a fired episode resolved, in words, from the figures it resolved on (the
    evaluator's ``judge``: too little data counts as calm, else the resolve condition).

    Falls back to the last value when the rule is unknown."""
    value = episode.value
    last = f"last value {value:.2f}" if value is not None else "no value"
    if rule is None:
        return f"({last})"
    figures = episode.figures or {}
    documents = int(figures.get("documents") or 0)
    window = format_duration(rule.window)
    if documents < rule.select.min_volume:
        return (
            f"too few documents to judge ({documents} in the last {window}, the rule needs "
            f"{rule.select.min_volume}; {last})"
        )
    if isinstance(rule, SpikeRule):
        references = int(figures.get("reference_events") or 0)
        if value is None or references < rule.min_reference_count:
            return (
                f"too little history to compare with ({references} in the reference window, "
                f"the rule needs {rule.min_reference_count}; {last})"
            )
        level = rule.resolve.ratio if rule.resolve else rule.ratio
        relation = "<=" if rule.resolve else "<"
        return f"ratio to the reference {value:.2f}, {relation} the resolve level {level:g}"
    if value is None:
        return f"no value to judge ({last})"
    metric = rule.metric if isinstance(rule, ThresholdRule) else "surge_score"
    level = rule.resolve.value if rule.resolve else rule.value
    return f"{metric} {value:.2f} in the last {window}, {_NOT[rule.op]} the resolve level {level:g}"


def print_summary(engine: Any, ids: list[str], elapsed_s: float, out: Any) -> str | None:
    """Documents scored, sentiment counts, the keys whose surge score is above 0 and the
    most bearish headlines behind the first of them; returns that key (None: no key)."""
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
                "AND k.doc_count >= 3 AND k.surge_score > 0 ORDER BY k.surge_score DESC, k.key LIMIT 8"
            ),
            {"ids": ids},
        ).all()
        headlines = (
            conn.execute(
                sa.text(
                    "SELECT tp.event_at, tp.p_bearish, coalesce(d.title, left(d.text, 140)) AS title "
                    "FROM trend_points tp JOIN documents d ON d.id = tp.document_id "
                    "WHERE tp.key = :key AND tp.sentiment = 'bearish' AND tp.document_id = ANY(:ids) "
                    "ORDER BY tp.p_bearish DESC, tp.event_at DESC, tp.document_id LIMIT 3"
                ),
                {"key": keys[0].key, "ids": ids},
            ).all()
            if keys
            else []
        )
    print(
        f"\ndocuments scored: {scored} of {len(ids)} (model {versions}) in {elapsed_s:.1f}s",
        file=out,
    )
    print("sentiment: " + ", ".join(f"{s} {n}" for s, n in sentiment), file=out)
    print("\ntop negative keys (surge score above 0, highest first):", file=out)
    if not keys:
        print("  none: no key's memory puts it in a negative surge", file=out)
        return None
    print(f"  {'key':34} {'docs':>5} {'negative':>9} {'exp. neg. rate':>15} {'surge':>7}", file=out)
    for row in keys:
        share = row.negative_count / row.doc_count if row.doc_count else 0.0
        print(
            f"  {row.key[:34]:34} {row.doc_count:5d} {share:9.0%} {row.expected_negative_rate or 0:15.3f} "
            f"{row.surge_score or 0:7.2f}",
            file=out,
        )
    print(
        "  docs: documents on the key; negative: the share of them scored bearish; exp. neg. "
        "rate: the bearish share the key's memory expects now; surge: the memory's log-odds "
        "that the key is in a negative surge (above 0: more likely than not)",
        file=out,
    )
    print(f"\nthe most bearish headlines behind {keys[0].key}:", file=out)
    if not headlines:
        print("  none scored bearish", file=out)
    for h in headlines:
        print(f"  {h.event_at:%Y-%m-%d %H:%M}  p(bearish) {h.p_bearish:.2f}  {h.title}", file=out)
    return str(keys[0].key)


def busiest_key(engine: Any) -> str | None:
    """The key with the most documents (what the suggested SQL shows when no key surges)."""
    with engine.connect() as conn:
        key = conn.execute(
            sa.text("SELECT key FROM key_state ORDER BY doc_count DESC, key LIMIT 1")
        ).scalar()
    return str(key) if key is not None else None


def suggested_sql(key: str) -> list[tuple[str, str]]:
    """(comment, statement) pairs for a reader to paste into psql; each returns rows on the
    demo's data for a ``key`` that has trend points."""
    literal = key.replace("'", "''")
    kind, _, name = key.partition(":")
    name = name.replace("'", "''")
    if kind == "entity":
        hourly = (
            f"hourly sentiment of {name}",
            f"SELECT * FROM entity_sentiment_hourly WHERE entity = '{name}' ORDER BY hour;",
        )
    else:
        hourly = (
            f"hourly sentiment of the topic {name}",
            f"SELECT * FROM topic_sentiment_hourly WHERE topic = '{name}' ORDER BY hour;",
        )
    return [
        hourly,
        (
            f"how the memory of {key} moved, document by document",
            "SELECT event_at, sentiment, expected_negative_rate, surge_score FROM trend_points "
            f"WHERE key = '{literal}' ORDER BY order_at, document_id;",
        ),
        (
            f"the documents that pushed {key} most towards bearish",
            "SELECT tp.event_at, round(tp.p_bearish::numeric, 2) AS p_bearish, d.title "
            "FROM trend_points tp JOIN documents d ON d.id = tp.document_id "
            f"WHERE tp.key = '{literal}' ORDER BY tp.p_bearish DESC LIMIT 10;",
        ),
        (
            "every key's current memory",
            "SELECT key, doc_count, negative_count, expected_negative_rate, surge_score "
            "FROM key_state ORDER BY surge_score DESC;",
        ),
    ]
