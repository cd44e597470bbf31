"""Retraining under concurrency and crashes, with real `finsent retrain --now` processes:
two at once -> one trains, the other reports the lock; a run killed with SIGKILL while it
writes the model directory leaves no registered version, and the next run cleans up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import registry
from pipeline.settings import Settings
from tests.training.test_retrain import (
    BAD_STEPS,
    retrain_settings,
    runs,
    tiny_config,
    write_easy_data,
)

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def retrain_process(database_url: str, s: Settings, steps: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env.update(
        {
            "FINSENT_MODEL_REGISTRY_DIR": str(s.model_registry_dir),
            "FINSENT_MODEL_DIR": str(s.model_dir),
            "FINSENT_TRAIN_SENTIMENT_CSV": str(s.train_sentiment_csv),
            "FINSENT_TRAIN_TOPIC_CSV": str(s.train_topic_csv),
        }
    )
    config = json.dumps(asdict(tiny_config(steps)))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finsent.cli",
            "--database-url",
            database_url,
            "retrain",
            "--now",
            "--train-config",
            config,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def running_row(engine: sa.Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text("select * from training_runs where status = 'running'")).first()


def test_second_concurrent_retrain_reports_the_lock_and_does_nothing(
    engine: sa.Engine, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    s = retrain_settings(settings, write_easy_data(tmp_path / "data"), tmp_path)
    first = retrain_process(database_url, s, BAD_STEPS)
    try:
        holder = wait_until(lambda: running_row(engine), 60, "the first run to start")
        second = retrain_process(database_url, s, BAD_STEPS)
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 3, out
        assert f"run {holder.id} (manual" in out and "holds the retraining lock" in out, out
        first_out, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, first_out
    assert "PROMOTED" in first_out
    (run,) = runs(engine)  # the second process recorded nothing
    assert run.status == "promoted"


def test_retrain_killed_while_writing_the_model_leaves_no_registered_version(
    engine: sa.Engine, settings: Settings, database_url: str, tmp_path: Path
) -> None:
    from training.retrain_run import run_retraining

    s = retrain_settings(settings, write_easy_data(tmp_path / "data"), tmp_path)
    registry_dir = Path(s.model_registry_dir)
    victim = retrain_process(database_url, s, BAD_STEPS)
    try:
        partial = wait_until(
            lambda: next(iter(registry_dir.glob(".*.partial")), None),
            120,
            "the model directory to be written",
            poll_s=0.02,
        )
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
    finally:
        victim.kill()
    assert victim.returncode == -signal.SIGKILL
    (crashed,) = runs(engine)
    assert crashed.status == "running"
    assert registry.list_versions(engine) == []  # nothing registered, nothing a worker could load
    assert registry.current_champion(engine) is None
    assert not (registry_dir / crashed.challenger_version).exists()

    outcome = run_retraining(
        s, config=tiny_config(BAD_STEPS), engine=engine
    )  # the lock died with the process
    assert outcome.status == "promoted", outcome.summary()
    crashed_after, current = runs(engine)
    assert (
        crashed_after.status == "failed"
        and "process ended before the run finished" in crashed_after.reason
    )
    assert f"found by run {current.id}" in crashed_after.reason
    assert not partial.exists()
    assert [v.version for v in registry.list_versions(engine)] == [outcome.challenger_version]
