"""Silences: stop notifications of matching alerts for a while, not their evaluation.

A silence's ``matchers`` is a mapping of label -> value; it matches an alert when every
pair equals the alert's label (labels: alertname, rule, key, key_kind, name, severity and
the rule's own). Deliveries of a matching alert queued or claimed while the silence is
active become 'silenced' (recorded, never sent); the alert itself still goes pending,
firing and resolved, so the record stays complete.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.errors import InputError


@dataclass(frozen=True)
class Silence:
    id: int
    matchers: dict[str, Any]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    active: bool


def parse_matchers(items: list[str]) -> dict[str, str]:
    """``['rule=negative-share', 'key=topic:Earnings']`` -> a matchers mapping."""
    matchers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise InputError(
                f"--match {item!r}: write label=value, e.g. --match rule=negative-share "
                "or --match key=entity:AAPL"
            )
        matchers[name.strip()] = value.strip()
    if not matchers:
        raise InputError("a silence needs at least one --match label=value")
    return matchers


def add(
    engine: Engine,
    matchers: dict[str, str],
    duration: timedelta,
    *,
    comment: str = "",
    created_by: str | None = None,
    starts_at: datetime | None = None,
) -> int:
    """Create a silence active from ``starts_at`` (default now) for ``duration``."""
    if duration.total_seconds() <= 0:
        raise InputError("--for must be a positive duration such as 30m or 2h")
    with engine.begin() as conn:
        return int(
            conn.execute(
                sa.text("""
            INSERT INTO silences (matchers, starts_at, ends_at, created_by, comment)
            VALUES (CAST(:m AS jsonb), coalesce(:start, now()),
                    coalesce(:start, now()) + make_interval(secs => :secs), :by, :comment)
            RETURNING id"""),
                {
                    "m": json.dumps(matchers),
                    "start": starts_at,
                    "secs": duration.total_seconds(),
                    "by": created_by or _user(),
                    "comment": comment,
                },
            ).scalar_one()
        )


def list_silences(engine: Engine, *, include_expired: bool = False) -> list[Silence]:
    where = "" if include_expired else "WHERE ends_at > now()"
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f"""
            SELECT id, matchers, starts_at, ends_at, created_by, comment,
                   (starts_at <= now() AND ends_at > now()) AS active
            FROM silences {where} ORDER BY id""")
        ).all()
    return [
        Silence(r.id, dict(r.matchers), r.starts_at, r.ends_at, r.created_by, r.comment, r.active)
        for r in rows
    ]


def expire(engine: Engine, silence_id: int) -> bool:
    """End a silence now. False when it does not exist or has already ended."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.text("""
            UPDATE silences SET ends_at = now(),
                   starts_at = least(starts_at, now() - interval '1 microsecond')
            WHERE id = :id AND ends_at > now()"""),
            {"id": silence_id},
        )
    return result.rowcount == 1


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "finsent"
