"""End-to-end benchmark of the stream: replay -> Kafka -> scorer -> trends -> PostgreSQL.

Measured in one run, on the same machine and model:

1. **bare model**: ``Classifier.classify`` over the benchmark texts in batches of
   ``Settings.batch.max_size`` (what the scorer calls), documents/s;
2. **pipeline throughput**: N documents already in the documents topic, scorer and trends
   started in this process (as ``finsent run`` does, sharing the cores), documents/s from
   the first stored prediction to the last trend point (PostgreSQL timestamps);
3. **latency at a fixed offered load**: documents produced at half the bare model's rate
   for ``--latency-seconds``; per document, the time from its send to its last trend point
   commit-side timestamp (``trend_points.created_at``, the applying transaction's start,
   so a few milliseconds optimistic); p50 / p99.

Results go to ``bench/results/pipeline.json`` and ``.md``. Run: ``python bench/pipeline.py``
(the shipped model in finsent/model/, or ``--model-dir``). Uses the embedded broker and a
throwaway database on the local PostgreSQL (or FINSENT_DATABASE_URL's server).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
import uuid
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
from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics  # noqa: E402
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


def phase_settings(base: Settings, name: str) -> Settings:
    suffix = f"{name}.{uuid.uuid4().hex[:6]}"
    return base.model_copy(
        update={
            "kafka_topic_documents": f"bench.documents.{suffix}",
            "kafka_topic_scored": f"bench.scored.{suffix}",
            "kafka_topic_dlq": f"bench.dlq.{suffix}",
        }
    )


class Workers:
    def __init__(self, settings: Settings, engine: sa.engine.Engine) -> None:
        self.stop = threading.Event()
        self.roles = [
            Scorer(settings, settings.kafka_bootstrap or "", engine),
            Trends(settings, settings.kafka_bootstrap or "", engine),
        ]
        self.threads = [
            threading.Thread(target=r.run, args=(self.stop,), daemon=True) for r in self.roles
        ]

    def __enter__(self) -> Workers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


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
    settings: Settings, engine: sa.engine.Engine, docs: list[Document]
) -> dict[str, Any]:
    s = phase_settings(settings, "tput")
    ensure_kafka_topics(s.kafka_bootstrap or "", s.kafka_topics, s.kafka_partitions)
    producer = make_producer(s, s.kafka_bootstrap or "")
    for d in docs:
        producer.send(s.kafka_topic_documents, key=d.id.encode(), value=d.to_json_bytes())
    producer.flush()
    producer.close()
    ids = [d.id for d in docs]
    wall = time.perf_counter()
    with Workers(s, engine), GroupProgress(s.kafka_bootstrap or "") as progress:
        assert progress.wait_caught_up(
            s.group_id("scorer"), s.kafka_topic_documents, timeout_s=900, min_records=len(docs)
        )
        assert progress.wait_caught_up(s.group_id("trends"), s.kafka_topic_scored, timeout_s=900)
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
    settings: Settings, engine: sa.engine.Engine, docs: list[Document], rate: float
) -> dict[str, Any]:
    s = phase_settings(settings, "lat")
    ensure_kafka_topics(s.kafka_bootstrap or "", s.kafka_topics, s.kafka_partitions)
    sent: dict[str, float] = {}
    with Workers(s, engine), GroupProgress(s.kafka_bootstrap or "") as progress:
        producer = make_producer(s, s.kafka_bootstrap or "", linger_ms=0)
        # Start the clock once both groups have joined and served a document: a static
        # member's first join on tansu takes 6-12 s, which a fixed sleep did not cover, so
        # the old figures measured the join, not the pipeline (p50 = the join's remainder).
        warm = documents(1, "warm", docs[0].published_at - timedelta(minutes=1))[0]
        producer.send(s.kafka_topic_documents, key=warm.id.encode(), value=warm.to_json_bytes())
        producer.flush()
        joined = progress.wait_caught_up(
            s.group_id("scorer"), s.kafka_topic_documents, timeout_s=120, min_records=1
        ) and progress.wait_caught_up(
            s.group_id("trends"), s.kafka_topic_scored, timeout_s=120, min_records=1
        )
        assert joined, "the workers did not serve the warm-up document within 120 s"
        started = time.time()
        for i, d in enumerate(docs):
            due = started + i / rate
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            sent[d.id] = time.time()
            producer.send(s.kafka_topic_documents, key=d.id.encode(), value=d.to_json_bytes())
        producer.flush()
        producer.close()
        offered_s = time.time() - started
        kept_up = progress.wait_caught_up(
            s.group_id("scorer"), s.kafka_topic_documents, timeout_s=120, min_records=len(docs) + 1
        )
        kept_up = kept_up and progress.wait_caught_up(
            s.group_id("trends"), s.kafka_topic_scored, timeout_s=120
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
        "--note", default="", help="a line recorded with the results (e.g. which model and why)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline")
    args = parser.parse_args()

    base = load_settings(model_dir=args.model_dir, kafka=QUICK)
    tune_interpreter(base)  # what finsent run does for the process its workers share
    manifest = read_manifest(base.model_dir)
    admin = base.database_url or db.database_url(base)
    name = f"finsent_bench_{os.getpid()}"
    admin_engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin).set(database=name).render_as_string(hide_password=False)
    broker = EmbeddedBroker().start()
    try:
        db.upgrade(url)
        engine = db.make_engine(url)
        settings = base.model_copy(
            update={"database_url": url, "kafka_bootstrap": broker.bootstrap}
        )
        docs = documents(args.documents, "t")
        bare = bare_model(settings, docs)
        print(f"bare model: {bare:.1f} docs/s", flush=True)
        tput = throughput(settings, engine, docs)
        print(f"pipeline: {tput}", flush=True)
        n_lat = min(args.max_latency_documents, max(50, int(bare / 2 * args.latency_seconds)))
        # Later event times than the throughput phase's: the keys are the same, and older
        # documents would make every key rewind (a different measurement).
        later = docs[-1].published_at + timedelta(hours=1)
        lat = latency(settings, engine, documents(n_lat, "l", later), bare / 2)
        print(f"latency: {lat}", flush=True)
        engine.dispose()
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
        "pipeline": tput,
        "ratio_pipeline_to_bare": round(tput["docs_per_s"] / bare, 3),
        "latency_at_half_load": lat,
        "targets": {"ratio": ">= 0.8", "p99_s_at_half_load": "< 1.0"},
        "load_average_at_end": os.getloadavg(),
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Pipeline benchmark",
        "",
        f"{result['when']}, {os.cpu_count()} CPUs, model `{manifest['version']}`"
        + (
            " (the TINY test model: not representative of the shipped one)"
            if manifest.get("tiny")
            else ""
        )
        + f", batch {base.batch.max_size} / {base.batch.max_wait_ms} ms. Command: `python bench/pipeline.py`.",
        "",
        "| measure | value | target |",
        "| --- | --- | --- |",
        f"| bare model | {bare:.1f} docs/s | |",
        f"| pipeline (replay → Kafka → scorer → trends → PostgreSQL) | {tput['docs_per_s']} docs/s | |",
        f"| ratio | {result['ratio_pipeline_to_bare']:.0%} | ≥ 80% |",
        f"| latency p50 at {lat['offered_docs_per_s']} docs/s offered | {lat['p50_s']} s | |",
        f"| latency p99 at {lat['offered_docs_per_s']} docs/s offered | {lat['p99_s']} s | < 1 s |",
        "",
        f"Load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "(the broker, PostgreSQL and both workers share the machine's cores).",
        "",
    ] + ([args.note, ""] if args.note else [])
    args.out.with_suffix(".md").write_text("\n".join(md))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
