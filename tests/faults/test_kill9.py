"""kill -9 of the scorer and of the trends worker at random moments while 5,000 documents
flow: after restarts, predictions and the ledger hold each document exactly once and every
key's memory equals a clean single run's."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from consumers.progress import GroupProgress
from pipeline.settings import Settings
from tests.consumers.helpers import (
    assert_exactly_once,
    assert_states_equal_reference,
    count,
    make_documents,
    produce,
    wait_for,
)
from tests.faults.workers import kill9, start_worker, terminate

N_DOCS = 5000


def _diagnosis(engine: sa.engine.Engine, logs: dict[str, Path]) -> str:
    """What to look at when the workers did not catch up: counts and each log's tail."""
    lines = [
        f"predictions: {count(engine, 'SELECT count(*) FROM predictions')} of {N_DOCS}",
        f"ledger rows: {count(engine, 'SELECT count(*) FROM applied_documents')}",
    ]
    for role, path in logs.items():
        tail = (
            path.read_text(errors="replace").splitlines()[-15:] if path.exists() else ["(no log)"]
        )
        lines.append(f"--- {role} log tail ({path}):")
        lines.extend(tail)
    return "\n".join(lines)


def test_killed_workers_resume_without_losing_or_double_counting(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Production's membership: static, one worker id per process (restarts reuse it).
    s = settings.model_copy(
        update={
            "model_dir": tiny_model_dir,
            "shutdown_grace_s": 15.0,
            "kafka_static_membership": True,
            "worker_id": "kill9",
        }
    )
    rng = random.Random(4)
    docs = make_documents(N_DOCS, seed=4)
    logs = {role: tmp_path / f"{role}.log" for role in ("scorer", "trends")}
    procs = {role: start_worker(role, s, logs[role]) for role in ("scorer", "trends")}
    producer = threading.Thread(
        target=produce, args=(s, docs), kwargs={"pace_s": 0.4, "chunk": 100}
    )
    kills = {"scorer": 0, "trends": 0}
    try:
        producer.start()
        # Kill each role three times at random moments while documents flow, alternating.
        schedule = ["scorer", "trends"] * 3
        rng.shuffle(schedule)
        for role in schedule:
            time.sleep(rng.uniform(2.0, 4.5))
            kill9(procs[role])
            kills[role] += 1
            procs[role] = start_worker(role, s, logs[role])
        producer.join()
        try:
            wait_for(
                lambda: count(engine, "SELECT count(*) FROM predictions") >= N_DOCS,
                120,
                "every prediction",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_diagnosis(engine, logs)}") from None
        with GroupProgress(s.kafka_bootstrap or "") as progress:
            assert progress.wait_caught_up(
                s.group_id("scorer"), s.kafka_topic_documents, timeout_s=60
            )
            assert progress.wait_caught_up(s.group_id("trends"), s.kafka_topic_scored, timeout_s=90)
        for role, proc in procs.items():
            assert terminate(proc, 20) == 0, f"{role} did not exit 0 on SIGTERM; see {logs[role]}"
    finally:
        for proc in procs.values():
            kill9(proc)
    assert kills == {"scorer": 3, "trends": 3}
    assert "beyond the lateness horizon" not in logs["trends"].read_text(), (
        "documents arrived past the lateness horizon"
    )
    assert_exactly_once(engine, N_DOCS)
    assert_states_equal_reference(engine, tiny_model_dir, s)
