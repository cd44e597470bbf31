"""The console in a real headless Chromium, on the shipped sample stream run through the real
pipeline and model (``run_demo``) and the demo's alert rules (evaluated on the data clock,
stored in ``alerts``): what a person would check, and the screenshots in the README.

Served by the daemon's own HTTP role (``finsent.roles.http_role``), so the label button posts
to the real ``POST /v1/labels``. Skips only outside CI when no ``chromium`` binary is
installed; under ``CI=true`` a missing browser fails.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from alerts.service import AlertService
from finsent.commands.demo import SAMPLE_RULES, demo_database, run_demo
from finsent.roles import http_role
from pipeline import db
from pipeline.settings import Settings
from tests.conftest import drop_database

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: during the sample's eight-hour NVLX surge (09:00-17:00 UTC on 2026-03-03)
DURING_SURGE = "2026-03-03T15:00Z"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _need_browser() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(
                "CI=true but no chromium binary: .ci/run installs it (apt-get install chromium)"
            )
        pytest.skip("no chromium binary (apt-get install chromium); CI runs this test")
    pytest.importorskip("playwright.sync_api")
    return CHROMIUM


@pytest.fixture
def sample_engine(settings: Settings, postgres_admin_url: str) -> Iterator[sa.engine.Engine]:
    """A database holding the sample stream as the real pipeline and model scored it, and
    the alerts the demo rules raise over it."""
    name = f"finsent_console_{uuid.uuid4().hex[:8]}"
    target = demo_database(settings, name)
    try:
        assert run_demo(settings, timeout_s=150, out=io.StringIO(), database_name=name) == 0
        engine = db.make_engine(target.url)
        alert_settings = settings.model_copy(
            update={
                "database_url": target.url,
                "rules": SAMPLE_RULES,
                "alert_clock": "data",
                "alert_interval_s": 300.0,
            }
        )
        assert AlertService(alert_settings, engine=engine).evaluate_now().fired >= 1
        yield engine
        engine.dispose()
    finally:
        drop_database(postgres_admin_url, target.url)


@pytest.fixture
def console_url(sample_engine: sa.engine.Engine, settings: Settings) -> Iterator[str]:
    """The daemon's own HTTP role (``finsent.roles.http_role``: console pages and the real
    ``POST /v1/labels``) on the sample database."""
    served = settings.model_copy(update={"alert_clock": "data", "http_port": 0})
    server = http_role(served, SimpleNamespace(engine=sample_engine, bootstrap=""), ingest=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_a_person_finds_the_surge_reads_why_and_labels_a_headline(
    console_url: str, sample_engine: sa.engine.Engine
) -> None:
    chromium = _need_browser()
    from playwright.sync_api import sync_playwright

    DOCS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # The ranking during the surge: NVLX first, with its evidence and headlines.
            page.goto(f"{console_url}/?since=6h&now={DURING_SURGE}")
            rows = page.locator("#ranking tr.key-row")
            assert rows.count() >= 3
            first = rows.nth(0)
            assert first.get_attribute("data-key") == "entity:NVLX"
            assert "Norvalex" in first.locator("td.headline").inner_text()
            assert first.locator("svg.spark polyline").count() >= 1
            page.screenshot(path=str(DOCS / "console-now.png"))
            # the entity filter keeps it first; the topic filter drops it
            page.goto(f"{console_url}/?since=6h&kind=entity&now={DURING_SURGE}")
            assert rows.nth(0).get_attribute("data-key") == "entity:NVLX"
            page.goto(f"{console_url}/?since=6h&kind=topic&now={DURING_SURGE}")
            assert "entity:NVLX" not in [
                rows.nth(i).get_attribute("data-key") for i in range(rows.count())
            ]

            # Its page: charts with points, alert episodes shaded, headlines to label.
            page.goto(f"{console_url}/?since=6h&now={DURING_SURGE}")
            page.locator("#ranking tr.key-row").nth(0).locator("a").first.click()
            page.wait_for_url("**/keys/entity:NVLX**")
            assert page.locator("h1").inner_text().startswith("NVLX")
            assert page.locator("svg.share circle.point").count() >= 10
            assert page.locator("svg.volume rect.point").count() >= 10
            assert page.locator("svg.surge circle.point").count() >= 10
            assert page.locator("svg.share rect.episode").count() >= 1
            headlines = page.locator("#headlines tbody tr[data-document]")
            assert headlines.count() >= 5
            row = headlines.nth(0)
            document_id = row.get_attribute("data-document")
            assert row.locator("td.headline").inner_text().strip()
            page.screenshot(path=str(DOCS / "console-key.png"))
            row.locator("button[value=neutral]").click()
            row.locator(".status").filter(has_text="labelled neutral").wait_for(timeout=10_000)
            with sample_engine.connect() as conn:
                label = conn.execute(
                    sa.text("SELECT sentiment, labelled_by FROM labels WHERE document_id = :d"),
                    {"d": document_id},
                ).one()
            assert tuple(label) == ("neutral", "console")

            # The alerts page: the sample's episodes, by state.
            page.goto(f"{console_url}/alerts")
            assert page.locator("h1").inner_text() == "Alerts"
            assert "entity:NVLX" in page.locator("table.episodes").first.inner_text() or (
                "entity:NVLX" in page.content()
            )
            assert page.locator("h2#resolved").count() == 1
            page.screenshot(path=str(DOCS / "console-alerts.png"))
            assert errors == []
        finally:
            browser.close()
