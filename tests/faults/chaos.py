"""A chaos run: scorer and trends processes joining, leaving and being ``kill -9``ed at
seeded random moments while documents flow, then the invariants of "nothing lost,
nothing counted twice". Used by ``bench/chaos.py`` (N runs, pass count and resume times).

Not a test in the suite yet: with several members per consumer group the embedded tansu
0.6.0 broker can stall a group for good (a leader that leaves during a rebalance stays
named as leader, every follower's SyncGroup answers REBALANCE_IN_PROGRESS forever; see
the README's broker notes). ``churn=False`` keeps one member per role (kills only).

Resume time: from a worker process's start to its first partition assignment, read from
its log (``consumers.batching.AssignmentLog`` logs "partitions assigned"). That is when a
restarted worker consumes again.
"""

from __future__ import annotations

import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from consumers.progress import GroupProgress
from pipeline.embedded import ensure_kafka_topics
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

ASSIGNED = re.compile(
    r"partitions assigned [0-9.]+ s after subscribing \(assignment \d+\): (?!none)"
)
#: Members of one role at most (the topics get this many partitions, so each has work).
PARTITIONS = 4


@dataclass
class Worker:
    role: str
    worker_id: str
    log: Path
    proc: subprocess.Popen[bytes]
    started: float
    restarted: bool = False  # started to replace a killed one: its resume time counts
    killed: bool = False  # killed by the chaos itself (maybe before it resumed)


@dataclass
class ChaosResult:
    n_docs: int
    events: list[str] = field(default_factory=list)
    resume_s: list[float] = field(
        default_factory=list
    )  # restarted workers, start → first partitions
    unresumed: int = 0  # restarted workers that lived to the end and never got partitions
    killed_before_resuming: int = 0  # restarted workers killed again before they got partitions
    elapsed_s: float = 0.0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None


