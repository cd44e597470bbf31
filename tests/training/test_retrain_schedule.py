"""``finsent retrain --schedule``: the job store lives in PostgreSQL, a scheduled run fires at
its time and records a training run, the schedule survives a restart, and a fire time
missed while the scheduler was down runs once when it comes back within the grace."""

from __future__ import annotations

import pickle
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings
from tests.training.test_retrain import (
    BAD_STEPS,
    retrain_settings,
    runs,
    tiny_config,
    write_easy_data,
)
from training.retrain_jobstore import SCHEDULE_JOB_ID, SCHEDULE_TABLE
from training.retrain_schedule import parse_cron


def start_scheduler(s: Settings, cron: str) -> tuple[threading.Thread, threading.Event]:
    from training.retrain_schedule import run_schedule

    stop = threading.Event()
    thread = threading.Thread(
        target=run_schedule,
        args=(s, cron),
        kwargs={"config": tiny_config(BAD_STEPS), "stop_event": stop},
        daemon=True,
    )
    thread.start()
    return thread, stop


def stored_job(engine: sa.Engine) -> tuple[float, dict[str, Any]] | None:
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(f"select next_run_time, job_state from {SCHEDULE_TABLE} where id = :i"),
                {"i": SCHEDULE_JOB_ID},
            ).first()
    except sa.exc.ProgrammingError:  # the scheduler has not created its table yet
        return None
    return (row.next_run_time, pickle.loads(row.job_state)) if row else None


def wait_until(predicate: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def finished_scheduled_runs(engine: sa.Engine) -> list[Any]:
    return [r for r in runs(engine) if r.trigger == "schedule" and r.status != "running"]


def test_cron_expressions_are_checked() -> None:
    assert "hour='2', minute='0'" in str(parse_cron("0 2 * * *"))
    assert "second='5'" in str(parse_cron("5 * * * * *"))
    # crontab's day of week (0 and 7 Sunday, 1 Monday), not APScheduler's (0 Monday)
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    assert parse_cron("30 4 * * 1").get_next_fire_time(
        None, monday - timedelta(days=1)
    ) == monday.replace(hour=4, minute=30)
    assert "day_of_week='sun,tue,thu,sat'" in str(parse_cron("0 0 * * */2"))
    assert "day_of_week='fri,sat,sun'" in str(parse_cron("0 0 * * 5-7"))
    assert "day_of_week='mon-fri'" in str(parse_cron("0 0 * * mon-fri"))
    with pytest.raises(ConfigurationError, match="outside 0-7"):
        parse_cron("0 0 * * 8")
    with pytest.raises(ConfigurationError, match="5 fields"):
        parse_cron("every day")
    with pytest.raises(ConfigurationError, match="not a valid cron"):
        parse_cron("0 25 * * *")


def test_scheduled_run_fires_at_its_time_and_the_schedule_survives_restarts(
    engine: sa.Engine, settings: Settings, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    s = retrain_settings(settings, write_easy_data(tmp_path / "data"), tmp_path)
    fire_at = (datetime.now(UTC) + timedelta(seconds=6)).replace(microsecond=0)
    cron = f"{fire_at.second} * * * * *"  # once a minute, at that second
    thread, stop = start_scheduler(s, cron)
    try:
        (run,) = wait_until(lambda: finished_scheduled_runs(engine), 120, "the scheduled run")
        assert run.status == "promoted" and run.started_at >= fire_at
        assert run.started_at - fire_at < timedelta(seconds=5)
        next_time, state = stored_job(engine)  # type: ignore[misc]
        assert next_time >= (fire_at + timedelta(seconds=59)).timestamp()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()

    # restart with the same schedule: the stored job (and its next fire time) is kept
    thread, stop = start_scheduler(s, cron)
    time.sleep(1.5)
    assert stored_job(engine)[0] == next_time  # type: ignore[index]
    stop.set()
    thread.join(timeout=30)

    # the scheduler was "down" when the job was due 20 s ago (within the grace): on start it
    # runs once; then a new schedule replaces the stored one
    missed = datetime.now(UTC) - timedelta(seconds=20)
    state["next_run_time"] = missed
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"update {SCHEDULE_TABLE} set next_run_time = :t, job_state = :s where id = :i"
            ),
            {"t": missed.timestamp(), "s": pickle.dumps(state), "i": SCHEDULE_JOB_ID},
        )
    restarted = datetime.now(UTC)
    thread, stop = start_scheduler(s, cron)
    try:
        second = wait_until(
            lambda: finished_scheduled_runs(engine)[1:], 120, "the missed run to run once"
        )[0]
        # at once on start, not at the next regular slot (fire_at + 60 s)
        assert second.started_at - restarted < timedelta(seconds=10)
        assert second.started_at < fire_at + timedelta(seconds=58)
    finally:
        stop.set()
        thread.join(timeout=30)
    thread, stop = start_scheduler(s, "0 3 * * *")
    time.sleep(1.5)
    stop.set()
    thread.join(timeout=30)
    assert "hour='3'" in str(stored_job(engine)[1]["trigger"])  # type: ignore[index]
    assert len(runs(engine)) == 2


