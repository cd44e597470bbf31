"""End-to-end benchmark of the stream: replay -> Kafka -> scorer -> trends -> PostgreSQL.

Measured in one run, on the same machine and model:

1. **bare model**: ``Classifier.classify`` over the benchmark texts in batches of
   ``Settings.batch.max_size`` (what the scorer calls), documents/s: one pass right before
   and one right after phase 2, the ratio against their mean (the machine's speed drifts);
2. **pipeline throughput**: N documents already in the documents topic, scorer and trends
   started in this process (as ``finsent run`` does, sharing the cores), documents/s from
   the first stored prediction to the last trend point (PostgreSQL timestamps);
3. **latency at a fixed offered load**: documents produced at half the bare model's rate
   for ``--latency-seconds`` (in 10 ms ticks, see :data:`OFFER_TICK_S`); per document, the time from its send to its last trend point
   commit-side timestamp (``trend_points.created_at``, the applying transaction's start,
   so a few milliseconds optimistic); p50 / p99.

After these, without changing them:

4. **cost per document** (``--profile``, on by default when py-spy is installed): the
   throughput phase once more (fresh documents), with py-spy sampling this process's
   threads (100 Hz) and the CPU time (utime + stime, /proc) of this process, each of its
   threads, the embedded broker and PostgreSQL read over the same window. Each sample
   goes to the cost category of its innermost matching frame (:data:`PROJECT_RULES`);
   each thread's CPU time is shared out over its samples' categories (see
   :func:`profile`), giving ms of CPU per document per category. A separate pass because
   py-spy takes CPU itself: the throughput figure of phase 2 stays unprofiled;
5. **scale-out** (``--scale-out``): phases 2 and 3 again with the workers as OS processes
   (``python -m finsent worker scorer|trends``, as on N machines) on the same broker and
   database: 1 scorer + 1 trends, then 2 scorers + 1 trends;
6. **table sizes** at the end: live and dead tuples and total size of every table of the
   bench database (autovacuum is off on these machines, so dead tuples accumulate).

Results go to ``bench/results/pipeline.json`` and ``.md`` (py-spy's raw samples to
``pipeline_pyspy.txt`` next to them). Run: ``python bench/pipeline.py [--scale-out]``
(the shipped model in finsent/model/, or ``--model-dir``). Uses the embedded broker and a
throwaway database on the local PostgreSQL (or FINSENT_DATABASE_URL's server). py-spy
needs ptrace rights over this process (root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from consumers.progress import GroupProgress  # noqa: E402
from consumers.scorer import Scorer  # noqa: E402
from consumers.trends import Trends  # noqa: E402
from finsent.daemon import tune_interpreter  # noqa: E402
from pipeline import db  # noqa: E402
from pipeline.documents import Document  # noqa: E402
from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics, free_port  # noqa: E402
from pipeline.entities import load_watchlist  # noqa: E402
from pipeline.inference import Classifier, read_manifest  # noqa: E402
from pipeline.kafka_io import make_producer  # noqa: E402
from pipeline.settings import KafkaTimeouts, Settings, load_settings  # noqa: E402

SAMPLE = ROOT / "finsent" / "demo" / "stream.jsonl"
WATCHLIST = ROOT / "finsent" / "demo" / "watchlist.yaml"
QUICK = KafkaTimeouts(
    session_timeout_ms=2000,
    heartbeat_interval_ms=600,
    max_poll_interval_ms=10_000,
    request_timeout_ms=10_000,
    poll_timeout_ms=200,
)


def documents(
    n: int, run: str, start: datetime = datetime(2026, 3, 2, tzinfo=UTC)
) -> list[Document]:
    """``n`` documents cycling through the sample headlines (unique ids, event times 30 s
    apart from ``start``, watchlist entities tagged as the producers would)."""
    rows = [
        json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    watchlist = load_watchlist(WATCHLIST)
    out = []
    for i in range(n):
        text = rows[i % len(rows)]["text"]
        entities = watchlist.match(text) if watchlist is not None else ()
        out.append(
            Document(
                id=f"bench-{run}-{i:06d}",
                source="bench",
                published_at=start + timedelta(seconds=30 * i),
                text=text,
                entities=entities,
            )
        )
    return out


def phase_settings(
    base: Settings, name: str, *, own_groups: bool = False, **update: Any
) -> Settings:
    """``base`` with Kafka topics of the phase's own (and, with ``own_groups``, consumer
    groups of its own too), plus any other ``update``."""
    suffix = f"{name}.{uuid.uuid4().hex[:6]}"
    if own_groups:
        update["kafka_group_prefix"] = f"bench.{suffix}"
    return base.model_copy(
        update={
            "kafka_topic_documents": f"bench.documents.{suffix}",
            "kafka_topic_scored": f"bench.scored.{suffix}",
            "kafka_topic_dlq": f"bench.dlq.{suffix}",
            **update,
        }
    )


def after(docs: list[Document]) -> datetime:
    """An event time for the next phase's documents: later than every one of ``docs``. The
    keys are the same in every phase, and older documents would make every key rewind (a
    different measurement)."""
    return docs[-1].published_at + timedelta(hours=1)


class Workers:
    """Scorer and trends as threads of this process, as ``finsent run`` runs them."""

    def __init__(self, settings: Settings, engine: sa.engine.Engine) -> None:
        self.stop = threading.Event()
        self.roles: list[Scorer | Trends] = [
            Scorer(settings, settings.kafka_bootstrap or "", engine),
            Trends(settings, settings.kafka_bootstrap or "", engine),
        ]
        self.threads = [
            threading.Thread(target=r.run, args=(self.stop,), name=f"finsent-{r.name}", daemon=True)
            for r in self.roles
        ]

    def check(self) -> None:
        """RuntimeError when a worker thread ended (its traceback is on stderr)."""
        dead = [r.name for r, t in zip(self.roles, self.threads, strict=True) if not t.is_alive()]
        if dead:
            raise RuntimeError(f"worker thread(s) {', '.join(dead)} ended; see the log above")

    def __enter__(self) -> Workers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


#: The latency phase offers its documents in ticks (every document due within a tick is
#: sent at once, each timed from its own send) through a producer that lingers 2 ms, so a
#: tick's documents travel in one produce request, as an ingest producer's do. One request
#: per document cost this process's producer thread ~0.9 ms of CPU each (3.6 s over a 15 s
#: phase, a quarter of a core and the GIL, in the process the workers run in): the bench's
#: own load generator slowed the scorer it measured (classify 1.46x its CPU time in wall
#: time, against 1.09x in the throughput phase; p50 up to 1.7 s at half load).
OFFER_TICK_S = 0.01
OFFER_LINGER_MS = 2

#: Builds the workers of a phase from its settings; entered for the phase's duration.
WorkerFactory = Callable[[Settings, sa.engine.Engine], AbstractContextManager[Any]]


def caught_up(
    progress: GroupProgress,
    workers: Any,
    group_id: str,
    kafka_topic: str,
    *,
    timeout_s: float,
    min_records: int = 0,
) -> bool:
    """``GroupProgress.wait_caught_up`` in slices of a few seconds, raising as soon as a
    worker died instead of waiting out the timeout. Every 0.5 s: each check costs the bench
    process CPU that the workers it measures share (the measured windows come from
    PostgreSQL timestamps, not from when a check saw the end)."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if progress.wait_caught_up(
            group_id, kafka_topic, timeout_s=min(5.0, left), min_records=min_records, poll_s=0.5
        ):
            return True
        workers.check()
    return False


