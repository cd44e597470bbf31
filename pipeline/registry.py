"""The model registry in PostgreSQL (``model_versions``): which version is champion.

Exactly one champion at a time (a partial unique index enforces it). Workers poll
``current_champion`` between batches and hot-reload when the version changes; when the
table holds no champion they serve the shipped model in ``Settings.model_dir``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.errors import ModelError


@dataclass(frozen=True)
class ModelVersion:
    version: str
    status: str
    path: Path
    metrics: dict[str, Any]


def _row(row: Any) -> ModelVersion:
    return ModelVersion(
        version=row.version, status=row.status, path=Path(row.path), metrics=dict(row.metrics or {})
    )


def current_champion(bind: Engine | Connection) -> ModelVersion | None:
    """The champion version, or None when none is registered."""
    query = sa.text(
        "select version, status, path, metrics from model_versions where status = 'champion'"
    )
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            row = conn.execute(query).first()
    else:
        row = bind.execute(query).first()
    return _row(row) if row is not None else None


def list_versions(engine: Engine) -> list[ModelVersion]:
    """Every registered version, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "select version, status, path, metrics from model_versions order by created_at desc, version desc"
            )
        ).all()
    return [_row(r) for r in rows]


def get_version(bind: Engine | Connection, version: str) -> ModelVersion | None:
    """One registered version, or None."""
    query = sa.text("select version, status, path, metrics from model_versions where version = :v")
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            row = conn.execute(query, {"v": version}).first()
    else:
        row = bind.execute(query, {"v": version}).first()
    return _row(row) if row is not None else None


def check_model_dir(path: Path) -> dict[str, Any]:
    """The manifest of a complete model directory; ModelError naming what is missing.

    Only complete directories are registered or promoted, so a worker never hot-reloads a
    half-written model (retraining writes into a temporary directory and renames it).
    """
    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        raise ModelError(
            f"{path} is not a model directory (no manifest.json); "
            "give the directory 'finsent train' or 'finsent retrain' wrote"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{manifest_path} is unreadable ({exc}); re-export the model") from exc
    files = [manifest.get("tokenizer", "tokenizer.json")]
    classifier = manifest.get("classifier") or {}
    files += [classifier[k] for k in ("cpu", "gpu") if classifier.get(k)]
    memory = manifest.get("memory") or {}
    if memory.get("file"):
        files.append(memory["file"])
    missing = [f for f in files if not (Path(path) / f).is_file()]
    if missing:
        raise ModelError(
            f"model directory {path} is incomplete (missing {', '.join(missing)}); re-export it"
        )
    return dict(manifest)


def register_version(
    conn: Connection,
    version: str,
    path: Path,
    metrics: dict[str, Any],
    status: str = "challenger",
    training_run_id: int | None = None,
) -> None:
    """Insert a version (in the caller's transaction). Promote it with ``promote``.

    The directory must be complete (``check_model_dir``); ModelError when the version is
    already registered.
    """
    check_model_dir(path)
    if get_version(conn, version) is not None:
        raise ModelError(
            f"model version {version!r} is already registered; see 'finsent models list'"
        )
    conn.execute(
        sa.text(
            "insert into model_versions (version, status, path, metrics, training_run_id) "
            "values (:v, :s, :p, cast(:m as jsonb), :r)"
        ),
        {"v": version, "s": status, "p": str(path), "m": json.dumps(metrics), "r": training_run_id},
    )


def promote(conn: Connection, version: str) -> None:
    """Make ``version`` the champion and retire the previous one, atomically (workers
    polling ``current_champion`` see either the old or the new champion, never none).
    ModelError when the version is unknown or its directory is incomplete."""
    target = get_version(conn, version)
    if target is None:
        raise ModelError(f"model version {version!r} is not registered; see 'finsent models list'")
    check_model_dir(target.path)
    conn.execute(sa.text("select pg_advisory_xact_lock(hashtext('finsent.model_versions'))"))
    conn.execute(
        sa.text(
            "update model_versions set status = 'retired' where status = 'champion' and version <> :v"
        ),
        {"v": version},
    )
    conn.execute(
        sa.text(
            "update model_versions set status = 'champion', promoted_at = now() where version = :v"
        ),
        {"v": version},
    )


def previous_champion(conn: Connection) -> ModelVersion | None:
    """The version that was champion before the current one: the retired version promoted
    most recently (a rolled-back version is marked 'rejected', so it is never chosen)."""
    row = conn.execute(
        sa.text(
            "select version, status, path, metrics from model_versions "
            "where status = 'retired' and promoted_at is not null order by promoted_at desc limit 1"
        )
    ).first()
    return _row(row) if row is not None else None


def rollback(conn: Connection) -> tuple[ModelVersion, ModelVersion]:
    """Demote the current champion (status 'rejected', so a second rollback goes further
    back instead of flipping between two versions) and restore the previous one.

    Returns ``(demoted, restored)``. ModelError when there is nothing to roll back to.
    """
    conn.execute(sa.text("select pg_advisory_xact_lock(hashtext('finsent.model_versions'))"))
    current = current_champion(conn)
    if current is None:
        raise ModelError(
            "no champion is registered, so there is nothing to roll back; see 'finsent models list'"
        )
    previous = previous_champion(conn)
    if previous is None:
        raise ModelError(
            f"{current.version} is the only version that was ever champion; nothing to roll back to "
            "(promote another version with 'finsent models promote V')"
        )
    check_model_dir(previous.path)
    conn.execute(
        sa.text("update model_versions set status = 'rejected' where version = :v"),
        {"v": current.version},
    )
    conn.execute(
        sa.text(
            "update model_versions set status = 'champion', promoted_at = now() where version = :v"
        ),
        {"v": previous.version},
    )
    restored = get_version(conn, previous.version)
    assert restored is not None
    return current, restored
