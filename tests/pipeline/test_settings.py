"""Settings: environment variables, overrides and errors that name the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.errors import ConfigurationError
from pipeline.settings import load_settings


def test_malformed_database_url_is_rejected_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_malformed_bootstrap_is_rejected_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_group_prefix_names_both_consumer_groups_and_rejects_spaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_KAFKA_GROUP_PREFIX", "staging")
    s = load_settings()
    assert (s.group_id("scorer"), s.group_id("trends")) == ("staging-scorer", "staging-trends")
    monkeypatch.setenv("FINSENT_KAFKA_GROUP_PREFIX", "two words")
    with pytest.raises(ConfigurationError, match="FINSENT_KAFKA_GROUP_PREFIX"):
        load_settings()