def bare_model(settings: Settings, docs: list[Document]) -> float:
    classifier = Classifier.load(settings.model_dir, settings)
    texts = [d.content for d in docs]
    size = settings.batch.max_size
    classifier.classify(texts[:size])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), size):
        classifier.classify(texts[i : i + size])
    return len(texts) / (time.perf_counter() - started)


def throughput(
    s: Settings,
    engine: sa.engine.Engine,
    docs: list[Document],
    *,
    workers: WorkerFactory = Workers,
    window: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    timeout_s: float = 900,
) -> dict[str, Any]:
    """``docs`` already in the phase's (``s``) documents topic, then the workers started;
    ``window`` is entered around the workers' whole run (the profiler's sampling window)."""
    ensure_kafka_topics(s.kafka_bootstrap or "", s.kafka_topics, s.kafka_partitions)
    producer = make_producer(s, s.kafka_bootstrap or "")
    for d in docs:
        producer.send(s.kafka_topic_documents, key=d.id.encode(), value=d.to_json_bytes())
    producer.flush()
    producer.close()
    ids = [d.id for d in docs]
    wall = time.perf_counter()
    # GroupProgress first: its Kafka clients' threads exist before the profiler's window,
    # which counts every thread alive at its start as the bench's own.
    with GroupProgress(s.kafka_bootstrap or "") as progress, window(), workers(s, engine) as w:
        assert caught_up(
            progress,
            w,
            s.group_id("scorer"),
            s.kafka_topic_documents,
            timeout_s=timeout_s,
            min_records=len(docs),
        ), f"the scorers did not catch up within {timeout_s:.0f} s"
        assert caught_up(
            progress, w, s.group_id("trends"), s.kafka_topic_scored, timeout_s=timeout_s
        ), f"trends did not catch up within {timeout_s:.0f} s"
    wall = time.perf_counter() - wall
    with engine.connect() as conn:
        first = conn.execute(
            sa.text("SELECT min(scored_at) FROM predictions WHERE document_id = ANY(:ids)"),
            {"ids": ids},
        ).scalar()
        last = conn.execute(
            sa.text("SELECT max(created_at) FROM trend_points WHERE document_id = ANY(:ids)"),
            {"ids": ids},
        ).scalar()
        stored = conn.execute(
            sa.text("SELECT count(*) FROM predictions WHERE document_id = ANY(:ids)"), {"ids": ids}
        ).scalar()
        updates = conn.execute(
            sa.text("SELECT count(*) FROM applied_documents WHERE document_id = ANY(:ids)"),
            {"ids": ids},
        ).scalar()
    busy = (last - first).total_seconds()
    return {
        "documents": len(docs),
        "stored": int(stored),
        "key_updates": int(updates),
        "seconds_first_prediction_to_last_trend_point": round(busy, 3),
        "docs_per_s": round(len(docs) / busy, 1),
        "wall_s_including_group_join": round(wall, 2),
    }


def latency(
    s: Settings,
    engine: sa.engine.Engine,
    docs: list[Document],
    rate: float,
    *,
    workers: WorkerFactory = Workers,
    warm_run: str = "warm",
) -> dict[str, Any]:
    """``docs`` offered at ``rate`` to the phase's (``s``) documents topic once the workers
    served a warm-up document (id ``bench-<warm_run>-000000``)."""
    ensure_kafka_topics(s.kafka_bootstrap or "", s.kafka_topics, s.kafka_partitions)
    sent: dict[str, float] = {}
    with workers(s, engine) as w, GroupProgress(s.kafka_bootstrap or "") as progress:
        producer = make_producer(s, s.kafka_bootstrap or "", linger_ms=OFFER_LINGER_MS)
        # Start the clock once both groups have joined and served a document: a static
        # member's first join on tansu takes 6-12 s, which a fixed sleep did not cover, so
        # the old figures measured the join, not the pipeline (p50 = the join's remainder).
        warm = documents(1, warm_run, docs[0].published_at - timedelta(minutes=1))[0]
        producer.send(s.kafka_topic_documents, key=warm.id.encode(), value=warm.to_json_bytes())
        producer.flush()
        joined = caught_up(
            progress, w, s.group_id("scorer"), s.kafka_topic_documents, timeout_s=120, min_records=1
        ) and caught_up(
            progress, w, s.group_id("trends"), s.kafka_topic_scored, timeout_s=120, min_records=1
        )
        assert joined, "the workers did not serve the warm-up document within 120 s"
        started = time.time()
        for i, d in enumerate(docs):
            due = started + i / rate
            pause = due - time.time()
            if pause > 0:
                # each tick sends what is due by its end: one produce request per tick
                time.sleep(max(pause, OFFER_TICK_S))
            sent[d.id] = time.time()
            producer.send(s.kafka_topic_documents, key=d.id.encode(), value=d.to_json_bytes())
        producer.flush()
        producer.close()
        offered_s = time.time() - started
        kept_up = caught_up(
            progress,
            w,
            s.group_id("scorer"),
            s.kafka_topic_documents,
            timeout_s=120,
            min_records=len(docs) + 1,
        )
        kept_up = kept_up and caught_up(
            progress, w, s.group_id("trends"), s.kafka_topic_scored, timeout_s=120
        )
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT document_id, extract(epoch FROM max(created_at)) AS done FROM trend_points "
                "WHERE document_id = ANY(:ids) GROUP BY document_id"
            ),
            {"ids": list(sent)},
        ).all()
        scored = dict(
            conn.execute(
                sa.text(
                    "SELECT document_id, extract(epoch FROM scored_at) FROM predictions "
                    "WHERE document_id = ANY(:ids)"
                ),
                {"ids": list(sent)},
            ).all()
        )
    lat = np.array([float(r.done) - sent[r.document_id] for r in rows] or [float("nan")])
    # where the time goes: send -> prediction stored (Kafka hop + scorer), then -> trend point
    to_scored = np.array([float(scored[d]) - sent[d] for d in scored] or [float("nan")])
    return {
        "offered_docs_per_s": round(rate, 1),
        "documents": len(docs),
        "measured": len(rows),
        "kept_up": kept_up,
        "offered_seconds": round(offered_s, 1),
        "p50_s": round(float(np.percentile(lat, 50)), 3),
        "p99_s": round(float(np.percentile(lat, 99)), 3),
        "max_s": round(float(lat.max()), 3),
        "to_prediction_p50_s": round(float(np.percentile(to_scored, 50)), 3),
        "to_prediction_p99_s": round(float(np.percentile(to_scored, 99)), 3),
    }


