"""Settings: environment variables, overrides and errors that name the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.errors import ConfigurationError
from pipeline.settings import load_settings, secret_value


def test_malformed_database_url_is_rejected_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINSENT_DATABASE_URL", "mysql://nope")
    with pytest.raises(ConfigurationError, match="FINSENT_DATABASE_URL"):
        load_settings()


def test_unparseable_database_url_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_DATABASE_URL", "postgresql://user@host:notaport/db")
    with pytest.raises(ConfigurationError, match="FINSENT_DATABASE_URL"):
        load_settings()


def test_plain_postgresql_url_gets_the_psycopg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_DATABASE_URL", "postgresql://u:p@db.example:5433/finsent")
    assert load_settings().database_url == "postgresql+psycopg://u:p@db.example:5433/finsent"


def test_malformed_bootstrap_is_rejected_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINSENT_KAFKA_BOOTSTRAP", "kafka1:9092,kafka2")
    with pytest.raises(ConfigurationError, match="FINSENT_KAFKA_BOOTSTRAP"):
        load_settings()


def test_nested_batch_policy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_BATCH__MAX_SIZE", "64")
    monkeypatch.setenv("FINSENT_BATCH__MAX_WAIT_MS", "50")
    s = load_settings()
    assert (s.batch.max_size, s.batch.max_wait_ms) == (64, 50)


def test_bad_nested_value_names_the_nested_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_BATCH__MAX_SIZE", "0")
    with pytest.raises(ConfigurationError, match="FINSENT_BATCH__MAX_SIZE"):
        load_settings()


def test_flag_override_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_KAFKA_BOOTSTRAP", "a:1")
    assert load_settings(kafka_bootstrap="b:2").kafka_bootstrap == "b:2"


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.http_port = 1  # type: ignore[misc]


def test_group_prefix_names_both_consumer_groups_and_rejects_spaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FINSENT_KAFKA_GROUP_PREFIX", "staging")
    s = load_settings()
    assert (s.group_id("scorer"), s.group_id("trends")) == ("staging-scorer", "staging-trends")
    monkeypatch.setenv("FINSENT_KAFKA_GROUP_PREFIX", "two words")
    with pytest.raises(ConfigurationError, match="FINSENT_KAFKA_GROUP_PREFIX"):
        load_settings()


SECRETS = ("db-pa55word", "smtp-pa55word", "hook-s3cret", "ingest-t0ken")


def test_credentials_never_show_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FINSENT_DATABASE_URL", "postgresql://finsent:db-pa55word@db.internal:5432/finsent"
    )
    monkeypatch.setenv("FINSENT_SMTP__USERNAME", "alerts")
    monkeypatch.setenv("FINSENT_SMTP__PASSWORD", "smtp-pa55word")
    monkeypatch.setenv("FINSENT_WEBHOOK__SECRET", "hook-s3cret")
    monkeypatch.setenv("FINSENT_HTTP_TOKEN", "ingest-t0ken")
    s = load_settings()
    for shown in (repr(s), str(s), repr(s.smtp), repr(s.webhook), f"{s!r}"):
        for secret in SECRETS:
            assert secret not in shown, secret
    assert "postgresql+psycopg://finsent:***@db.internal:5432/finsent" in repr(s)
    # the values are all there for the code that needs them
    assert s.database_url == "postgresql+psycopg://finsent:db-pa55word@db.internal:5432/finsent"
    assert secret_value(s.smtp.password) == "smtp-pa55word"
    assert secret_value(s.webhook.secret) == "hook-s3cret"
    assert secret_value(s.http_token) == "ingest-t0ken"


def test_redact_url_examples() -> None:
    import doctest

    import pipeline.settings

    result = doctest.testmod(pipeline.settings)
    assert result.attempted >= 5 and result.failed == 0


def test_the_start_up_line_names_the_database_without_its_password(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.engine import make_url

    from finsent.services import start_services

    # the test server trusts local connections, so any password gets in
    with_password = (
        make_url(database_url).set(password="db-pa55word").render_as_string(hide_password=False)
    )
    settings = load_settings(database_url=with_password)
    with caplog.at_level("INFO", logger="finsent.services"):
        with start_services(settings, migrate=True, kafka=False) as services:
            assert "***" in services.descriptions["database"]
            assert "db-pa55word" not in repr(services)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "finsent.services"]
    assert (
        "database: configured (FINSENT_DATABASE_URL): postgresql+psycopg://" in line
        and ":***@" in line
    )
    assert "db-pa55word" not in caplog.text