class _Watcher(threading.Thread):
    """Notes the moment each restarted worker's log first shows partitions assigned."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.workers: list[Worker] = []
        self.assigned: dict[int, float] = {}
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def add(self, worker: Worker) -> None:
        with self.lock:
            self.workers.append(worker)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            with self.lock:
                pending = [w for w in self.workers if id(w) not in self.assigned]
            for w in pending:
                try:
                    text = w.log.read_text(errors="replace")
                except FileNotFoundError:
                    continue
                if ASSIGNED.search(text):
                    self.assigned[id(w)] = time.monotonic()


def run_chaos(
    settings: Settings,
    engine: sa.engine.Engine,
    model_dir: Path,
    workdir: Path,
    *,
    seed: int,
    n_docs: int = 10_000,
    scorers: int = 2,
    trends: int = 2,
    actions: int = 8,
    produce_s: float = 25.0,
    check_states: bool = True,
    static: bool = True,
    churn: bool = True,
) -> ChaosResult:
    """One chaos run on ``settings``' broker, topics and (empty, migrated) database."""
    rng = random.Random(seed)
    result = ChaosResult(n_docs=n_docs)
    started = time.monotonic()
    s = settings.model_copy(
        update={
            "model_dir": model_dir,
            "shutdown_grace_s": 15.0,
            "kafka_static_membership": static,
            "kafka_partitions": PARTITIONS,
            "kafka_topic_documents": settings.kafka_topic_documents + ".chaos",
            "kafka_topic_scored": settings.kafka_topic_scored + ".chaos",
        }
    )
    ensure_kafka_topics(s.kafka_bootstrap or "", s.kafka_topics, partitions=PARTITIONS)
    watcher = _Watcher()
    watcher.start()
    workers: list[Worker] = []
    serial = 0

    def launch(role: str, worker_id: str, restarted: bool = False) -> Worker:
        nonlocal serial
        serial += 1
        log = workdir / f"{serial:02d}-{worker_id}.log"
        ws = s.model_copy(update={"worker_id": worker_id})
        w = Worker(role, worker_id, log, start_worker(role, ws, log), time.monotonic(), restarted)
        watcher.add(w)
        workers.append(w)
        return w

    live: dict[str, Worker] = {}
    for i in range(scorers):
        live[f"scorer-{i + 1}"] = launch("scorer", f"scorer-{i + 1}")
    for i in range(trends):
        live[f"trends-{i + 1}"] = launch("trends", f"trends-{i + 1}")
    docs = make_documents(n_docs, seed=seed)
    chunk = 100
    pace = produce_s / max(1, n_docs // chunk)
    producer = threading.Thread(
        target=produce, args=(s, docs), kwargs={"pace_s": pace, "chunk": chunk}
    )
    extra = 0
    try:
        producer.start()
        for _ in range(actions):
            time.sleep(rng.uniform(1.5, 3.5))
            action = rng.choice(("kill", "kill", "kill", "join", "leave")) if churn else "kill"
            roles = [
                r
                for r in ("scorer", "trends")
                if sum(w.role == r for w in live.values()) < PARTITIONS
            ]
            if roles and (action == "join" or (action == "leave" and len(live) <= 2)):
                role = rng.choice(roles)
                extra += 1
                name = f"{role}-x{extra}"
                live[name] = launch(role, name)
                result.events.append(f"{time.monotonic() - started:5.1f}s join {name}")
            elif action == "leave":
                name = rng.choice(sorted(live))
                w = live.pop(name)
                code = terminate(w.proc, 30)
                result.events.append(
                    f"{time.monotonic() - started:5.1f}s leave {name} (exit {code})"
                )
                if code != 0:
                    raise AssertionError(f"{name} exited {code} on SIGTERM; see {w.log}")
            else:  # kill -9 (or a join that found every role full)
                name = rng.choice(sorted(live))
                kill9(live[name].proc)
                live[name].killed = True
                live[name] = launch(live[name].role, name, restarted=True)
                result.events.append(
                    f"{time.monotonic() - started:5.1f}s kill -9 {name}, restarted"
                )
        # Every role keeps at least one member to the end.
        for role in ("scorer", "trends"):
            if not any(w.role == role for w in live.values()):
                live[f"{role}-final"] = launch(role, f"{role}-final")
        producer.join()
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") >= n_docs,
            180,
            "every prediction",
        )
        with GroupProgress(s.kafka_bootstrap or "") as progress:
            assert progress.wait_caught_up(
                s.group_id("scorer"), s.kafka_topic_documents, timeout_s=120
            ), "the scorer group did not commit every document"
            assert progress.wait_caught_up(
                s.group_id("trends"), s.kafka_topic_scored, timeout_s=120
            ), "the trends group did not commit every scored record"
        for name, w in live.items():
            code = terminate(w.proc, 30)
            assert code == 0, f"{name} did not exit 0 on SIGTERM; see {w.log}"
        assert_exactly_once(engine, n_docs)
        if check_states:
            assert_states_equal_reference(engine, model_dir, s)
    except AssertionError as exc:
        tails = []
        for w in workers[-6:]:
            lines = w.log.read_text(errors="replace").splitlines()[-8:] if w.log.exists() else []
            tails.append(f"--- {w.log.name}:\n" + "\n".join(lines))
        result.error = (
            f"{exc}\npredictions {count(engine, 'SELECT count(*) FROM predictions')} of {n_docs}\n"
            + "\n".join(result.events)
            + "\n"
            + "\n".join(tails)
        )
    finally:
        watcher.stop.set()
        watcher.join(5)
        for w in workers:
            kill9(w.proc)
        result.elapsed_s = time.monotonic() - started
    for w in workers:
        if w.restarted:
            at = watcher.assigned.get(id(w))
            if at is None and w.killed:
                result.killed_before_resuming += 1
            elif at is None:
                result.unresumed += 1
            else:
                result.resume_s.append(at - w.started)
    return result
