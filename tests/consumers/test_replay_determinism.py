"""Replaying one backfill file twice gives identical trend state and identical alerts,
however the workers walk the backlog (issue #11).

The file is a 60-day backlog of headlines on six tickers with two planted negative
episodes, written once per module. Every replay goes into a fresh database and fresh
4-partition Kafka topics through ``finsent ingest replay`` (the production producer), all
of it produced before any worker starts, so the real scorer and trends workers sweep a
backlog. The reference replay has one scorer with the trends worker running alongside; each
test replays the file again walked differently and compares, row for row, the predictions,
``key_state`` and ``trend_points``, checks that no trend point was applied beyond the
lateness horizon, and compares the alerts a backtest (``alerts.backtest.run_backtest``, the
daemon's lifecycle on the evaluation grid) raises over each replay's stored data.

The tiny test model is random-init and calls nearly everything bullish, so the episodes are
planted with the headlines *this model* scores lowest, and the rules watch what it does
move: mean sentiment (p_bullish - p_bearish) and the memory's surge score. The surge rule
reads the key's newest trend point in its canonical order, so it sees any difference in
the order the memory applied documents in.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from alerts.backtest import run_backtest
from alerts.evaluator import grid_instant
from alerts.rules import RuleSet, parse_rules
from consumers.progress import GroupProgress
from consumers.scorer import Scorer
from consumers.trends import Trends
from finsent.cli import main
from pipeline import db
from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics
from pipeline.inference import Classifier
from pipeline.settings import BatchPolicy, Settings, load_settings
from tests.conftest import TEST_KAFKA, create_database, drop_database
from tests.consumers.helpers import RoleThread, assert_exactly_once

TICKERS = ("NVLX", "BRWL", "CSTR", "HLXB", "QNTR", "MRVA")
START = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 60
PER_DAY = 40  # background documents per day of event time (2,400), plus the episodes' bursts
PARTITIONS = 4
#: (ticker, first day, days): the ticker's coverage turns to the headlines the model scores lowest.
EPISODES = (("BRWL", 18, 2), ("QNTR", 41, 2))
GRID_S = 3 * 3600.0
SOURCE = "backfill"
WAIT_S = 60.0

_TITLES = (
    "{t} shares {move} after {event}",
    "{t} {event}: stock {move}",
    "Analysts react as {t} {move}",
    "{t} {move} in early trading",
    "{event} sends {t} {move}",
)
_MOVES = (
    "jump",
    "slide",
    "plunge",
    "rally",
    "edge higher",
    "fall",
    "climb",
    "tumble",
    "hold steady",
    "sink",
)
_EVENTS = (
    "earnings beat",
    "weak guidance",
    "SEC probe",
    "record revenue",
    "dividend cut",
    "dividend raise",
    "product recall",
    "CEO exit",
    "buyback plan",
    "downgrade",
    "upgrade",
    "supply deal",
    "layoffs",
    "merger talks",
    "credit downgrade",
    "strong demand",
)
_BODIES = (
    "The company said {event} would weigh on the quarter.",
    "Traders pointed to {event} and heavy volume.",
    "{t} confirmed {event} in a filing on Tuesday.",
    "Volume was {n} times the daily average.",
    "Peers moved {move} in sympathy.",
    "The board will meet next week to discuss {event}.",
)


# --- the file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backfill:
    path: Path
    rows: int
    first: datetime
    last: datetime
    #: the mean-sentiment level between the model's grim and calm headlines
    grim_level: float
    calm_level: float


def _headlines(rng: random.Random, ticker: str, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        event, move = rng.choice(_EVENTS), rng.choice(_MOVES)
        title = rng.choice(_TITLES).format(t=f"${ticker}", move=move, event=event)
        body = rng.choice(_BODIES).format(t=ticker, event=event, n=rng.randint(2, 9), move=move)
        out.append((title, body))
    return out


def write_backfill(path: Path, model_dir: Path, settings: Settings, *, seed: int = 11) -> Backfill:
    """A CSV backlog (id, published_at, title, text, entities) in roughly event-time order:
    sorted by a time jittered by up to 6 h, as merged wire feeds come, so a key's documents
    arrive a little out of order even from one scorer (rewinds well inside the horizon).
    Deterministic for a seed and a model."""
    rng = random.Random(seed)
    classifier = Classifier.load(model_dir, settings)
    grim: dict[str, list[tuple[str, str]]] = {}
    calm: dict[str, list[tuple[str, str]]] = {}
    grim_scores: list[float] = []
    calm_scores: list[float] = []
    for ticker in TICKERS:
        pool = _headlines(rng, ticker, 120)
        preds = classifier.classify([f"{title}. {body}" for title, body in pool])
        scores = np.array([p.p_bullish - p.p_bearish for p in preds])
        low, high = np.quantile(scores, [0.2, 0.5])
        grim[ticker] = [h for h, v in zip(pool, scores, strict=True) if v <= low]
        calm[ticker] = [h for h, v in zip(pool, scores, strict=True) if v >= high]
        grim_scores += [float(v) for v in scores if v <= low]
        calm_scores += [float(v) for v in scores if v >= high]

    rows: list[tuple[datetime, dict[str, str]]] = []
    for i in range(DAYS * PER_DAY):
        at = START + timedelta(seconds=rng.randrange(DAYS * 86400))
        tickers = sorted(set(rng.sample(TICKERS, rng.choice((1, 1, 1, 2)))))
        day = (at - START).days
        episode = next(
            (t for t, first, days in EPISODES if first <= day < first + days and t in tickers), None
        )
        title, body = rng.choice(grim[episode] if episode else calm[tickers[0]])
        rows.append(
            (
                at,
                {
                    "id": f"bf-{i:05d}",
                    "published_at": at.isoformat(),
                    "title": title,
                    "text": body,
                    "entities": ";".join(tickers),
                },
            )
        )
    for ticker, first, days in EPISODES:  # the episode's burst of coverage
        for j in range(12 * days):
            at = START + timedelta(days=first, seconds=rng.randrange(days * 86400))
            title, body = rng.choice(grim[ticker])
            rows.append(
                (
                    at,
                    {
                        "id": f"ep-{ticker}-{j:03d}",
                        "published_at": at.isoformat(),
                        "title": title,
                        "text": body,
                        "entities": ticker,
                    },
                )
            )
    rows.sort(key=lambda r: r[0] + timedelta(hours=rng.uniform(-6, 6)))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "published_at", "title", "text", "entities"])
        writer.writeheader()
        writer.writerows(r for _, r in rows)
    times = [at for at, _ in rows]
    return Backfill(
        path,
        len(rows),
        min(times),
        max(times),
        float(np.mean(grim_scores)),
        float(np.mean(calm_scores)),
    )


def alert_rules(backfill: Backfill, reference_surge: list[float]) -> RuleSet:
    """A mean-sentiment rule for the planted episodes, and a memory-surge rule at the top
    2 % of the reference replay's surge scores (the random memory's scale is arbitrary;
    every replay is judged by the same rules)."""
    level = (backfill.grim_level + backfill.calm_level) / 2
    fire, calm = np.quantile(reference_surge, [0.98, 0.90])
    return parse_rules(
        {
            "rules": [
                {
                    "name": "grim-headlines",
                    "kind": "threshold",
                    "metric": "mean_sentiment",
                    "select": {"key_kind": "entity", "min_volume": 8},
                    "window": "1d",
                    "op": "<",
                    "value": level,
                    "resolve": {"value": (level + backfill.calm_level) / 2},
                    "for": "6h",
                    "notifiers": ["log"],
                },
                {
                    "name": "memory-surge",
                    "kind": "memory_surge",
                    "select": {"key_kind": "entity", "min_volume": 3},
                    "window": "1d",
                    "op": ">",
                    "value": float(fire),
                    "resolve": {"value": float(calm)},
                    "for": "3h",
                    "notifiers": ["log"],
                },
            ]
        },
        source="test_replay_determinism",
    )


# --- one replay --------------------------------------------------------------------------

KEY_STATE = (
    "key",
    "key_kind",
    "state",
    "last_event_at",
    "last_order_at",
    "last_document_id",
    "doc_count",
    "negative_count",
    "expected_negative_rate",
    "surge_score",
    "model_version",
)
TREND_POINTS = (
    "key",
    "document_id",
    "event_at",
    "order_at",
    "sentiment",
    "p_bearish",
    "p_neutral",
    "p_bullish",
    "topic_confidence",
    "doc_vector",
    "expected_negative_rate",
    "surge_score",
    "doc_count",
    "negative_count",
    "state",
    "model_version",
)
PREDICTIONS = (
    "document_id",
    "model_version",
    "topic",
    "topic_confidence",
    "sentiment",
    "p_bearish",
    "p_neutral",
    "p_bullish",
    "doc_vector",
)
#: Per entity key, how much older than one already scored a document was when it was
#: scored (the out-of-order distance the trends worker has to absorb).
SCORING_LATENESS = """
    SELECT coalesce(extract(epoch FROM max(newest - published_at)), 0) FROM (
      SELECT d.published_at, max(d.published_at) OVER (
               PARTITION BY e ORDER BY p.scored_at RANGE BETWEEN UNBOUNDED PRECEDING AND '1 microsecond' PRECEDING
             ) AS newest
      FROM predictions p JOIN documents d ON d.id = p.document_id, unnest(d.entities) AS e) x"""


def _select(table: str, columns: tuple[str, ...]) -> sa.TextClause:
    return sa.text(f"SELECT {', '.join(columns)} FROM {table}")


@dataclass
class Replay:
    """What one replay stored, read back; ``database_url`` stays until the module ends."""

    label: str
    database_url: str
    predictions: dict[str, tuple[Any, ...]]
    key_state: dict[str, tuple[Any, ...]]
    trend_points: dict[tuple[str, str], tuple[Any, ...]]
    batches: set[frozenset[str]]
    late_points: int
    late_warnings: int
    scoring_lateness_days: float

    def surge_scores(self) -> list[float]:
        surge = TREND_POINTS.index("surge_score")
        return [
            row[surge] for (key, _), row in self.trend_points.items() if key.startswith("entity:")
        ]

    def alerts(self, ruleset: RuleSet, backfill: Backfill) -> list[tuple[Any, ...]]:
        """Every episode the rules raise over this replay's stored data, as a backtest
        steps the live evaluation grid."""
        engine = db.make_engine(self.database_url)
        try:
            result = run_backtest(
                engine,
                ruleset,
                grid_instant(backfill.first, GRID_S),
                backfill.last + timedelta(days=1),
                GRID_S,
            )
        finally:
            engine.dispose()
        return [
            (e.rule_name, e.key, e.pending_since, e.fired_at, e.resolved_at, e.state)
            for e in result.episodes
        ]


class _Counter(logging.Handler):
    """Counts the log records that contain ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.WARNING)
        self.needle = needle
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.count += 1