# -- cost per document: py-spy samples and the CPU time of the processes -------------------

PROFILE_RATE_HZ = 100
#: How often the CPU time of each of this process's threads is read during the profile.
THREAD_POLL_S = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Cost categories, in the order of the tables.
CATEGORIES = {
    "model": "classifier model call (Classifier.logits → onnxruntime, softmax)",
    "tokenise": "tokenisation (Classifier.encode)",
    "kafka_fetch": "Kafka poll/fetch (consumers, their IO threads, consumers/batching.py)",
    "kafka_produce": "Kafka produce/forward (Scorer._forward, flush, producer thread)",
    "scorer_store": "scorer store (PostgreSQL writes, consumers/scorer.py)",
    "group_clock": "scorer event-time alignment (SQL, consumers/alignment.py)",
    "trends_store": "trends store (SQL in consumers/trends.py)",
    "memory": "trends memory cell (MemoryCell, memory_features)",
    "json": "JSON (de)serialisation and record parsing (pipeline/records.py, documents.py)",
    "idle": "idle/waiting (in wait/select/join; CPU only of threads never seen elsewhere)",
    "bench": "bench harness (GroupProgress polling and its Kafka clients; not the pipeline)",
    "other": "other",
}
#: (file under the repository, qualified name prefix, category): a sample goes to the
#: category of its innermost frame matching a rule, tried in this order ("" matches all).
PROJECT_RULES: tuple[tuple[str, str, str], ...] = (
    ("pipeline/inference.py", "Classifier.encode", "tokenise"),
    ("pipeline/inference.py", "model_text", "tokenise"),
    ("pipeline/inference.py", "MemoryCell.", "memory"),
    ("pipeline/inference.py", "Classifier.", "model"),
    ("pipeline/inference.py", "_softmax", "model"),
    ("pipeline/memory_features.py", "", "memory"),
    ("consumers/trends.py", "_step_all", "memory"),
    ("consumers/trends.py", "_state_or_initial", "memory"),
    ("consumers/trends.py", "parse_scored", "json"),
    ("consumers/trends.py", "ScoredItem.", "json"),
    ("consumers/trends.py", "Trends.prepare", "json"),
    ("consumers/trends.py", "Trends.", "trends_store"),
    ("consumers/trends.py", "_json", "trends_store"),
    ("consumers/scorer.py", "_event_time_key", "json"),
    ("consumers/scorer.py", "Scorer.prepare", "json"),
    ("consumers/scorer.py", "Scorer._forward", "kafka_produce"),
    ("consumers/scorer.py", "Scorer._store", "scorer_store"),
    ("consumers/scorer.py", "_write_batch", "scorer_store"),
    ("consumers/scorer.py", "json_text", "scorer_store"),
    ("consumers/worker.py", "StreamWorker.flush", "kafka_produce"),
    ("consumers/worker.py", "StreamWorker.dead_letter", "kafka_produce"),
    ("consumers/alignment.py", "", "group_clock"),
    ("consumers/batching.py", "", "kafka_fetch"),
    ("consumers/model_watch.py", "", "other"),
    ("pipeline/records.py", "", "json"),
    ("pipeline/documents.py", "", "json"),
    ("consumers/progress.py", "", "bench"),
    ("bench/", "", "bench"),
)
PROJECT_DIRS = ("pipeline", "consumers", "finsent", "alerts", "bench")
#: For stacks with no project frame (the producer's sender thread, the Kafka clients' IO
#: threads, heartbeats): the first fragment, in this order, that a frame's path holds.
LIBRARY_RULES = (
    ("/kafka/producer/", "kafka_produce"),
    ("/kafka/", "kafka_fetch"),
    ("/tokenizers/", "tokenise"),
    ("/onnxruntime/", "model"),
    ("/json/", "json"),
)
#: Innermost frames that wait: (file name, method name).
WAITS = {
    ("threading.py", "wait"),
    ("threading.py", "wait_for"),
    ("threading.py", "join"),
    ("threading.py", "_wait_for_tstate_lock"),
    ("threading.py", "acquire"),
    ("selectors.py", "select"),
    ("queue.py", "get"),
    ("thread.py", "_worker"),  # a ThreadPoolExecutor thread between work items
}
#: Threads whose every sample is the bench's own work (the main thread only waits on
#: GroupProgress during the profile), by name prefix; besides every thread alive when the
#: window opens (``Sampler.bench_tids``).
BENCH_THREADS = ("MainThread", "bench-")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
THREAD = re.compile(r"^thread \((?P<tid>\d+)\)(?:: (?P<name>.*))?$")


class ProfileError(Exception):
    """The profile cannot be taken (py-spy missing, not allowed to attach, no samples)."""


def py_spy_path() -> str | None:
    """py-spy next to this interpreter (the venv's) or on PATH."""
    where = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("py-spy", path=where)


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """utime + stime of a process (all its threads), or of its thread ``tid``, from
    ``/proc``; None when it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds of each live thread of this process, by thread id."""
    pid = os.getpid()
    out = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        if (cpu := cpu_seconds(pid, int(entry))) is not None:
            out[int(entry)] = cpu
    return out


