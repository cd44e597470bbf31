"""Worker subprocesses (``python -m finsent.cli worker ROLE``) for the fault tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment pointing a worker process at the test's database, broker and topics."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    k = settings.kafka
    env.update(
        {
            "FINSENT_DATABASE_URL": settings.database_url or "",
            "FINSENT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
            "FINSENT_KAFKA_TOPIC_DOCUMENTS": settings.kafka_topic_documents,
            "FINSENT_KAFKA_TOPIC_SCORED": settings.kafka_topic_scored,
            "FINSENT_KAFKA_TOPIC_DLQ": settings.kafka_topic_dlq,
            "FINSENT_KAFKA_GROUP_PREFIX": settings.kafka_group_prefix,
            "FINSENT_KAFKA_PARTITIONS": str(settings.kafka_partitions),
            "FINSENT_KAFKA_STATIC_MEMBERSHIP": str(settings.kafka_static_membership).lower(),
            "FINSENT_KAFKA__SESSION_TIMEOUT_MS": str(k.session_timeout_ms),
            "FINSENT_KAFKA__HEARTBEAT_INTERVAL_MS": str(k.heartbeat_interval_ms),
            "FINSENT_KAFKA__MAX_POLL_INTERVAL_MS": str(k.max_poll_interval_ms),
            "FINSENT_KAFKA__REQUEST_TIMEOUT_MS": str(k.request_timeout_ms),
            "FINSENT_KAFKA__POLL_TIMEOUT_MS": str(k.poll_timeout_ms),
            "FINSENT_MODEL_DIR": str(settings.model_dir),
            "FINSENT_HTTP_PORT": "0",
            "FINSENT_SHUTDOWN_GRACE_S": str(settings.shutdown_grace_s),
            "FINSENT_EMBEDDED_PG_DIR": str(settings.embedded_pg_dir),
            "FINSENT_MODEL_REGISTRY_DIR": str(settings.model_registry_dir),
            "PYTHONPATH": str(ROOT),
        }
    )
    if settings.worker_id:
        env["FINSENT_WORKER_ID"] = settings.worker_id
    env.update(extra)
    return env


def start_worker(
    role: str, settings: Settings, log_path: Path, **extra: str
) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "finsent.cli", "worker", role],
            cwd=ROOT,
            env=worker_env(settings, **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout_s)
