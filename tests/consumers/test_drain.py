"""Stopping on the embedded broker (log in memory) drains the stream in data-flow order,
and says exactly what it leaves behind when the grace is too short (issue #11)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from consumers.drain import DrainingStop
from consumers.scorer import Scorer
from consumers.trends import Trends
from finsent.daemon import Daemon
from pipeline.roles import StopRequest
from pipeline.settings import Settings
from tests.consumers.helpers import assert_exactly_once, count, make_documents, produce


@pytest.fixture
def stream_settings(settings: Settings, tiny_model_dir: Path) -> Settings:
    return settings.model_copy(update={"model_dir": tiny_model_dir})


def test_documents_produced_then_an_immediate_stop_are_all_scored_and_trended(
    stream_settings: Settings, engine: sa.engine.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    s = stream_settings
    produce(s, make_documents(300, seed=21))
    bootstrap = s.kafka_bootstrap or ""
    daemon = Daemon(
        [Trends(s, bootstrap, engine, drain=True), Scorer(s, bootstrap, engine, drain=True)],
        shutdown_grace_s=60.0,
        durable_log=False,
    )
    # Stopped before any role has even joined its consumer group: whatever ends up stored
    # is what the drain consumed after the stop.
    daemon.stop.set()
    with caplog.at_level(logging.INFO):
        assert daemon.run(install_signals=False) == 0
    assert_exactly_once(engine, 300)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[-1] == "every role stopped cleanly"
    drained = [m for m in messages if m.startswith(("scorer: drained", "trends: drained"))]
    assert [m.split(":")[0] for m in drained] == ["scorer", "trends"]  # data-flow order
    assert not [
        r for r in caplog.records if r.name == "consumers.drain" and r.levelno >= logging.WARNING
    ]


class HeldScorer(Scorer):
    """A scorer whose first batch is held until its drain has given up: the grace "runs
    out" whatever the machine's speed."""

    batches: list[int]

    def _loop(self, reader: Any, stop: DrainingStop) -> None:
        self.loop_stop = stop
        self.batches = []
        super()._loop(reader, stop)

    def prepare(self, records: list[Any]) -> Any:
        while not self.loop_stop.is_set():  # true once the drain's deadline has passed
            time.sleep(0.02)
        self.batches.append(len(records))
        return super().prepare(records)


def test_grace_too_short_logs_one_warning_naming_the_kafka_topic_and_the_records_left(
    stream_settings: Settings, engine: sa.engine.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    s = stream_settings
    produce(s, make_documents(200, seed=22))
    scorer = HeldScorer(s, s.kafka_bootstrap or "", engine, drain=True)
    daemon = Daemon([scorer], shutdown_grace_s=8.0, durable_log=False)
    daemon.stop.set()
    with caplog.at_level(logging.INFO):
        assert daemon.run(install_signals=False) == 1
    assert len(scorer.batches) == 1  # nothing after the drain gave up
    stored = count(engine, "SELECT count(*) FROM predictions")
    assert stored == scorer.batches[0] < 200
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "consumers.drain" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, warnings
    assert (
        f"{200 - stored} records of Kafka topic {s.kafka_topic_documents} were not consumed"
        in warnings[0]
    )
    assert "embedded broker keeps its log in memory" in warnings[0]
    assert scorer.left_behind == warnings[0]
    messages = [r.getMessage() for r in caplog.records]
    assert "every role stopped cleanly" not in messages
    assert "scorer left records unprocessed" in messages[-1]


def test_without_a_drain_the_loop_stop_is_the_role_stop() -> None:
    stop = StopRequest()
    view = DrainingStop(stop, role="scorer", kafka_topic="docs", enabled=False, grace_s=30.0)
    assert not view.is_set()
    stop.stop_by(time.monotonic() + 30.0)
    assert view.is_set()
    assert view.report() is None  # a durable log keeps what was not consumed


def test_a_drain_gives_up_at_its_deadline_less_a_margin_for_closing() -> None:
    stop = StopRequest()
    view = DrainingStop(stop, role="trends", kafka_topic="scored", enabled=True, grace_s=30.0)
    stop.stop_by(time.monotonic() + 0.4)
    assert not view.is_set()  # nothing attached yet: never drained, only the deadline ends it
    assert stop.deadline is not None and view.deadline is not None
    assert stop.deadline - view.deadline == pytest.approx(
        0.1, abs=0.02
    )  # a quarter of what was left
    while not view.is_set():
        time.sleep(0.01)
    assert time.monotonic() < (stop.deadline or 0)
    assert "an unknown number of records of Kafka topic scored" in (view.report() or "")
