"""PostgreSQL unreachable for a while: scorer and trends back off, then resume; nothing
is lost and nothing counts twice."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa

from consumers.progress import GroupProgress
from consumers.scorer import Scorer
from consumers.trends import Trends
from pipeline import db
from pipeline.settings import Settings
from tests.consumers.helpers import (
    RoleThread,
    assert_exactly_once,
    assert_states_equal_reference,
    count,
    make_documents,
    produce,
    wait_for,
)
from tests.faults.proxy import TcpProxy


def test_workers_back_off_while_postgres_is_down_and_resume_without_loss(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    url = (
        sa.engine.make_url(settings.database_url or "")
        .set(port=proxy.port)
        .render_as_string(hide_password=False)
    )
    s = settings.model_copy(update={"model_dir": tiny_model_dir, "database_url": url})
    proxied = db.make_engine(url)
    docs = make_documents(1200, seed=9)
    scorer = RoleThread(Scorer(s, s.kafka_bootstrap or "", proxied)).start()
    trends = RoleThread(Trends(s, s.kafka_bootstrap or "", proxied)).start()
    try:
        produce(s, docs[:400])
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM applied_documents") > 0,
            60,
            "the first trend updates",
        )
        proxy.cut()
        produce(s, docs[400:])
        time.sleep(4.0)  # both workers hit the outage and back off
        assert count(engine, "SELECT count(*) FROM predictions") < 1200
        assert scorer.thread.is_alive() and trends.thread.is_alive()
        proxy.restore()
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") == 1200,
            90,
            "every prediction",
        )
        with GroupProgress(s.kafka_bootstrap or "") as progress:
            assert progress.wait_caught_up(
                s.group_id("scorer"), s.kafka_topic_documents, timeout_s=60
            )
            assert progress.wait_caught_up(s.group_id("trends"), s.kafka_topic_scored, timeout_s=60)
    finally:
        proxy.restore() if proxy._listener is None else None
        scorer.close()
        trends.close()
        proxied.dispose()
        proxy.close()
    assert_exactly_once(engine, 1200)
    assert_states_equal_reference(engine, tiny_model_dir, s)
