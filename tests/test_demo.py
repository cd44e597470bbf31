"""`finsent demo` replays the shipped sample stream end to end into a database of its own,
prints its summary, leaves the live database alone and, with --serve, keeps its HTTP role
up until stopped."""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from alerts.lifecycle import Episode
from alerts.rules import load_rules
from finsent.commands.demo import (
    SAMPLE_RULES,
    SAMPLE_STREAM,
    SAMPLE_WATCHLIST,
    DemoDatabase,
    demo_database,
    load_sample,
    run_demo,
    why_resolved,
)
from pipeline import db
from pipeline.entities import load_watchlist
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, get_settings, load_settings
from tests.conftest import create_database, drop_database

N_SAMPLE = len(SAMPLE_STREAM.read_text().splitlines())


def test_sample_stream_has_a_negative_surge_on_a_watched_ticker() -> None:
    rows = [json.loads(line) for line in SAMPLE_STREAM.read_text().splitlines()]
    assert 300 <= len(rows) <= 600
    watchlist = load_watchlist(SAMPLE_WATCHLIST)
    assert watchlist is not None
    nvlx = [r for r in rows if "NVLX" in watchlist.match(r["text"])]
    day2 = [r for r in nvlx if r["published_at"].startswith("2026-03-03T1")]
    assert len(day2) >= 30


def _seed_live_data(engine: sa.Engine) -> str:
    """What a live `finsent run` database holds: documents (one of them also in the sample,
    by id), their predictions, a key's memory, its trend point and ledger row. Returns the
    shared document id."""
    shared = load_sample(SAMPLE_STREAM)[0].id
    with engine.begin() as conn:
        for doc_id in (shared, "live-2"):
            conn.execute(
                sa.text(
                    "insert into documents (id, source, published_at, title, text, entities) "
                    "values (:id, 'live', '2026-11-01T09:00:00Z', 'live headline', "
                    "'Norvalex live text', ARRAY['NVLX'])"
                ),
                {"id": doc_id},
            )
            conn.execute(
                sa.text(
                    "insert into predictions (document_id, model_version, topic_id, topic, "
                    "topic_confidence, sentiment, p_bearish, p_neutral, p_bullish) values "
                    "(:id, 'live-model', 5, 'Earnings', 0.9, 'bearish', 0.8, 0.1, 0.1)"
                ),
                {"id": doc_id},
            )
            conn.execute(
                sa.text(
                    "insert into applied_documents (key, document_id) values ('entity:NVLX', :id)"
                ),
                {"id": doc_id},
            )
        conn.execute(
            sa.text(
                "insert into key_state (key, key_kind, state, last_event_at, doc_count, "
                "negative_count, expected_negative_rate, surge_score, model_version) values "
                "('entity:NVLX', 'entity', ARRAY[0.25, -0.5]::real[], '2026-11-01T09:00:00Z', "
                "2, 2, 0.4, 1.75, 'live-model')"
            )
        )
        conn.execute(
            sa.text(
                "insert into trend_points (key, event_at, document_id, sentiment, p_bearish, "
                "expected_negative_rate, surge_score, doc_count, negative_count) values "
                "('entity:NVLX', '2026-11-01T09:00:00Z', :id, 'bearish', 0.8, 0.4, 1.75, 2, 2)"
            ),
            {"id": shared},
        )
    return shared


def _snapshot(engine: sa.Engine) -> dict[str, Any]:
    """Every table's row count, every key_state row and every prediction, as they are."""
    with engine.connect() as conn:
        tables = (
            conn.execute(
                sa.text(
                    "select tablename from pg_tables where schemaname = 'public' "
                    "and tablename <> 'alembic_version' order by 1"
                )
            )
            .scalars()
            .all()
        )
        return {
            "counts": {
                t: conn.execute(sa.text(f'select count(*) from "{t}"')).scalar() for t in tables
            },
            "key_state": [
                tuple(r) for r in conn.execute(sa.text("select * from key_state order by key"))
            ],
            "predictions": [
                tuple(r)
                for r in conn.execute(sa.text("select * from predictions order by document_id"))
            ],
            "nvlx": conn.execute(
                sa.text(
                    "select surge_score, last_event_at from key_state where key = 'entity:NVLX'"
                )
            ).one(),
        }


@dataclass
class DemoRun:
    text: str
    before: dict[str, Any]
    after: dict[str, Any]
    shared_id: str
    live_url: str
    demo_url: str
    health_status: int
    console_status: int
    console_html: str
    served_url: str
    returned: int | None
    serve_thread_alive: bool


