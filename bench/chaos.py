"""Chaos bench: repeats a chaos run N times against a broker the workers reach over TCP
(started here, outside the worker processes, so restarts keep its log) and a real
PostgreSQL, and prints the pass count and the resume times of killed workers.

    python bench/chaos.py --runs 20                # one scorer + one trends, kill -9 at random
    python bench/chaos.py --runs 5 --churn         # 2+2 members joining, leaving, killed
    python bench/chaos.py --runs 5 --dynamic       # without static membership

Resume time: a restarted worker's process start to its first partition assignment.
Results: bench/results/chaos.json and chaos.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from pipeline import db  # noqa: E402
from pipeline.embedded import EmbeddedBroker  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402
from tests.conftest import ADMIN_URL, TEST_KAFKA, create_database, drop_database  # noqa: E402
from tests.faults.chaos import run_chaos  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument(
        "--churn", action="store_true", help="2 scorers + 2 trends joining and leaving too"
    )
    ap.add_argument(
        "--dynamic", action="store_true", help="dynamic group membership instead of static"
    )
    ap.add_argument("--session-ms", type=int, default=TEST_KAFKA.session_timeout_ms)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "chaos")
    args = ap.parse_args()

    from training.tiny import build_tiny_model_dir

    work = Path(tempfile.mkdtemp(prefix="finsent-chaos-"))
    model_dir = build_tiny_model_dir(work / "model")
    broker = EmbeddedBroker(log_path=work / "tansu.log").start()
    url = create_database(ADMIN_URL, prefix="finsent_chaos")
    db.upgrade(url)
    engine = db.make_engine(url)
    kafka = TEST_KAFKA.model_copy(
        update={
            "session_timeout_ms": args.session_ms,
            "heartbeat_interval_ms": max(300, args.session_ms // 3),
        }
    )
    runs = []
    try:
        for run in range(args.runs):
            with engine.begin() as conn:
                tables = (
                    conn.execute(
                        sa.text(
                            "select tablename from pg_tables where schemaname = 'public' "
                            "and tablename <> 'alembic_version'"
                        )
                    )
                    .scalars()
                    .all()
                )
                conn.execute(
                    sa.text(
                        "TRUNCATE "
                        + ", ".join(f'"{t}"' for t in tables)
                        + " RESTART IDENTITY CASCADE"
                    )
                )
            suffix = uuid.uuid4().hex[:8]
            settings = load_settings(
                database_url=url,
                kafka_bootstrap=broker.bootstrap,
                kafka=kafka,
                kafka_topic_documents=f"finsent.documents.{suffix}",
                kafka_topic_scored=f"finsent.scored.{suffix}",
                kafka_topic_dlq=f"finsent.dlq.{suffix}",
                kafka_group_prefix=f"chaos-{suffix}",
                model_registry_dir=work / "registry",
                embedded_pg_dir=work / "pg",
                http_port=0,
            )
            run_dir = work / f"run{run:02d}"
            run_dir.mkdir()
            result = run_chaos(
                settings,
                engine,
                model_dir,
                run_dir,
                seed=1000 + run,
                n_docs=args.docs,
                scorers=2 if args.churn else 1,
                trends=2 if args.churn else 1,
                churn=args.churn,
                static=not args.dynamic,
            )
            runs.append(result)
            resume = ", ".join(f"{r:.1f}" for r in result.resume_s)
            print(
                f"run {run + 1}/{args.runs}: {'PASS' if result.passed else 'FAIL'} in {result.elapsed_s:.0f}s; "
                f"resume s: [{resume}]; killed before resuming: {result.killed_before_resuming}; "
                f"never resumed: {result.unresumed}",
                flush=True,
            )
            if not result.passed:
                print(
                    "  " + (result.error or "").splitlines()[0] + f" (logs: {run_dir})", flush=True
                )
    finally:
        engine.dispose()
        drop_database(ADMIN_URL, url)
        broker.stop()
    resumes = sorted(r for res in runs for r in res.resume_s)
    p95 = resumes[min(len(resumes) - 1, int(round(0.95 * (len(resumes) - 1))))] if resumes else None
    summary = {
        "runs": len(runs),
        "passed": sum(r.passed for r in runs),
        "docs_per_run": args.docs,
        "churn": args.churn,
        "membership": "dynamic" if args.dynamic else "static",
        "session_timeout_ms": args.session_ms,
        "resumes": len(resumes),
        "resume_p50_s": statistics.median(resumes) if resumes else None,
        "resume_p95_s": p95,
        "resume_max_s": max(resumes) if resumes else None,
        "never_resumed": sum(r.unresumed for r in runs),
        "killed_before_resuming": sum(r.killed_before_resuming for r in runs),
        "target_resume_s": args.session_ms / 1000 + 5,
        "failures": [(r.error or "").splitlines()[0] for r in runs if not r.passed],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(
        f"# chaos bench\n\n{summary['passed']}/{summary['runs']} runs passed ({args.docs} documents each, "
        f"{summary['membership']} membership, session {args.session_ms} ms, churn {args.churn}).\n\n"
        f"Resume after kill -9 (process start to first partitions), {len(resumes)} restarts: "
        f"p50 {summary['resume_p50_s']}, p95 {p95}, max {summary['resume_max_s']} s; target "
        f"<= {summary['target_resume_s']} s. Never resumed: {summary['never_resumed']}.\n"
    )
    print(json.dumps(summary, indent=2))
    return 0 if summary["passed"] == summary["runs"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
