"""PostgreSQL access: engines, Alembic migrations, schema status.

The schema is owned by Alembic (``migrations/``); code talks SQL through SQLAlchemy Core
(``sqlalchemy.text``) on engines made here. Engines use psycopg 3 and ``pool_pre_ping``
so a database restart costs a retry, not a crashed worker.

A URL shown to anyone (log lines, error messages, ``finsent status``) goes through
``pipeline.settings.redact_url``; a driver's error text is folded to one line, since the
CLI prints an error as a single line.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from pipeline.embedded import resolve_database_url
from pipeline.errors import DatabaseError
from pipeline.settings import Settings, get_settings, redact_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
T = TypeVar("T")


@functools.lru_cache(maxsize=8)
def _resolved(configured: str | None, embedded_dir: str) -> tuple[str, str]:
    return resolve_database_url(configured, Path(embedded_dir))


def resolve(settings: Settings | None = None) -> tuple[str, str]:
    """``(url, how)``: the URL finsent uses and a phrase saying where it came from (for
    error messages; show the URL only through ``redact_url``)."""
    s = settings or get_settings()
    return _resolved(s.database_url, str(s.embedded_pg_dir))


def database_url(settings: Settings | None = None) -> str:
    """The URL finsent uses: configured, else local 127.0.0.1:5432, else embedded."""
    s = settings or get_settings()
    return _resolved(s.database_url, str(s.embedded_pg_dir))[0]


def database_description(settings: Settings | None = None) -> str:
    """One line saying which database is in use (for start-up logs and `finsent status`)."""
    url, how = resolve(settings)
    return f"{how}: {redact_url(url)}"


def driver_reason(exc: BaseException) -> str:
    """The driver's own error text (``exc.orig`` of a SQLAlchemy error), on one line.

    psycopg's messages span lines ("...Connection refused\n\tIs the server running...");
    the SQLAlchemy wrapper adds the statement and a link, which help nobody here.
    """
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def unreachable(url: str, exc: BaseException, how: str = "") -> DatabaseError:
    """The one-line error for a database that cannot be reached: which one (password
    hidden), why, and what to do. ``how`` says where the URL came from."""
    if not how or "FINSENT_DATABASE_URL" in how:
        source = "from FINSENT_DATABASE_URL"
    else:
        source = f"{how}; FINSENT_DATABASE_URL is unset"
    reason = driver_reason(exc)
    if not reason.endswith((".", "?", "!")):
        reason += "."
    return DatabaseError(
        f"cannot connect to the database {redact_url(url)} ({source}): {reason} "
        "Start PostgreSQL there, or point FINSENT_DATABASE_URL (or --database-url) at a running server"
    )


@contextlib.contextmanager
def connection_errors(url: str, how: str = "") -> Iterator[None]:
    """Inside the block, a failure to connect becomes :func:`unreachable`'s DatabaseError
    (one line for the CLI, exit 2) instead of a SQLAlchemy traceback. Refused, unresolvable,
    timed out or rejected credentials are all OperationalError; SQL errors pass through."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise unreachable(url, exc, how) from exc


def make_engine(url: str | None = None, *, pool_size: int = 5) -> Engine:
    """An engine for ``url`` (default: the resolved database)."""
    return sa.create_engine(
        url or database_url(),
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"connect_timeout": 5},
    )


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent)."""
    try:
        command.upgrade(alembic_config(url), revision)
    except sa.exc.OperationalError as exc:
        raise DatabaseError(
            f"cannot migrate the database {redact_url(url)}: {driver_reason(exc)}; is PostgreSQL "
            "running? Check FINSENT_DATABASE_URL (or --database-url)"
        ) from exc


def downgrade(url: str, revision: str = "base") -> None:
    """Undo migrations down to ``revision``."""
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """The newest revision the code ships."""
    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None when never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def retry_db(
    fn: Callable[[], T],
    *,
    what: str,
    attempts: int = 0,
    base_delay_s: float = 0.5,
    max_delay_s: float = 15.0,
    stop: Callable[[], bool] | None = None,
) -> T:
    """Run ``fn`` until it stops raising connection errors, with capped exponential backoff.

    ``attempts=0`` retries forever (workers wait for the database to come back rather than
    crash); ``stop()`` returning True ends the wait by re-raising the last error.
    Only connection-level errors are retried; a SQL error is raised at once.
    """
    delay = base_delay_s
    tried = 0
    while True:
        try:
            return fn()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if not getattr(exc, "connection_invalidated", True) and not _is_connection_error(exc):
                raise
            tried += 1
            if (attempts and tried >= attempts) or (stop is not None and stop()):
                raise DatabaseError(
                    f"{what}: database unavailable after {tried} tries: {driver_reason(exc)}"
                ) from exc
            log.warning(
                "%s: database unavailable (%s); retrying in %.1fs", what, driver_reason(exc), delay
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


def _is_connection_error(exc: sa.exc.DBAPIError) -> bool:
    text = str(exc.orig).lower()
    return any(
        word in text
        for word in ("connection", "server closed", "terminating", "could not connect", "timeout")
    )
