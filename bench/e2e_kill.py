"""End-to-end kill bench: ``finsent run`` against an external broker, killed twice.

What a user does when they try finsent for real: a Kafka-protocol broker of their own
(tansu, started here as a separate process so a daemon crash keeps its log), a fresh
database, ``finsent ingest replay FILE`` with 3,000 distinct real-style headlines, and
``finsent run`` killed with ``-9`` twice, each time 12 s after it started, then left to
finish. A run passes when documents = predictions = distinct scored documents = input
within the deadline (5 minutes from the first start) and no document is scored twice.

    python bench/e2e_kill.py                    # 3 runs, 3,000 documents, kills at 12 s
    python bench/e2e_kill.py --runs 5 --kill-after 8

The headlines are written here from the sample stream's templates about fictional
companies (``finsent/demo/make_sample.py``); every one is distinct. Results:
bench/results/e2e_kill.json and e2e_kill.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from finsent.demo import make_sample  # noqa: E402
from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics  # noqa: E402
from tests.conftest import ADMIN_URL, create_database, drop_database  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SOURCES = ("wire", "markets-daily", "social")
DESKS = ("New York", "London", "Frankfurt", "Singapore", "Toronto", "Sydney", "Zurich", "Chicago")


def write_headlines(path: Path, n: int, seed: int) -> float:
    """``n`` distinct headlines, about a week of event time, as a replay CSV; returns the
    event-time span in seconds."""
    rng = random.Random(seed)
    when = datetime(2026, 3, 2, tzinfo=UTC)
    seen: set[str] = set()
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "source", "published_at", "text"])
        i = 0
        first = when
        while i < n:
            ticker = rng.choice(list(make_sample.COMPANIES))
            pool = rng.choices(
                [make_sample.BULLISH, make_sample.NEUTRAL, make_sample.BEARISH, make_sample.SURGE],
                weights=[0.35, 0.35, 0.2, 0.1],
            )[0]
            title = rng.choice(pool).format(name=make_sample.COMPANIES[ticker], t=ticker)
            text = f"{title} ({rng.choice(DESKS)} desk, item {rng.randint(1, 99)})"
            if text in seen:
                continue
            seen.add(text)
            when += timedelta(seconds=rng.randint(20, 400))
            out.writerow(
                [
                    f"e2e-{i:05d}",
                    f"e2e-{rng.choice(SOURCES)}",
                    when.isoformat().replace("+00:00", "Z"),
                    text,
                ]
            )
            i += 1
    return (when - first).total_seconds()


def daemon_env(bootstrap: str, database_url: str, prefix: str, work: Path) -> dict[str, str]:
    """A user's environment: their broker and database, their topics; production timings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env.update(
        {
            "FINSENT_KAFKA_BOOTSTRAP": bootstrap,
            "FINSENT_DATABASE_URL": database_url,
            "FINSENT_KAFKA_TOPIC_DOCUMENTS": f"{prefix}.documents",
            "FINSENT_KAFKA_TOPIC_SCORED": f"{prefix}.scored",
            "FINSENT_KAFKA_TOPIC_DLQ": f"{prefix}.dlq",
            "FINSENT_KAFKA_GROUP_PREFIX": prefix,
            "FINSENT_HTTP_PORT": "0",
            "FINSENT_WORKER_ID": "e2e-host",
            "FINSENT_MODEL_REGISTRY_DIR": str(work / "registry"),
            "FINSENT_EMBEDDED_PG_DIR": str(work / "pg"),
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def finsent(*args: str) -> list[str]:
    return [sys.executable, "-m", "finsent.cli", *args]


def counts(engine: sa.engine.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM documents), (SELECT count(*) FROM predictions),"
                " (SELECT count(DISTINCT document_id) FROM predictions),"
                " (SELECT count(*) FROM (SELECT 1 FROM predictions GROUP BY document_id, model_version"
                "  HAVING count(*) > 1) d)"
            )
        ).one()
    return {
        "documents": row[0],
        "predictions": row[1],
        "distinct_scored": row[2],
        "duplicates": row[3],
    }