@dataclass
class Replayer:
    """Replays the module's backfill file, each time into a fresh database and fresh topics."""

    base: Settings
    backfill: Backfill
    new_database: Callable[[], str]

    def __call__(
        self, label: str, *, scorers: int, trends_late: bool, batch: BatchPolicy | None = None
    ) -> Replay:
        """Produce the whole file through ``finsent ingest replay`` into fresh topics, then
        start ``scorers`` scorers in one group and the trends worker (alongside, or once
        the scorers have swept the backlog); wait until everything is scored and applied."""
        suffix = uuid.uuid4().hex[:8]
        s = self.base.model_copy(
            update={
                "database_url": self.new_database(),
                "kafka_partitions": PARTITIONS,
                "kafka_topic_documents": f"finsent.documents.{suffix}",
                "kafka_topic_scored": f"finsent.scored.{suffix}",
                "kafka_topic_dlq": f"finsent.dlq.{suffix}",
                "kafka_group_prefix": f"finsent-{suffix}",
                **({"batch": batch} if batch is not None else {}),
            }
        )
        bootstrap = s.kafka_bootstrap or ""
        ensure_kafka_topics(bootstrap, s.kafka_topics, partitions=PARTITIONS)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FINSENT_KAFKA_TOPIC_DOCUMENTS", s.kafka_topic_documents)
            env.setenv("FINSENT_KAFKA_TOPIC_SCORED", s.kafka_topic_scored)
            env.setenv("FINSENT_KAFKA_TOPIC_DLQ", s.kafka_topic_dlq)
            env.setenv("FINSENT_KAFKA_PARTITIONS", str(PARTITIONS))
            assert (
                main(
                    [
                        "--kafka-bootstrap",
                        bootstrap,
                        "ingest",
                        "replay",
                        str(self.backfill.path),
                        "--source",
                        SOURCE,
                    ]
                )
                == 0
            )
        trends_log = logging.getLogger("consumers.trends")
        counter = _Counter("beyond the lateness horizon")
        trends_log.addHandler(counter)
        engine = db.make_engine(s.database_url)
        workers: list[RoleThread] = []
        try:
            with GroupProgress(bootstrap) as progress:
                assert progress.total(s.kafka_topic_documents) == self.backfill.rows
                workers += [
                    RoleThread(Scorer(s, bootstrap, engine)).start() for _ in range(scorers)
                ]
                if not trends_late:
                    workers.append(RoleThread(Trends(s, bootstrap, engine)).start())
                assert progress.wait_caught_up(
                    s.group_id("scorer"),
                    s.kafka_topic_documents,
                    timeout_s=WAIT_S,
                    min_records=self.backfill.rows,
                ), f"{label}: the backlog was not scored"
                if trends_late:
                    workers.append(RoleThread(Trends(s, bootstrap, engine)).start())
                assert progress.wait_caught_up(
                    s.group_id("trends"), s.kafka_topic_scored, timeout_s=WAIT_S, min_records=1
                ), f"{label}: the scored records were not applied"
                assert progress.total(s.kafka_topic_dlq) == 0, (
                    f"{label}: records were dead-lettered"
                )
        finally:
            trends_log.removeHandler(counter)
            for worker in workers:
                worker.close()
        try:
            assert_exactly_once(engine, self.backfill.rows)
            with engine.connect() as conn:
                predictions = {
                    r[0]: tuple(r) for r in conn.execute(_select("predictions", PREDICTIONS))
                }
                key_state = {r[0]: tuple(r) for r in conn.execute(_select("key_state", KEY_STATE))}
                trend_points = {
                    (r[0], r[1]): tuple(r)
                    for r in conn.execute(_select("trend_points", TREND_POINTS))
                }
                batches = {
                    frozenset(ids)
                    for ids in conn.execute(
                        sa.text("SELECT array_agg(document_id) FROM predictions GROUP BY scored_at")
                    ).scalars()
                }
                late = int(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM trend_points WHERE order_at IS DISTINCT FROM event_at"
                        )
                    ).scalar_one()
                )
                lateness = float(conn.execute(sa.text(SCORING_LATENESS)).scalar_one())
        finally:
            engine.dispose()
        return Replay(
            label,
            s.database_url or "",
            predictions,
            key_state,
            trend_points,
            batches,
            late,
            counter.count,
            lateness / 86400,
        )