def processes_named(comm: str, parent: int | None = None) -> list[int]:
    """Pids of the processes whose command name is ``comm`` (children of ``parent`` only,
    when given)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if name == comm and (parent is None or ppid == parent):
            pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU seconds of a set of processes between ``start()`` and ``stop()``. A process that
    appears in between counts from zero (its whole life is inside the window); one that
    ends in between is lost, so measure long-lived processes (pooled connections' backends)."""

    def __init__(self, pids: Callable[[], Iterable[int]]) -> None:
        self.pids = pids
        self.before: dict[int, float] = {}
        self.seconds = 0.0
        self.processes = 0

    def _read(self) -> dict[int, float]:
        return {pid: cpu for pid in self.pids() if (cpu := cpu_seconds(pid)) is not None}

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> float:
        now = self._read()
        self.processes = len(now)
        self.seconds = sum(cpu - self.before.get(pid, 0.0) for pid, cpu in now.items())
        return self.seconds


class Sampler:
    """py-spy recording this process while entered (raw collapsed stacks, per thread), the
    CPU meters read over the same window, and each thread's CPU time read every
    ``THREAD_POLL_S`` (a thread that ends keeps its last reading)."""

    def __init__(self, py_spy: str, raw: Path, meters: dict[str, CpuMeter]) -> None:
        self.py_spy = py_spy
        self.raw = raw
        self.meters = meters
        self.window_s = 0.0
        self.py_spy_cpu_s = 0.0
        self.thread_cpu_s: dict[int, float] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: list[str] = []
        self._done = threading.Event()
        self._threads_before: dict[int, float] = {}
        self._threads_last: dict[int, float] = {}
        self.bench_tids: set[int] = set()

    def __enter__(self) -> Sampler:
        self.raw.unlink(missing_ok=True)
        cmd = [
            self.py_spy,
            "record",
            "--pid",
            str(os.getpid()),
            "--rate",
            str(PROFILE_RATE_HZ),
            "--format",
            "raw",
            "--threads",
            "--full-filenames",
            "--output",
            str(self.raw),
        ]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        sampling = threading.Event()

        def read(stream: Any) -> None:
            for line in stream:
                self._output.append(line.decode(errors="replace").rstrip())
                if "Sampling process" in self._output[-1]:
                    sampling.set()

        threading.Thread(
            target=read, args=(self._proc.stdout,), name="bench-py-spy-output", daemon=True
        ).start()
        deadline = time.monotonic() + 15
        while not sampling.wait(0.1):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._end(signal.SIGKILL)
                raise ProfileError(
                    "py-spy did not start sampling: "
                    + (" | ".join(self._output[-3:]) or "no output")
                    + " (it needs ptrace rights over this process: run as root, or set "
                    "kernel.yama.ptrace_scope=0)"
                )
        self._spy_before = cpu_seconds(self._proc.pid) or 0.0
        self._threads_before = thread_cpu_seconds()
        self._threads_last = dict(self._threads_before)
        threading.Thread(target=self._poll_threads, name="bench-thread-cpu", daemon=True).start()
        # Every thread alive now is the bench's: the main thread, GroupProgress's Kafka
        # clients, these helpers (the workers start inside the window).
        self.bench_tids = set(thread_cpu_seconds())
        for meter in self.meters.values():
            meter.start()
        self._started = time.perf_counter()
        return self

    def _poll_threads(self) -> None:
        while not self._done.wait(THREAD_POLL_S):
            self._threads_last.update(thread_cpu_seconds())

    def _end(self, how: signal.Signals) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(how)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __exit__(self, *exc: object) -> None:
        self.window_s = time.perf_counter() - self._started
        for meter in self.meters.values():
            meter.stop()
        self._done.set()
        self._threads_last.update(thread_cpu_seconds())
        self.thread_cpu_s = {
            tid: cpu - self._threads_before.get(tid, 0.0) for tid, cpu in self._threads_last.items()
        }
        assert self._proc is not None
        self.py_spy_cpu_s = (cpu_seconds(self._proc.pid) or 0.0) - self._spy_before
        self._end(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        if not self.raw.is_file():
            raise ProfileError(
                "py-spy wrote no samples: " + (" | ".join(self._output[-3:]) or "no output")
            )


def read_samples(raw: Path) -> dict[int, tuple[str, Counter[tuple[str, ...]]]]:
    """py-spy's raw (collapsed) format with ``--threads``: per line ``thread (TID): name``,
    then the frames outermost first, ``;``-joined, then a space and the sample count.
    Returns, per thread id, its name and its stacks' counts."""
    threads: dict[int, tuple[str, Counter[tuple[str, ...]]]] = {}
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        root, *frames = stack.split(";")
        m = THREAD.match(root)
        tid, name = (int(m["tid"]), m["name"] or "") if m else (0, "")
        if not m:
            frames = [root, *frames]
        known, stacks = threads.get(tid, ("", Counter()))
        threads[tid] = (known or name, stacks)  # a thread's first lines may lack its name
        stacks[tuple(frames)] += int(count)
    return threads


def _frame(text: str) -> tuple[str, str]:
    """(qualified function name, file) of a py-spy frame, the file relative to the
    repository for project files and absolute otherwise."""
    m = FRAME.match(text)
    func, file = (m["func"], m["file"]) if m else (text, "")
    with contextlib.suppress(ValueError):
        rel = Path(file).relative_to(ROOT).as_posix()
        if rel.split("/", 1)[0] in PROJECT_DIRS:
            file = rel
    return func, file


def categorise(stack: tuple[str, ...]) -> tuple[str, str]:
    """(category, deciding frame) of one sample (frames outermost first): a wait primitive
    on top is waiting; else the innermost project frame matching :data:`PROJECT_RULES`;
    else the first of :data:`LIBRARY_RULES` any frame matches; else other (with the
    innermost project frame, or the top frame, as the one to look at)."""
    frames = [_frame(f) for f in reversed(stack)]  # innermost first
    if frames:
        func, file = frames[0]
        if (Path(file).name, func.rsplit(".", 1)[-1]) in WAITS:
            return "idle", f"{func} ({Path(file).name})"
    for func, file in frames:
        for rule_file, prefix, category in PROJECT_RULES:
            matches = file.startswith(rule_file) if rule_file.endswith("/") else file == rule_file
            if matches and func.startswith(prefix):
                return category, f"{func} ({file})"
    for fragment, category in LIBRARY_RULES:
        for func, file in frames:
            if fragment in file:
                return category, f"{func} ({file})"
    project = [f for f in frames if f[1].split("/", 1)[0] in PROJECT_DIRS]
    if not (project or frames):
        return "other", "(no Python frame)"
    func, file = (project or frames)[0]
    return "other", f"{func} ({file})"


def profile(
    settings: Settings,
    engine: sa.engine.Engine,
    docs: list[Document],
    *,
    py_spy: str,
    raw: Path,
    bench_backends: Callable[[], list[int]],
) -> dict[str, Any]:
    """The throughput phase once more under py-spy; cost per document by category.

    py-spy's "active" is the thread's scheduler state, so on a loaded machine a thread that
    merely waits for a core counts too: samples are not CPU time. Each thread's measured
    CPU time is therefore shared out over the categories of *that thread's* samples
    outside waits (a thread seen in a wait was woken and queued, not computing), and a
    category's cost is the sum over threads (``share`` stays the plain share of samples).
    """
    meters = {
        "process": CpuMeter(lambda: [os.getpid()]),
        "broker": CpuMeter(lambda: processes_named("tansu", parent=os.getpid())),
        "postgres_bench": CpuMeter(bench_backends),
        "postgres_all": CpuMeter(lambda: processes_named("postgres")),
    }
    sampler = Sampler(py_spy, raw, meters)
    phase = throughput(phase_settings(settings, "prof"), engine, docs, window=lambda: sampler)
    threads = read_samples(raw)
    samples: Counter[str] = Counter()
    cpu: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    other: Counter[str] = Counter()
    per_thread = []
    for tid, (thread_name, stacks) in threads.items():
        mine: Counter[str] = Counter()
        for stack, count in stacks.items():
            category, frame = categorise(stack)
            if tid in sampler.bench_tids or thread_name.startswith(BENCH_THREADS):
                category = "bench"
            mine[category] += count
            if category == "other":
                other[frame] += count
        samples.update(mine)
        n_thread = sum(mine.values())
        thread_cpu = max(0.0, sampler.thread_cpu_s.get(tid, 0.0))
        # A thread seen in a wait was runnable, not running (woken, queued for a core):
        # its CPU goes to what it was seen doing otherwise, unless it only ever waited.
        working = {c: k for c, k in mine.items() if c != "idle"} or mine
        for category, count in working.items():
            cpu[category] += thread_cpu * count / sum(working.values())
        per_thread.append((thread_cpu, thread_name, n_thread, mine.most_common(1)[0][0]))
    total = sum(samples.values())
    if not total:
        raise ProfileError(f"py-spy recorded no samples in {raw}")
    n = len(docs)
    cpu_s = meters["process"].seconds

    def ms_per_doc(seconds: float) -> float:
        return round(seconds * 1000.0 / n, 3)

    categories = {
        key: {
            "label": label,
            "samples": samples[key],
            "share": round(samples[key] / total, 4),
            "cpu_share": round(cpu[key] / cpu_s, 4) if cpu_s else 0.0,
            "cpu_ms_per_doc": ms_per_doc(cpu[key]),
        }
        for key, label in CATEGORIES.items()
    }
    unattributed = max(0.0, cpu_s - sum(cpu.values()))
    pipeline_s = cpu_s - cpu["bench"]
    return {
        "phase": phase,
        "rate_hz": PROFILE_RATE_HZ,
        "window_s": round(sampler.window_s, 2),
        "samples": total,
        "sampled_s": round(total / PROFILE_RATE_HZ, 2),
        "process_cpu_s": round(cpu_s, 2),
        "py_spy_cpu_s": round(sampler.py_spy_cpu_s, 2),
        "categories": categories,
        "unattributed_cpu_ms_per_doc": ms_per_doc(unattributed),
        "threads": [
            {"name": name, "cpu_ms_per_doc": ms_per_doc(c), "samples": k, "mostly": top}
            for c, name, k, top in sorted(per_thread, reverse=True)[:10]
        ],
        "other_top_frames": other.most_common(8),
        "process_ms_per_doc": ms_per_doc(cpu_s),
        "process_ms_per_doc_without_bench": ms_per_doc(pipeline_s),
        "broker_ms_per_doc": ms_per_doc(meters["broker"].seconds),
        "broker_processes": meters["broker"].processes,
        "postgres_bench_backends_ms_per_doc": ms_per_doc(meters["postgres_bench"].seconds),
        "postgres_bench_backends": meters["postgres_bench"].processes,
        "postgres_all_ms_per_doc": ms_per_doc(meters["postgres_all"].seconds),
        "postgres_all_processes": meters["postgres_all"].processes,
        "total_ms_per_doc": ms_per_doc(
            pipeline_s + meters["broker"].seconds + meters["postgres_bench"].seconds
        ),
        "raw_samples": str(raw),
    }


# -- scale-out: the workers as separate processes ------------------------------------------


#: Consumer-group timing of the worker processes: QUICK's, with Kafka's default session
#: (10 s) and heartbeat. Two static scorer members with QUICK's 2 s session rebalanced
#: without end on tansu on a loaded 2-core machine (17 assignments in 113 s, each revoked
#: 0.6 s later: "member_id was not recognized"); with a 10 s session the group settled in
#: 6 of 7 phases, and in the 7th both members were revoked after a "member_id was not
#: recognized" and never assigned again (wedged in ensure_active_group for 96 s). Dynamic
#: membership (``--scale-out-membership dynamic``) settled at once. The join takes longer
#: (not measured: docs/s runs from the first prediction, latency from the warm-up document).
SCALE_OUT_KAFKA = QUICK.model_copy(
    update={"session_timeout_ms": 10_000, "heartbeat_interval_ms": 3_000}
)


def _die_with_bench() -> None:
    """In a worker child before exec: SIGTERM it when the bench dies (even by kill -9)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class WorkerProcesses:
    """``python -m finsent worker scorer`` (``scorers`` times) and ``... trends`` (``trends``
    times) as OS processes on the phase's broker, database and Kafka topics, as on N
    machines: each its own static member id and HTTP port. Stopped with SIGTERM (each
    finishes its batch in hand and exits 0), SIGKILL after ``stop_timeout_s``."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.engine.Engine,
        *,
        scorers: int,
        trends: int,
        log_dir: Path,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.specs = [("scorer", i) for i in range(1, scorers + 1)]
        self.specs += [("trends", i) for i in range(1, trends + 1)]
        self.log_dir = log_dir
        self.stop_timeout_s = stop_timeout_s
        self.procs: list[tuple[str, int, subprocess.Popen[bytes]]] = []
        self.health: dict[str, int | str] = {}
        self.exit_codes: dict[str, int | None] = {}

    def env(self, role: str, i: int, port: int) -> dict[str, str]:
        """What a worker on another machine would be given (see the README's recipe)."""
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "FINSENT_KAFKA_BOOTSTRAP": s.kafka_bootstrap or "",
                "FINSENT_DATABASE_URL": s.database_url or "",
                "FINSENT_KAFKA_TOPIC_DOCUMENTS": s.kafka_topic_documents,
                "FINSENT_KAFKA_TOPIC_SCORED": s.kafka_topic_scored,
                "FINSENT_KAFKA_TOPIC_DLQ": s.kafka_topic_dlq,
                "FINSENT_KAFKA_PARTITIONS": str(s.kafka_partitions),
                "FINSENT_KAFKA_GROUP_PREFIX": s.kafka_group_prefix,
                "FINSENT_KAFKA_STATIC_MEMBERSHIP": str(s.kafka_static_membership).lower(),
                "FINSENT_WORKER_ID": f"{role}-{i}",
                "FINSENT_HTTP_PORT": str(port),
                "FINSENT_MODEL_DIR": str(s.model_dir),
            }
        )
        env.update({f"FINSENT_KAFKA__{k.upper()}": str(v) for k, v in s.kafka.model_dump().items()})
        env.update({f"FINSENT_BATCH__{k.upper()}": str(v) for k, v in s.batch.model_dump().items()})
        return env

    def name(self, role: str, i: int) -> str:
        return f"{self.settings.kafka_group_prefix}-{role}-{i}"

    def __enter__(self) -> WorkerProcesses:
        try:
            for role, i in self.specs:
                port = free_port()
                with open(self.log_dir / f"{self.name(role, i)}.log", "wb") as log:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "finsent", "worker", role],
                        cwd=ROOT,
                        env=self.env(role, i, port),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a Ctrl-C reaches the bench only
                        preexec_fn=_die_with_bench,
                    )
                self.procs.append((role, port, proc))
        except BaseException:
            self.__exit__()
            raise
        return self

    def check(self) -> None:
        """RuntimeError naming a worker process that exited, with its log's tail."""
        for (role, i), (_, _, proc) in zip(self.specs, self.procs, strict=False):
            if proc.poll() is not None:
                path = self.log_dir / f"{self.name(role, i)}.log"
                tail = path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(
                    f"worker process {self.name(role, i)} exited with code {proc.returncode}; "
                    f"{path}:\n" + "\n".join(tail)
                )

    def _probe_health(self) -> None:
        for (role, i), (_, port, proc) in zip(self.specs, self.procs, strict=False):
            if proc.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    self.health[self.name(role, i)] = r.status
            except urllib.error.HTTPError as exc:
                self.health[self.name(role, i)] = exc.code
            except OSError as exc:
                self.health[self.name(role, i)] = f"no answer: {exc}"

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._probe_health()
        for _, _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for (role, i), (_, _, proc) in zip(self.specs, self.procs, strict=False):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            self.exit_codes[self.name(role, i)] = proc.returncode