def test_schedule_command_stores_its_job_and_stops_cleanly_on_sigterm(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from finsent.cli import main

    s_csv, t_csv = write_easy_data(tmp_path / "data")
    data = ["--sentiment-csv", str(s_csv), "--topic-csv", str(t_csv)]
    assert main(["--database-url", database_url, "retrain", "--schedule", "61 * * * *", *data]) == 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env["FINSENT_MODEL_REGISTRY_DIR"] = str(tmp_path / "registry")
    env["FINSENT_TRAIN_SENTIMENT_CSV"] = str(s_csv)
    env["FINSENT_TRAIN_TOPIC_CSV"] = str(t_csv)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finsent.cli",
            "--database-url",
            database_url,
            "retrain",
            "--schedule",
            "30 4 * * 1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        wait_until(lambda: stored_job(engine), 60, "the job to be stored")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "retraining scheduled: 30 4 * * 1" in out
    _, state = stored_job(engine)  # type: ignore[misc]
    assert "day_of_week='mon', hour='4', minute='30'" in str(state["trigger"])
    assert state["next_run_time"].weekday() == 0 and state["next_run_time"].hour == 4


def test_schedule_refuses_training_data_settings_that_name_no_file(
    engine: sa.Engine,
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from finsent.cli import main

    base = ["--database-url", database_url, "retrain", "--schedule", "0 3 * * *"]
    assert main(base) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "FINSENT_TRAIN_SENTIMENT_CSV" in line and "needs base training data" in line
    s_csv, _ = write_easy_data(tmp_path / "data")
    missing = tmp_path / "nope" / "topic.csv"
    assert main([*base, "--sentiment-csv", str(s_csv), "--topic-csv", str(missing)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"FINSENT_TRAIN_TOPIC_CSV (--topic-csv) is {missing}, which is not a file" in line
    assert stored_job(engine) is None  # nothing was scheduled

    # torch that does not import: one line naming it, nothing scheduled
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main([*base, "--sentiment-csv", str(s_csv)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "needs torch" in line and "pip install" in line
    assert stored_job(engine) is None


class _RunsCode:
    """Unpickling this runs a shell command: what a hostile row of the job table would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def _store_row(engine: sa.Engine, job_state: bytes, next_run_time: float) -> None:
    from training.retrain_jobstore import RetrainJobStore

    RetrainJobStore(engine=engine, tablename=SCHEDULE_TABLE).jobs_t.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(sa.text(f"delete from {SCHEDULE_TABLE}"))
        conn.execute(
            sa.text(
                f"insert into {SCHEDULE_TABLE} (id, next_run_time, job_state) values (:i, :t, :s)"
            ),
            {"i": SCHEDULE_JOB_ID, "t": next_run_time, "s": job_state},
        )


def _schedule_briefly(database_url: str, tmp_path: Path, cron: str) -> dict[str, Any]:
    """Start the scheduler on ``cron``, wait until it has stored our job, stop it."""
    from pipeline.settings import load_settings
    from training.errors import UnsafeJobState
    from training.retrain_jobstore import load_job_state
    from training.retrain_schedule import run_schedule

    def ours() -> dict[str, Any] | None:
        # never pickle.loads here: until it is replaced, the row is the hostile one
        with engine.connect() as conn:
            data = conn.execute(
                sa.text(f"select job_state from {SCHEDULE_TABLE} where id = :i"),
                {"i": SCHEDULE_JOB_ID},
            ).scalar()
        try:
            return load_job_state(data) if data else None
        except UnsafeJobState:
            return None

    s = load_settings(database_url=database_url, model_registry_dir=tmp_path / "registry")
    stop = threading.Event()
    thread = threading.Thread(
        target=run_schedule, args=(s, cron), kwargs={"stop_event": stop}, daemon=True
    )
    engine = sa.create_engine(database_url)
    thread.start()
    try:
        return wait_until(ours, 30, "the configured job to replace the stored row")
    finally:
        stop.set()
        thread.join(timeout=30)
        engine.dispose()


def test_a_hostile_pickle_in_the_job_table_runs_no_code_and_is_replaced(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    from training.errors import UnsafeJobState
    from training.retrain_jobstore import load_job_state, stored_job_trigger

    marker = tmp_path / "pwned"
    hostile = pickle.dumps({"trigger": _RunsCode(marker)})
    _store_row(engine, hostile, time.time() + 3600)
    with pytest.raises(UnsafeJobState, match="posix.system"):
        load_job_state(hostile)
    assert stored_job_trigger(engine) is None
    state = _schedule_briefly(database_url, tmp_path, "0 3 * * *")
    assert "hour='3'" in str(state["trigger"])
    assert not marker.exists()


def test_a_stored_job_calling_another_function_is_refused_and_replaced(
    engine: sa.Engine, database_url: str, tmp_path: Path
) -> None:
    """Plain APScheduler data can run code too: ``func`` names what the scheduler imports and
    calls. Same trigger as configured, so the old code kept this row as "our" schedule."""
    from training.errors import UnsafeJobState
    from training.retrain_jobstore import load_job_state, stored_job_trigger

    marker = tmp_path / "pwned"
    trigger = parse_cron("0 3 * * *")
    state = {
        "version": 1,
        "id": SCHEDULE_JOB_ID,
        "func": "os:system",
        "trigger": trigger,
        "executor": "default",
        "args": (f"touch {marker}",),
        "kwargs": {},
        "name": "finsent retraining",
        "misfire_grace_time": 3600,
        "coalesce": True,
        "max_instances": 1,
        "next_run_time": datetime.now(UTC) + timedelta(hours=1),
    }
    _store_row(engine, pickle.dumps(state), time.time() + 3600)
    with pytest.raises(UnsafeJobState, match="calls 'os:system'.*has arguments"):
        load_job_state(pickle.dumps(state))
    assert stored_job_trigger(engine) is None
    stored = _schedule_briefly(database_url, tmp_path, "0 3 * * *")
    assert stored["args"] == () and str(stored["trigger"]) == str(trigger)
    assert not marker.exists()


def test_the_stored_job_names_the_scheduled_retrain_function() -> None:
    from apscheduler.util import obj_to_ref, ref_to_obj

    from training.retrain_jobstore import SCHEDULE_JOB_FUNC
    from training.retrain_schedule import scheduled_retrain

    assert obj_to_ref(scheduled_retrain) == SCHEDULE_JOB_FUNC
    assert ref_to_obj(SCHEDULE_JOB_FUNC) is scheduled_retrain


def test_a_job_stored_before_the_module_split_is_kept_under_the_current_name() -> None:
    """A scheduler running the code before training/retrain.py was split stored its job as
    'training.retrain:scheduled_retrain': the upgrade keeps that schedule and its fire time."""
    from training.retrain_jobstore import SCHEDULE_JOB_FUNC, load_job_state

    trigger = parse_cron("0 3 * * *")
    next_run = datetime.now(UTC) + timedelta(hours=1)
    state = {
        "version": 1,
        "id": SCHEDULE_JOB_ID,
        "func": "training.retrain:scheduled_retrain",
        "trigger": trigger,
        "executor": "default",
        "args": (),
        "kwargs": {},
        "name": "finsent retraining",
        "misfire_grace_time": 3600,
        "coalesce": True,
        "max_instances": 1,
        "next_run_time": next_run,
    }
    loaded = load_job_state(pickle.dumps(state))
    assert loaded["func"] == SCHEDULE_JOB_FUNC
    assert loaded["next_run_time"] == next_run and str(loaded["trigger"]) == str(trigger)
