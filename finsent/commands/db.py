"""``finsent db upgrade|downgrade|status`` and ``finsent status``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.settings import Settings


def register(sub: Any) -> None:
    p_db = sub.add_parser("db", help="database schema: upgrade, downgrade, status")
    db_sub = p_db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (default: to the newest)")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=db_upgrade)
    down = db_sub.add_parser("downgrade", help="undo migrations (e.g. 'base' removes every table)")
    down.add_argument("revision")
    down.set_defaults(func=db_downgrade)
    st = db_sub.add_parser("status", help="current and newest schema revision")
    st.set_defaults(func=db_status)

    p_status = sub.add_parser("status", help="broker, database, schema revision and champion model")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_status.set_defaults(func=status)


def db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import db

    url, how = db.resolve(settings)
    db.upgrade(url, args.revision)
    engine = db.make_engine(url)
    try:
        with db.connection_errors(url, how):
            print(
                f"database at revision {db.current_revision(engine)} ({db.database_description(settings)})"
            )
    finally:
        engine.dispose()
    return 0


def db_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import db

    url, how = db.resolve(settings)
    engine = db.make_engine(url)
    try:
        with db.connection_errors(url, how):
            db.downgrade(url, args.revision)
            print(f"database at revision {db.current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


def db_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import db

    url, how = db.resolve(settings)
    engine = db.make_engine(url)
    try:
        with db.connection_errors(url, how):
            current, head = db.current_revision(engine), db.head_revision()
    finally:
        engine.dispose()
    print(f"current: {current or '(empty database)'}\nnewest:  {head}")
    if current != head:
        print("run 'finsent db upgrade' to bring the schema up to date")
        return 1
    return 0


def collect_status(settings: Settings) -> dict[str, Any]:
    """What `finsent status` reports, as a dict (also used by the demo).

    Raises DatabaseError (one line, naming FINSENT_DATABASE_URL) when the database cannot
    be reached: without it there is nothing else to report.
    """
    return _check(settings)[0]


def _check(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """The status report and the names of the services it found unreachable."""
    import sqlalchemy as sa

    from pipeline import db, inference
    from pipeline.embedded import port_answers

    info: dict[str, Any] = {}
    unreachable: list[str] = []
    if settings.kafka_bootstrap:
        host, _, port = settings.kafka_bootstrap.split(",")[0].rpartition(":")
        reachable = port_answers(host, int(port), timeout=2)
        info["broker"] = (
            f"{settings.kafka_bootstrap} ({'reachable' if reachable else 'NOT reachable'})"
        )
        if not reachable:
            unreachable.append("broker")
    else:
        info["broker"] = (
            "embedded tansu, started by 'finsent run' / 'finsent demo' (log kept in memory)"
        )
    url, how = db.resolve(settings)
    info["database"] = db.database_description(settings)
    engine = db.make_engine(url)
    try:
        with db.connection_errors(url, how):
            info["schema_revision"] = db.current_revision(engine)
            info["schema_newest"] = db.head_revision()
            champion = None
            if info["schema_revision"]:
                with engine.connect() as conn:
                    row = conn.execute(
                        sa.text(
                            "select version, path from model_versions where status = 'champion'"
                        )
                    ).first()
                if row is not None:
                    champion = f"{row.version} ({row.path})"
            info["champion_model"] = (
                champion or f"none registered; model directory {settings.model_dir}"
            )
    finally:
        engine.dispose()
    info["execution_provider"] = inference.provider_in_use(settings)
    return info, unreachable


def status(args: argparse.Namespace, settings: Settings) -> int:
    """Print the report; exit 2 when something it checks cannot be reached, so scripts and
    health probes can rely on the exit status."""
    info, unreachable = _check(settings)
    if args.json:
        print(json.dumps({**info, "unreachable": unreachable}, indent=2, default=str))
    else:
        for name, value in info.items():
            print(f"{name:19} {value}")
    if unreachable:
        print(
            f"finsent: error: {', '.join(unreachable)} not reachable: check FINSENT_KAFKA_BOOTSTRAP "
            "(or --kafka-bootstrap) and that the broker is running",
            file=sys.stderr,
        )
        return 2
    return 0
