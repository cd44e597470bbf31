"""`finsent run` (every role in one process) and `finsent worker`: SIGTERM drains the batch
in hand, commits and exits 0; whatever was committed is stored."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from consumers.progress import GroupProgress
from finsent.daemon import Daemon
from pipeline.roles import Stage
from pipeline.settings import Settings
from tests.consumers.helpers import count, make_documents, produce, wait_for
from tests.faults.workers import ROOT, kill9, start_worker, terminate, worker_env


def test_finsent_run_processes_documents_and_exits_0_on_sigterm(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir, "shutdown_grace_s": 15.0})
    log = open(tmp_path / "run.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent.cli", "run"],
        cwd=ROOT,
        env=worker_env(s),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        produce(s, make_documents(300, seed=5))
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") == 300, 60, "300 predictions"
        )
        with GroupProgress(s.kafka_bootstrap or "") as progress:
            assert progress.wait_caught_up(s.group_id("trends"), s.kafka_topic_scored, timeout_s=60)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, (tmp_path / "run.log").read_text()[-3000:]
        assert time.monotonic() - started < s.shutdown_grace_s
    finally:
        kill9(proc)
    assert count(engine, "SELECT count(*) FROM applied_documents") > 300


def test_sigterm_mid_stream_commits_only_what_is_stored_and_a_restart_finishes(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir, "shutdown_grace_s": 15.0})
    docs = make_documents(3000, seed=6)
    produce(s, docs)
    proc = start_worker("scorer", s, tmp_path / "scorer.log")
    try:
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") > 200, 60, "scoring under way"
        )
        assert terminate(proc, 20) == 0
        stored = count(engine, "SELECT count(*) FROM predictions")
        with GroupProgress(s.kafka_bootstrap or "") as progress:
            committed = 3000 - progress.lag(s.group_id("scorer"), s.kafka_topic_documents)
        assert 0 < committed <= stored
        proc = start_worker("scorer", s, tmp_path / "scorer.log")
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") == 3000,
            90,
            "every prediction",
        )
        assert terminate(proc, 20) == 0
    finally:
        kill9(proc)
    assert count(engine, "SELECT count(*) FROM documents") == 3000


# -- staged shutdown (issue #11) ------------------------------------------------------------


class RecordingRole:
    """Waits for its stop, then records that it saw it and that it returned."""

    def __init__(
        self,
        name: str,
        stage: Stage | None,
        events: list[tuple[str, str]],
        *,
        left_behind: str | None = None,
    ) -> None:
        self.name = name
        if stage is not None:
            self.stage = stage
        self.events = events
        self.lock = threading.Lock()
        self.report = left_behind
        self.left_behind: str | None = None
        self.deadline: float | None = None

    def run(self, stop: threading.Event) -> None:
        stop.wait()
        self.deadline = getattr(stop, "deadline", None)
        with self.lock:
            self.events.append(("saw stop", self.name))
        self.left_behind = self.report
        with self.lock:
            self.events.append(("returned", self.name))

    def ready(self) -> bool:
        return True


def test_shutdown_stops_the_stages_in_data_flow_order_each_after_the_previous_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[tuple[str, str]] = []
    stages = {
        "alerts": None,
        "trends": Stage.TREND,
        "http": Stage.INGEST,
        "scorer": Stage.SCORE,
        "rss": Stage.INGEST,
        "outbox": Stage.DOWNSTREAM,
    }
    roles = [RecordingRole(name, stage, events) for name, stage in stages.items()]
    daemon = Daemon(roles, shutdown_grace_s=10.0)
    daemon.stop.set()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="finsent.daemon"):
        assert daemon.run(install_signals=False) == 0
    assert caplog.records[-1].getMessage() == "every role stopped cleanly"
    rank = {
        name: int(stage if stage is not None else Stage.DOWNSTREAM)
        for name, stage in stages.items()
    }
    position = {event: i for i, event in enumerate(events)}
    assert len(position) == 2 * len(roles)
    for earlier in stages:
        for later in stages:
            if rank[earlier] < rank[later]:
                # the later stage is told to stop only once the earlier one has returned
                assert position[("returned", earlier)] < position[("saw stop", later)], events
    # one shared deadline: the whole shutdown fits in one grace
    assert {role.deadline for role in roles} == {roles[0].deadline}
    assert roles[0].deadline is not None and roles[0].deadline <= started + 10.0 + 0.5


def test_a_role_that_left_records_behind_keeps_the_daemon_from_claiming_a_clean_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[tuple[str, str]] = []
    roles = [
        RecordingRole("scorer", Stage.SCORE, events),
        RecordingRole(
            "trends", Stage.TREND, events, left_behind="trends: 7 records of finsent.scored"
        ),
    ]
    daemon = Daemon(roles, shutdown_grace_s=10.0, durable_log=False)
    daemon.stop.set()
    with caplog.at_level(logging.INFO, logger="finsent.daemon"):
        assert daemon.run(install_signals=False) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "every role stopped cleanly" not in messages
    assert "trends left records unprocessed" in messages[-1]
    assert daemon.left_behind == {"trends": "trends: 7 records of finsent.scored"}


def test_a_stage_overrunning_the_grace_is_named_and_with_the_embedded_broker_called_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()

    class Stuck(RecordingRole):
        def run(self, stop: threading.Event) -> None:
            stop.wait()
            release.wait(10)

    events: list[tuple[str, str]] = []
    stuck = Stuck("scorer", Stage.SCORE, events)
    later = RecordingRole("trends", Stage.TREND, events)
    daemon = Daemon([stuck, later], shutdown_grace_s=0.5, durable_log=False)
    daemon.stop.set()
    try:
        with caplog.at_level(logging.INFO, logger="finsent.daemon"):
            assert daemon.run(install_signals=False) == 1
    finally:
        release.set()
    last = caplog.records[-1].getMessage()
    assert "still busy" in last and "scorer" in last and "lost" in last
    assert "every role stopped cleanly" not in [r.getMessage() for r in caplog.records]


def test_sigterm_right_after_ingest_on_the_embedded_broker_scores_and_trends_every_document(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Issue #11: documents accepted by HTTP ingest (202: they are in Kafka), then SIGTERM
    at once. The embedded broker's log dies with the process, so the stream must drain:
    every document ends up scored and trended, and the run exits 0."""
    import re

    import httpx

    from tests.consumers.helpers import assert_exactly_once

    s = settings.model_copy(update={"model_dir": tiny_model_dir, "shutdown_grace_s": 60.0})
    env = worker_env(s)
    del env["FINSENT_KAFKA_BOOTSTRAP"]  # finsent run starts its own embedded broker
    log_path = tmp_path / "run.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent.cli", "run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        url: list[str] = []

        def http_url() -> bool:
            url[:] = re.findall(r"HTTP server on (http://\S+)", log_path.read_text())
            return bool(url)

        wait_for(http_url, 60, "the HTTP server")
        docs = [
            {
                "id": f"e2e-{i}",
                "text": f"$NVLX shares jump after earnings {i}",
                "entities": ["NVLX"],
                "published_at": f"2026-03-02T10:{i // 60:02d}:{i % 60:02d}Z",
            }
            for i in range(120)
        ]
        response = httpx.post(f"{url[0]}/v1/documents", json=docs, timeout=30)
        assert response.status_code == 202, response.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=70) == 0, log_path.read_text()[-3000:]
    finally:
        kill9(proc)
    text = log_path.read_text()
    assert "every role stopped cleanly" in text
    assert text.index("scorer: drained") < text.index("trends: drained")
    assert_exactly_once(engine, 120)


def test_stream_processes_get_a_short_gil_switch_interval() -> None:
    import sys

    from finsent.daemon import tune_interpreter
    from pipeline.settings import load_settings

    before = sys.getswitchinterval()
    try:
        tune_interpreter(load_settings(gil_switch_interval_s=0.002))
        assert abs(sys.getswitchinterval() - 0.002) < 1e-9
    finally:
        sys.setswitchinterval(before)