def scale_out(
    settings: Settings,
    engine: sa.engine.Engine,
    docs: list[Document],
    lat_docs: list[Document],
    rate: float,
    *,
    scorers: int,
    trends: int,
    log_dir: Path,
    static: bool = True,
) -> dict[str, Any]:
    """Throughput and latency with the workers as ``scorers`` + ``trends`` processes. Each
    phase has consumer groups of its own (a static member of an earlier phase stays in its
    group for a session timeout), and the documents topic at least one partition per
    scorer (a scorer without a partition idles)."""
    made: list[WorkerProcesses] = []

    def workers(s: Settings, engine: sa.engine.Engine) -> WorkerProcesses:
        w = WorkerProcesses(s, engine, scorers=scorers, trends=trends, log_dir=log_dir)
        made.append(w)
        return w

    name = f"so{scorers}x{trends}"
    partitions = max(settings.kafka_partitions, scorers)

    def phase(kind: str) -> Settings:
        return phase_settings(
            settings,
            f"{name}{kind}",
            own_groups=True,
            kafka_partitions=partitions,
            kafka=SCALE_OUT_KAFKA,
            kafka_static_membership=static,
        )

    out: dict[str, Any] = {
        "scorers": scorers,
        "trends": trends,
        "partitions": partitions,
        "membership": "static" if static else "dynamic",
    }
    # A bounded wait: a group that never settles fails this layout, not the whole bench.
    out["pipeline"] = throughput(phase("t"), engine, docs, workers=workers, timeout_s=300)
    out["latency"] = latency(
        phase("l"), engine, lat_docs, rate, workers=workers, warm_run=f"{name}w"
    )
    out["health_at_end"] = [w.health for w in made]
    out["exit_codes"] = [w.exit_codes for w in made]
    return out


