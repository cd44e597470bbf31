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
    return ModelVersion(version=row.version, status=row.status, path=Path(row.path), metrics=dict(row.metrics or {}))


def current_champion(bind: Engine | Connection) -> ModelVersion | None:
    """The champion version, or None when none is registered."""
    query = sa.text("select version, status, path, metrics from model_versions where status = 'champion'")
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            row = conn.execute(query).first()
    else:
        row = bind.execute(query).first()
    return _row(row) if row is not None else None


def list_versions(engine: Engine) -> list[ModelVersion]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "select version, status, path, metrics from model_versions order by created_at desc"
        )).all()
    return [_row(r) for r in rows]


def register_version(conn: Connection, version: str, path: Path, metrics: dict[str, Any],
                     status: str = "challenger", training_run_id: int | None = None) -> None:
    """Insert a version (in the caller's transaction). Promote it with ``promote``."""
    conn.execute(sa.text(
        "insert into model_versions (version, status, path, metrics, training_run_id) "
        "values (:v, :s, :p, cast(:m as jsonb), :r)"
    ), {"v": version, "s": status, "p": str(path), "m": json.dumps(metrics), "r": training_run_id})


def promote(conn: Connection, version: str) -> None:
    """Make ``version`` the champion and retire the previous one, atomically."""
    exists = conn.execute(sa.text("select 1 from model_versions where version = :v"), {"v": version}).first()
    if exists is None:
        raise ModelError(f"model version {version!r} is not registered; see 'finsent models list'")
    conn.execute(sa.text("select pg_advisory_xact_lock(hashtext('finsent.model_versions'))"))
    conn.execute(sa.text("update model_versions set status = 'retired' where status = 'champion' and version <> :v"),
                 {"v": version})
    conn.execute(sa.text("update model_versions set status = 'champion', promoted_at = now() where version = :v"),
                 {"v": version})