def one_run(
    broker: EmbeddedBroker,
    n_docs: int,
    kill_after_s: float,
    kills: int,
    deadline_s: float,
    replay_s: float,
    seed: int,
    work: Path,
) -> dict[str, object]:
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    url = create_database(ADMIN_URL, prefix="finsent_e2e")
    engine = sa.create_engine(url)
    env = daemon_env(broker.bootstrap, url, prefix, work)
    log_path = work / f"{prefix}.log"
    result: dict[str, object] = {"prefix": prefix, "log": str(log_path)}
    try:
        subprocess.run(finsent("db", "upgrade"), env=env, cwd=ROOT, check=True, capture_output=True)
        ensure_kafka_topics(
            broker.bootstrap, [f"{prefix}.documents", f"{prefix}.scored", f"{prefix}.dlq"], 4
        )
        data = work / f"{prefix}.csv"
        speed = write_headlines(data, n_docs, seed) / replay_s
        t0 = time.monotonic()
        with log_path.open("ab") as log:
            # The replay runs beside the daemon, as a user's ingest would: documents keep
            # arriving across the kills.
            replay = subprocess.Popen(
                finsent("ingest", "replay", str(data), "--speed", f"{speed:.1f}"),
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            kill_times, scored_at_kill = [], []
            for _ in range(kills):
                proc = subprocess.Popen(
                    finsent("run"), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
                )
                time.sleep(kill_after_s)
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                kill_times.append(round(time.monotonic() - t0, 1))
                scored_at_kill.append(counts(engine)["predictions"])
            proc = subprocess.Popen(
                finsent("run"), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
            done_s = None
            seen: dict[str, int] = {}
            while time.monotonic() - t0 < deadline_s:
                seen = counts(engine)
                if seen["documents"] == seen["predictions"] == seen["distinct_scored"] == n_docs:
                    done_s = round(time.monotonic() - t0, 1)
                    break
                time.sleep(1.0)
            replay_rc = replay.wait(timeout=60)
            proc.send_signal(signal.SIGTERM)
            daemon_rc = proc.wait(timeout=60)
        time.sleep(0.5)
        final = counts(engine)
        result.update(
            {
                "kills_at_s": kill_times,
                "scored_at_kills": scored_at_kill,
                "complete_at_s": done_s,
                "replay_rc": replay_rc,
                "daemon_rc": daemon_rc,
                **final,
                "passed": bool(
                    done_s is not None
                    and final["duplicates"] == 0
                    and final["documents"] == final["predictions"] == n_docs
                ),
            }
        )
    finally:
        engine.dispose()
        drop_database(ADMIN_URL, url)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--kills", type=int, default=2)
    ap.add_argument(
        "--kill-after", type=float, default=12.0, help="seconds from each start to its kill -9"
    )
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds from the first start")
    ap.add_argument(
        "--replay-seconds",
        type=float,
        default=45.0,
        help="the replay's wall-clock length (event time compressed to fit), so documents arrive across the kills",
    )
    args = ap.parse_args()
    runs = []
    with (
        tempfile.TemporaryDirectory(prefix="finsent-e2e-") as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker,
    ):
        for i in range(args.runs):
            r = one_run(
                broker,
                args.docs,
                args.kill_after,
                args.kills,
                args.deadline,
                args.replay_seconds,
                seed=i,
                work=Path(tmp),
            )
            runs.append(r)
            print(
                f"run {i + 1}/{args.runs}: {'PASS' if r['passed'] else 'FAIL'}  kills at {r['kills_at_s']} s "
                f"(scored then: {r['scored_at_kills']}), "
                f"complete at {r['complete_at_s']} s; documents {r['documents']}, predictions "
                f"{r['predictions']}, distinct {r['distinct_scored']}, duplicates {r['duplicates']}",
                flush=True,
            )
            if not r["passed"]:
                tail = Path(str(r["log"])).read_text(errors="replace").splitlines()[-30:]
                print("\n".join(tail))
    passed = sum(1 for r in runs if r["passed"])
    complete = sorted(float(r["complete_at_s"]) for r in runs if r["complete_at_s"] is not None)  # type: ignore[arg-type]
    summary = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "docs": args.docs,
        "kills": args.kills,
        "kill_after_s": args.kill_after,
        "deadline_s": args.deadline,
        "passed": passed,
        "runs": len(runs),
        "complete_s": complete,
        "details": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e_kill.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = "\n".join(
        f"| {i + 1} | {r['kills_at_s']} | {r['scored_at_kills']} | {r['complete_at_s']} | {r['documents']} | {r['predictions']} | "
        f"{r['distinct_scored']} | {r['duplicates']} | {'pass' if r['passed'] else 'FAIL'} |"
        for i, r in enumerate(runs)
    )
    (RESULTS / "e2e_kill.md").write_text(
        f"# End-to-end kill bench\n\n{summary['when']}, {summary['cpus']} CPUs. Command: `{summary['command']}`.\n\n"
        f"External broker (tansu, its own process), fresh database, `finsent ingest replay` of {args.docs} distinct "
        f"headlines (paced over {args.replay_seconds:g} s) beside `finsent run`, which is killed with -9 {args.kills} times, {args.kill_after:g} s after each "
        f"start, then restarted. Pass: documents = predictions = distinct scored = {args.docs} within "
        f"{args.deadline:g} s of the first start, no document scored twice.\n\n"
        f"**{passed} of {len(runs)} passed.**\n\n"
        "| run | kills at (s) | scored at the kills | complete at (s) | documents | predictions | distinct | duplicates | result |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" + rows + "\n"
    )
    print(
        f"{passed}/{len(runs)} passed; complete at {complete} s; results in {RESULTS / 'e2e_kill.md'}"
    )
    return 0 if passed == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