# -- table sizes -----------------------------------------------------------------------------


def table_stats(url: str) -> dict[str, Any]:
    """Live and dead tuples and total size of every table of the database at ``url``, once
    every other session of it ended (a backend flushes its statistics when it exits)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + 15
            while (
                time.monotonic() < deadline
                and conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar()
            ):
                time.sleep(0.2)
            conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))
            conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            autovacuum = conn.execute(sa.text("SHOW autovacuum")).scalar()
            rows = conn.execute(
                sa.text(
                    "SELECT relname, n_live_tup, n_dead_tup, n_tup_ins, n_tup_upd, n_tup_hot_upd, "
                    "n_tup_del, pg_total_relation_size(relid) AS total_bytes "
                    "FROM pg_stat_user_tables ORDER BY pg_total_relation_size(relid) DESC, relname"
                )
            ).all()
    finally:
        engine.dispose()
    return {
        "autovacuum": autovacuum,
        "tables": [
            {
                "table": r.relname,
                "n_live_tup": int(r.n_live_tup),
                "n_dead_tup": int(r.n_dead_tup),
                "n_tup_ins": int(r.n_tup_ins),
                "n_tup_upd": int(r.n_tup_upd),
                "n_tup_hot_upd": int(r.n_tup_hot_upd),
                "n_tup_del": int(r.n_tup_del),
                "total_bytes": int(r.total_bytes),
            }
            for r in rows
        ],
    }


def _size(n: int) -> str:
    """Bytes for a reader.

    >>> _size(812), _size(2048), _size(5 * 1024**2)
    ('812 B', '2.0 KiB', '5.0 MiB')
    """
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="default: FINSENT_MODEL_DIR or finsent/model/"
    )
    parser.add_argument(
        "--documents", type=int, default=4000, help="documents for the throughput phase"
    )
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument(
        "--max-latency-documents",
        type=int,
        default=5000,
        help="cap on documents offered in the latency phase",
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cost per document: the throughput phase again under py-spy, with the broker's "
        "and PostgreSQL's CPU time (default: on when py-spy is installed)",
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="throughput and latency again with the workers as processes "
        "(1 scorer + 1 trends, then 2 scorers + 1 trends)",
    )
    parser.add_argument(
        "--scale-out-membership",
        choices=("static", "dynamic"),
        default="static",
        help="consumer-group membership of the scale-out processes (default: static, as "
        "deployed; two static scorers can wedge the embedded broker's group, see SCALE_OUT_KAFKA)",
    )
    parser.add_argument(
        "--note", default="", help="a line recorded with the results (e.g. which model and why)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline")
    args = parser.parse_args()
    py_spy = py_spy_path()
    if args.profile and py_spy is None:
        parser.error("--profile needs py-spy: pip install py-spy (it is in the dev extra)")
    profile_asked = bool(args.profile)  # a failure fails the run only when asked for
    if args.profile is None:
        args.profile = py_spy is not None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []

    base = load_settings(model_dir=args.model_dir, kafka=QUICK)
    tune_interpreter(base)  # what finsent run does for the process its workers share
    manifest = read_manifest(base.model_dir)
    admin = base.database_url or db.database_url(base)
    name = f"finsent_bench_{os.getpid()}"
    admin_engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin).set(database=name).render_as_string(hide_password=False)

    def bench_backends() -> list[int]:
        with admin_engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :db"), {"db": name}
                ).scalars()
            )

    prof: dict[str, Any] | None = None
    scaled: list[dict[str, Any]] = []
    broker = EmbeddedBroker().start()
    try:
        db.upgrade(url)
        engine = db.make_engine(url)
        settings = base.model_copy(
            update={"database_url": url, "kafka_bootstrap": broker.bootstrap}
        )
        docs = documents(args.documents, "t")
        # The bare model right before and right after the pipeline phase, against their
        # mean: this machine's speed drifts by 5-10 % over tens of seconds (bare passes of
        # 522, 548, 573 docs/s back to back), as much as the effect being measured.
        bare_runs = [bare_model(settings, docs)]
        print(f"bare model: {bare_runs[0]:.1f} docs/s", flush=True)
        tput = throughput(phase_settings(settings, "tput"), engine, docs)
        print(f"pipeline: {tput}", flush=True)
        bare_runs.append(bare_model(settings, docs))
        bare = sum(bare_runs) / len(bare_runs)
        print(f"bare model again: {bare_runs[1]:.1f} docs/s (mean {bare:.1f})", flush=True)
        n_lat = min(args.max_latency_documents, max(50, int(bare / 2 * args.latency_seconds)))
        lat_docs = documents(n_lat, "l", after(docs))
        lat = latency(phase_settings(settings, "lat"), engine, lat_docs, bare / 2)
        print(f"latency: {lat}", flush=True)
        cursor = after(lat_docs)
        if args.profile:
            assert py_spy is not None
            prof_docs = documents(args.documents, "p", cursor)
            cursor = after(prof_docs)
            try:
                prof = profile(
                    settings,
                    engine,
                    prof_docs,
                    py_spy=py_spy,
                    raw=args.out.with_name(f"{args.out.name}_pyspy.txt"),
                    bench_backends=bench_backends,
                )
                shown = {k: v["cpu_ms_per_doc"] for k, v in prof["categories"].items()}
                print(f"profile (ms of CPU per document): {shown}", flush=True)
            except ProfileError as exc:
                prof = {"error": str(exc)}
                if profile_asked:
                    failures.append(f"profile: {exc}")
                print(f"profile: not taken: {exc}", flush=True)
        if args.scale_out:
            log_dir = Path(tempfile.mkdtemp(prefix="finsent-bench-workers-"))
            for scorers in (1, 2):
                run = f"s{scorers}"
                so_docs = documents(args.documents, f"{run}t", cursor)
                so_lat = documents(n_lat, f"{run}l", after(so_docs))
                cursor = after(so_lat)
                try:
                    scaled.append(
                        scale_out(
                            settings,
                            engine,
                            so_docs,
                            so_lat,
                            bare / 2,
                            scorers=scorers,
                            trends=1,
                            log_dir=log_dir,
                            static=args.scale_out_membership == "static",
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - recorded; the other results stand
                    scaled.append(
                        {
                            "scorers": scorers,
                            "trends": 1,
                            "membership": args.scale_out_membership,
                            "error": str(exc),
                        }
                    )
                    failures.append(f"scale-out {scorers}+1: {exc}")
                print(f"scale-out {scorers} scorer(s) + 1 trends: {scaled[-1]}", flush=True)
            print(f"worker logs: {log_dir}", flush=True)
        engine.dispose()
        tables = table_stats(url)
    finally:
        broker.stop()
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model": {
            "dir": str(base.model_dir),
            "version": manifest["version"],
            "tiny": bool(manifest.get("tiny")),
        },
        "batch": base.batch.model_dump(),
        "bare_model_docs_per_s": round(bare, 1),
        "bare_model_runs_docs_per_s": [round(b, 1) for b in bare_runs],
        "pipeline": tput,
        "ratio_pipeline_to_bare": round(tput["docs_per_s"] / bare, 3),
        "latency_at_half_load": lat,
        "targets": {"ratio": ">= 0.8", "p99_s_at_half_load": "< 1.0"},
        "profile": prof,
        "scale_out": scaled or None,
        "tables_at_end": tables,
        "load_average_at_end": os.getloadavg(),
        "note": args.note,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    command = "python bench/pipeline.py" + (" --scale-out" if args.scale_out else "")
    if args.scale_out and args.scale_out_membership != "static":
        command += f" --scale-out-membership {args.scale_out_membership}"
    md = [
        "# Pipeline benchmark",
        "",
        f"{result['when']}, {os.cpu_count()} CPUs, model `{manifest['version']}`"
        + (
            " (the TINY test model: not representative of the shipped one)"
            if manifest.get("tiny")
            else ""
        )
        + f", batch {base.batch.max_size} / {base.batch.max_wait_ms} ms. Command: `{command}`.",
        "",
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| bare model (mean of the passes before and after the pipeline: "
        f"{bare_runs[0]:.1f}, {bare_runs[1]:.1f}) | {bare:.1f} docs/s | |",
        f"| pipeline (replay → Kafka → scorer → trends → PostgreSQL) | {tput['docs_per_s']} docs/s | |",
        f"| ratio | {result['ratio_pipeline_to_bare']:.0%} | ≥ 80% |",
        f"| latency p50 at {lat['offered_docs_per_s']} docs/s offered | {lat['p50_s']} s | |",
        f"| latency p99 at {lat['offered_docs_per_s']} docs/s offered | {lat['p99_s']} s | < 1 s |",
        "",
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(the broker, PostgreSQL and both workers share the machine's cores).",
        "",
    ] + ([args.note, ""] if args.note else [])
    md += profile_md(prof, args.documents) + scale_out_md(tput, lat, scaled) + tables_md(tables)
    args.out.with_suffix(".md").write_text("\n".join(md))
    print(json.dumps(result, indent=2))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def profile_md(prof: dict[str, Any] | None, documents: int) -> list[str]:
    if prof is None:
        return []
    head = ["## Cost per document", ""]
    if "error" in prof:
        return head + [f"Not measured: {prof['error']}", ""]
    phase = prof["phase"]
    rows = [
        f"The throughput phase again ({documents} fresh documents; {phase['docs_per_s']} docs/s "
        f"under the profiler), py-spy sampling this process's threads at {prof['rate_hz']} Hz "
        f"({prof['samples']} samples of running or runnable threads over the {prof['window_s']} s "
        f"window; this process used {prof['process_cpu_s']} s of CPU, py-spy "
        f"{prof['py_spy_cpu_s']} s). A sample counts for the category of its innermost "
        "matching frame. py-spy cannot tell a running thread from one waiting for a core, so "
        "samples are not CPU time on a busy machine: each thread's own CPU time (/proc) is "
        "shared out over the categories of its samples outside waits (*share of CPU*), and "
        "ms/doc is that CPU over the documents.",
        "",
        "| where | share of samples | share of CPU | ms of CPU per document |",
        "| --- | --- | --- | --- |",
    ]
    for cat in prof["categories"].values():
        rows.append(
            f"| {cat['label']} | {cat['share']:.1%} | {cat['cpu_share']:.1%} "
            f"| {cat['cpu_ms_per_doc']:.3f} |"
        )
    rows += [
        "| CPU of threads that ended between two reads, or never sampled | | | "
        f"{prof['unattributed_cpu_ms_per_doc']:.3f} |",
        f"| **bench process, all threads** | 100% | 100% | {prof['process_ms_per_doc']:.3f} |",
        "| **of which the pipeline (without the bench harness)** | | | "
        f"{prof['process_ms_per_doc_without_bench']:.3f} |",
        f"| embedded broker (tansu process) | | | {prof['broker_ms_per_doc']:.3f} |",
        f"| PostgreSQL: the bench database's backends ({prof['postgres_bench_backends']}) | | | "
        f"{prof['postgres_bench_backends_ms_per_doc']:.3f} |",
        "| **total: pipeline + broker + the bench database's backends** | | | "
        f"{prof['total_ms_per_doc']:.3f} |",
        f"| PostgreSQL, all its processes ({prof['postgres_all_processes']}: WAL writer, "
        "checkpointer and other databases' sessions too) | | | "
        f"{prof['postgres_all_ms_per_doc']:.3f} |",
        "",
        "Busiest threads (ms of CPU per document, mostly in): "
        + "; ".join(
            f"{t['name'] or '?'} {t['cpu_ms_per_doc']:.3f} ({t['mostly']})"
            for t in prof["threads"][:6]
        )
        + ".",
        "",
    ]
    if prof["other_top_frames"]:
        rows.append(
            "Most frequent frames in *other*: "
            + "; ".join(f"`{frame}` {count}" for frame, count in prof["other_top_frames"][:5])
            + "."
        )
        rows.append("")
    return head + rows


def scale_out_md(
    tput: dict[str, Any], lat: dict[str, Any], scaled: list[dict[str, Any]]
) -> list[str]:
    if not scaled:
        return []
    rows = [
        "## Scale-out",
        "",
        "The throughput and latency phases with the workers as separate processes "
        "(`python -m finsent worker scorer|trends`, each its own FINSENT_WORKER_ID and HTTP "
        "port; Kafka's default 10 s session, see `SCALE_OUT_KAFKA`) on the same embedded "
        "broker and database, at the same offered load; the processes share this machine's "
        "cores with the broker and PostgreSQL.",
        "",
        "| layout | documents topic partitions | stored | pipeline docs/s | latency p50 "
        "| latency p99 | kept up | /healthz at end | exit codes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| one process, scorer + trends threads (above) | | {tput['stored']}/{tput['documents']} "
        f"| {tput['docs_per_s']} | {lat['p50_s']} s | {lat['p99_s']} s | {lat['kept_up']} | | |",
    ]
    for so in scaled:
        layout = (
            f"{so['scorers']} scorer process(es) + {so['trends']} trends, "
            f"{so['membership']} membership"
        )
        if "error" in so:
            reason = " ".join(so["error"].split())[:300].replace("|", "/")
            rows.append(f"| {layout} | failed: {reason} | | | | | | | |")
            continue
        health = sorted({str(c) for h in so["health_at_end"] for c in h.values()})
        codes = sorted({str(c) for e in so["exit_codes"] for c in e.values()})
        rows.append(
            f"| {layout} | {so['partitions']} "
            f"| {so['pipeline']['stored']}/{so['pipeline']['documents']} "
            f"| {so['pipeline']['docs_per_s']} "
            f"| {so['latency']['p50_s']} s | {so['latency']['p99_s']} s "
            f"| {so['latency']['kept_up']} | {', '.join(health)} | {', '.join(codes)} |"
        )
    return rows + [""]


def tables_md(tables: dict[str, Any]) -> list[str]:
    rows = [
        "## Tables at the end",
        "",
        f"Every phase's rows, in the bench database (autovacuum: {tables['autovacuum']}; "
        "statistics read after every other session ended).",
        "",
        "| table | live tuples | dead tuples | dead / live | inserted | updated (HOT) | total size |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in tables["tables"]:
        ratio = f"{t['n_dead_tup'] / t['n_live_tup']:.0%}" if t["n_live_tup"] else "–"
        rows.append(
            f"| {t['table']} | {t['n_live_tup']} | {t['n_dead_tup']} | {ratio} | {t['n_tup_ins']} "
            f"| {t['n_tup_upd']} ({t['n_tup_hot_upd']}) | {_size(t['total_bytes'])} |"
        )
    return rows + [""]


if __name__ == "__main__":
    raise SystemExit(main())
