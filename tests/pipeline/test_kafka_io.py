"""Logging of the Kafka clients finsent configures."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import Cancelled, KafkaConnectionError

import pipeline.kafka_io  # noqa: F401  (installs the filter)


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