# --- fixtures (module: the file and the reference replay are shared) ---------------------------


@pytest.fixture(scope="module")
def replayer(
    kafka_broker: EmbeddedBroker,
    postgres_admin_url: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replayer]:
    tmp = tmp_path_factory.mktemp("replay_determinism")
    urls: list[str] = []

    def new_database() -> str:
        url = create_database(postgres_admin_url, prefix="finsent_replay")
        urls.append(url)
        db.upgrade(url)
        return url

    with pytest.MonkeyPatch.context() as env:  # no FINSENT_* of the developer's shell
        for name in [
            n for n in os.environ if n.startswith("FINSENT_") and n != "FINSENT_TEST_ADMIN_URL"
        ]:
            env.delenv(name)
        base = load_settings(
            kafka_bootstrap=kafka_broker.bootstrap,
            kafka=TEST_KAFKA,
            model_dir=tiny_model_dir,
            kafka_static_membership=False,
            model_registry_dir=tmp / "registry",
            embedded_pg_dir=tmp / "pg",
            http_port=0,
        )
        backfill = write_backfill(tmp / "backfill.csv", tiny_model_dir, base)
        try:
            yield Replayer(base, backfill, new_database)
        finally:
            for url in urls:
                drop_database(postgres_admin_url, url)


@pytest.fixture(scope="module")
def reference(replayer: Replayer) -> Replay:
    """One scorer sweeping all four partitions, the trends worker running alongside."""
    return replayer("one scorer", scorers=1, trends_late=False)