@pytest.fixture(scope="module")
def demo_run(
    postgres_admin_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoRun]:
    """One `finsent demo --serve` over a live database with current documents: the output,
    the live database before and after, and what its HTTP server answered while it served."""
    tmp = tmp_path_factory.mktemp("demo")
    demo_name = f"finsent_demo_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    live_url = create_database(postgres_admin_url, prefix="finsent_live")
    demo_url = sa.engine.make_url(live_url).set(database=demo_name).render_as_string(False)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("FINSENT_") and name != "FINSENT_TEST_ADMIN_URL":
                mp.delenv(name)
        get_settings.cache_clear()
        try:
            db.upgrade(live_url)
            live = db.make_engine(live_url)
            shared = _seed_live_data(live)
            before = _snapshot(live)
            s = load_settings(
                database_url=live_url,
                model_dir=tiny_model_dir,
                model_registry_dir=tmp / "registry",
                embedded_pg_dir=tmp / "pg",
                http_port=0,
            )
            out = io.StringIO()
            stop = threading.Event()
            result: dict[str, int] = {}

            def target() -> None:
                result["code"] = run_demo(
                    s, timeout_s=150, out=out, serve=True, serve_stop=stop, database_name=demo_name
                )

            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            deadline = time.monotonic() + 180
            served = None
            while time.monotonic() < deadline and thread.is_alive() and served is None:
                served = re.search(
                    r"the console on the demo database: (http://\S+)/ ", out.getvalue()
                )
                time.sleep(0.2)
            assert served is not None, out.getvalue()
            health = httpx.get(served.group(1) + "/healthz", timeout=10).status_code
            console = httpx.get(served.group(1) + "/?since=30d&now=latest", timeout=30)
            stop.set()
            thread.join(timeout=60)
            after = _snapshot(live)
            live.dispose()
            yield DemoRun(
                text=out.getvalue(),
                before=before,
                after=after,
                shared_id=shared,
                live_url=live_url,
                demo_url=demo_url,
                health_status=health,
                console_status=console.status_code,
                console_html=console.text,
                served_url=served.group(1),
                returned=result.get("code"),
                serve_thread_alive=thread.is_alive(),
            )
        finally:
            get_settings.cache_clear()
            drop_database(postgres_admin_url, demo_url)
            drop_database(postgres_admin_url, live_url)


