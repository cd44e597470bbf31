"""Logging of the Kafka clients finsent configures."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import Cancelled, KafkaConnectionError

import pipeline.kafka_io  # (importing it installs the filter)
from pipeline.errors import ConfigurationError
from pipeline.settings import load_settings


def test_cancelled_metadata_refresh_on_close_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="kafka.cluster")
    logging.getLogger("kafka.cluster").error("Metadata refresh: failed %s", Cancelled())
    assert [r.levelname for r in caplog.records] == ["DEBUG"]


def test_other_metadata_refresh_failures_stay_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kafka.cluster")
    logging.getLogger("kafka.cluster").error(
        "Metadata refresh: failed %s", KafkaConnectionError("refused")
    )
    logging.getLogger("kafka.cluster").error("Metadata refresh: failed %s", Cancelled())
    assert [r.levelname for r in caplog.records] == ["ERROR"]


def test_a_compression_codec_without_its_library_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline.kafka_io.codecs, "has_zstd", lambda: False)
    settings = load_settings(kafka_compression="zstd")
    with pytest.raises(ConfigurationError, match="pip install zstandard"):
        pipeline.kafka_io.make_producer(settings, "127.0.0.1:9")