# --- the comparison ----------------------------------------------------------------------------


def _compare_rows(
    name: str,
    a: dict[Any, tuple[Any, ...]],
    b: dict[Any, tuple[Any, ...]],
    columns: tuple[str, ...],
) -> str | None:
    only = set(a) ^ set(b)
    differing = [k for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    if not only and not differing:
        return None
    worst: dict[str, float] = {}
    for k in differing:
        for col, u, v in zip(columns, a[k], b[k], strict=True):
            if u == v:
                continue
            try:
                d = float(
                    np.max(
                        np.abs(np.asarray(u, dtype=np.float64) - np.asarray(v, dtype=np.float64))
                    )
                )
            except (TypeError, ValueError):
                d = float("nan")
            worst[col] = max(worst.get(col, 0.0), d)
    first = f"; first: {differing[0]}" if differing else ""
    return (
        f"{name}: {len(differing)} of {len(set(a) & set(b))} rows differ, {len(only)} rows in one replay only; "
        f"largest difference per column { ({c: float(f'{d:.3g}') for c, d in worst.items()}) }{first}"
    )


def assert_same_outcome(reference: Replay, other: Replay, backfill: Backfill) -> None:
    # The two sweeps really were walked differently (else the comparison proves nothing).
    assert reference.batches != other.batches, "both replays scored the backlog in the same batches"
    problems = []
    for replay in (reference, other):
        if replay.late_points or replay.late_warnings:
            problems.append(
                f"{replay.label}: {replay.late_points} trend points applied beyond the lateness horizon "
                f"({replay.late_warnings} warnings); a key was handed a document {replay.scoring_lateness_days:.1f} "
                "days older than one already scored"
            )
    for name, a, b, columns in (
        ("predictions", reference.predictions, other.predictions, PREDICTIONS),
        ("key_state", reference.key_state, other.key_state, KEY_STATE),
        ("trend_points", reference.trend_points, other.trend_points, TREND_POINTS),
    ):
        problem = _compare_rows(name, a, b, columns)
        if problem:
            problems.append(problem)
    ruleset = alert_rules(backfill, reference.surge_scores())
    alerts, other_alerts = reference.alerts(ruleset, backfill), other.alerts(ruleset, backfill)
    fired = {(rule, key) for rule, key, _, fired_at, _, _ in alerts if fired_at is not None}
    # Not vacuous: both planted episodes fire, and so does the memory.
    assert {("grim-headlines", f"entity:{t}") for t, _, _ in EPISODES} <= fired, alerts
    assert any(rule == "memory-surge" for rule, _ in fired), alerts
    if alerts != other_alerts:
        problems.append(
            f"alerts: {len(alerts)} episodes against {len(other_alerts)}; only in {reference.label}: "
            f"{sorted(set(alerts) - set(other_alerts))[:4]}, only in {other.label}: "
            f"{sorted(set(other_alerts) - set(alerts))[:4]}"
        )
    assert not problems, f"{reference.label} vs {other.label}:\n" + "\n".join(problems)


def test_one_scorer_walking_the_backlog_differently_gives_identical_trend_state_and_alerts(
    replayer: Replayer, reference: Replay
) -> None:
    """Other batch boundaries in the scorer and the trends worker, and the trends worker
    starting on a complete scored backlog instead of following the scorer."""
    other = replayer(
        "one scorer, batches of 20, trends late",
        scorers=1,
        trends_late=True,
        batch=BatchPolicy(max_size=20, max_wait_ms=200),
    )
    assert_same_outcome(reference, other, replayer.backfill)


def test_three_scorers_sharing_the_backlog_give_the_trend_state_and_alerts_of_one(
    replayer: Replayer, reference: Replay
) -> None:
    """Three scorers in one group on four partitions: one member merges two partitions,
    the others one each, so each member sweeps its share of the backlog at its own pace in
    event time."""
    other = replayer("three scorers, trends late", scorers=3, trends_late=True)
    assert_same_outcome(reference, other, replayer.backfill)