def test_demo_scores_every_sample_document_and_prints_the_summary(demo_run: DemoRun) -> None:
    text = demo_run.text
    assert demo_run.returned == 0
    assert f"documents scored: {N_SAMPLE} of {N_SAMPLE}" in text
    assert "top negative keys" in text
    engine = sa.create_engine(demo_run.demo_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar() == N_SAMPLE
            assert (
                conn.execute(
                    sa.text("SELECT doc_count FROM key_state WHERE key = 'entity:NVLX'")
                ).scalar()
                >= 70
            )
    finally:
        engine.dispose()


def test_demo_leaves_a_live_database_with_current_documents_untouched(demo_run: DemoRun) -> None:
    before, after = demo_run.before, demo_run.after
    assert before["counts"]["documents"] == 2 and before["counts"]["key_state"] == 1
    assert after["counts"] == before["counts"]
    assert after["key_state"] == before["key_state"]
    assert after["predictions"] == before["predictions"]
    surge, last_event_at = after["nvlx"]
    assert (surge, last_event_at) == (1.75, datetime(2026, 11, 1, 9, tzinfo=UTC))
    # the shared document id went into the demo's own database, scored by the demo's model
    engine = sa.create_engine(demo_run.demo_url)
    try:
        with engine.connect() as conn:
            versions = (
                conn.execute(
                    sa.text("SELECT model_version FROM predictions WHERE document_id = :d"),
                    {"d": demo_run.shared_id},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert versions == ["tiny-0"]


def test_demo_names_its_own_database_in_words_and_ends_with_a_psql_line(
    demo_run: DemoRun,
) -> None:
    demo_name = sa.engine.make_url(demo_run.demo_url).database
    live_name = sa.engine.make_url(demo_run.live_url).database
    first = demo_run.text.splitlines()[0]
    assert first.startswith(f"database: {demo_name} on the server of FINSENT_DATABASE_URL")
    assert "dropped and recreated on every run" in first and live_name in first
    assert "postgresql+psycopg" not in demo_run.text
    lines = demo_run.text.splitlines()
    psql = lines[lines.index(f"open the demo database ({demo_name}) with:") + 1].strip()
    assert psql == f"psql -h 127.0.0.1 -p 5432 -U postgres -d {demo_name}"


def test_demo_lists_only_surging_keys_and_the_bearish_headlines_behind_the_top_one(
    demo_run: DemoRun,
) -> None:
    engine = sa.create_engine(demo_run.demo_url)
    try:
        with engine.connect() as conn:
            surging = (
                conn.execute(
                    sa.text(
                        "SELECT key FROM key_state WHERE surge_score > 0 AND doc_count >= 3 "
                        "ORDER BY surge_score DESC, key LIMIT 8"
                    )
                )
                .scalars()
                .all()
            )
            bearish = (
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM trend_points WHERE key = :k AND sentiment = 'bearish'"
                    ),
                    {"k": surging[0] if surging else ""},
                ).scalar()
                or 0
            )
    finally:
        engine.dispose()
    text = demo_run.text
    section = text.split("top negative keys (surge score above 0, highest first):\n", 1)[1]
    section = section.split("\n\n", 1)[0].splitlines()
    if not surging:
        assert section == ["  none: no key's memory puts it in a negative surge"]
        return
    rows = [line.split()[0] for line in section[1:-1]]
    assert rows == [k[:34] for k in surging]
    assert section[-1].startswith("  docs: documents on the key; negative:")
    heads = text.split(f"the most bearish headlines behind {surging[0]}:\n", 1)[1]
    heads_lines = heads.split("\n\n", 1)[0].splitlines()
    assert len(heads_lines) == (min(3, bearish) or 1)
    if bearish:
        assert all("p(bearish)" in line for line in heads_lines)


def test_every_suggested_sql_statement_returns_rows_on_the_demo_data(demo_run: DemoRun) -> None:
    statements = [
        line.strip() for line in demo_run.text.splitlines() if line.startswith("  SELECT ")
    ]
    assert len(statements) == 4
    assert not any("open_alerts" in s for s in statements)
    engine = sa.create_engine(demo_run.demo_url)
    try:
        with engine.connect() as conn:
            for statement in statements:
                assert conn.execute(sa.text(statement.rstrip(";"))).first() is not None, statement
    finally:
        engine.dispose()


def test_demo_serve_keeps_the_http_role_and_the_console_up_until_stopped(demo_run: DemoRun) -> None:
    assert demo_run.health_status == 200
    assert demo_run.console_status == 200 and "entity:" in demo_run.console_html
    assert demo_run.served_url.startswith("http://127.0.0.1:")
    assert "Ctrl-C to stop" in demo_run.text
    assert not demo_run.serve_thread_alive and demo_run.returned == 0


def test_demo_refuses_a_live_database_named_like_its_own(database_url: str) -> None:
    url = sa.engine.make_url(database_url).set(database="finsent_demo")
    s = load_settings(database_url=url.render_as_string(hide_password=False))
    with pytest.raises(ConfigurationError, match="drops and recreates"):
        demo_database(s)


def test_the_psql_line_of_an_embedded_server_uses_its_socket_and_hides_passwords() -> None:
    socket = DemoDatabase(
        url="postgresql+psycopg://postgres:@/finsent_demo?host=/var/pg",
        live_url="postgresql+psycopg://postgres:@/postgres?host=/var/pg",
        server="the embedded PostgreSQL (pgserver) in /var/pg",
    )
    assert socket.psql() == "psql -h /var/pg -U postgres -d finsent_demo"
    secret = DemoDatabase(
        url="postgresql+psycopg://app:s3cret@db.example:6543/finsent_demo",
        live_url="postgresql+psycopg://app:s3cret@db.example:6543/live",
        server="x",
    )
    assert "s3cret" not in secret.psql()
    assert secret.psql().startswith("psql -h db.example -p 6543 -U app -d finsent_demo  #")


def _episode(rule_name: str, value: float, **figures: Any) -> Episode:
    at = datetime(2026, 3, 3, 18, 40, tzinfo=UTC)
    return Episode(
        "fp", rule_name, "entity:NVLX", "resolved", at, at, at, value=value, figures=figures
    )


def test_a_resolved_sample_alert_says_why_it_resolved() -> None:
    rules = {r.name: r for r in load_rules(SAMPLE_RULES).rules}
    share = rules["ticker-negative-share"]
    assert why_resolved(share, _episode(share.name, 0.8, documents=2)) == (
        "too few documents to judge (2 in the last 2h, the rule needs 6; last value 0.80)"
    )
    assert why_resolved(share, _episode(share.name, 0.25, documents=9)) == (
        "negative_share 0.25 in the last 2h, <= the resolve level 0.3"
    )
    spike = rules["ticker-negative-spike"]
    assert why_resolved(spike, _episode(spike.name, 1.2, documents=5, reference_events=3)) == (
        "ratio to the reference 1.20, <= the resolve level 1.5"
    )
    assert why_resolved(None, _episode("gone", 0.8)) == "(last value 0.80)"


def test_demo_without_a_model_says_where_to_get_one(settings: Settings, tmp_path: Path) -> None:
    from pipeline.errors import ModelError

    with pytest.raises(ModelError, match="FINSENT_MODEL_DIR"):
        run_demo(settings.model_copy(update={"model_dir": tmp_path}), out=io.StringIO())
