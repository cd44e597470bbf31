"""`finsent run` (every role in one process) and `finsent worker`: SIGTERM drains the batch
in hand, commits and exits 0; whatever was committed is stored."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from consumers.progress import GroupProgress
from pipeline.settings import Settings
from tests.consumers.helpers import count, make_documents, produce, wait_for
from tests.faults.workers import ROOT, kill9, start_worker, terminate, worker_env


def test_finsent_run_processes_documents_and_exits_0_on_sigterm(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir, "shutdown_grace_s": 15.0})
    log = open(tmp_path / "run.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run"], cwd=ROOT, env=worker_env(s),
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        produce(s, make_documents(300, seed=5))
        wait_for(lambda: count(engine, "SELECT count(*) FROM predictions") == 300, 60, "300 predictions")
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
        wait_for(lambda: count(engine, "SELECT count(*) FROM predictions") > 200, 60, "scoring under way")
        assert terminate(proc, 20) == 0
        stored = count(engine, "SELECT count(*) FROM predictions")
        with GroupProgress(s.kafka_bootstrap or "") as progress:
            committed = 3000 - progress.lag(s.group_id("scorer"), s.kafka_topic_documents)
        assert 0 < committed <= stored
        proc = start_worker("scorer", s, tmp_path / "scorer.log")
        wait_for(lambda: count(engine, "SELECT count(*) FROM predictions") == 3000, 90, "every prediction")
        assert terminate(proc, 20) == 0
    finally:
        kill9(proc)
    assert count(engine, "SELECT count(*) FROM documents") == 3000
