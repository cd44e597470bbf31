"""The embedded tansu broker: starts, carries records through a consumer group, and
reports (never hangs on) a port that is already taken."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics
from pipeline.errors import BrokerError
from pipeline.kafka_io import make_consumer, make_producer
from pipeline.settings import load_settings
from tests.conftest import TEST_KAFKA


@pytest.mark.parametrize("compression", ["lz4", "gzip", "none"])
def test_message_produced_is_consumed_by_a_consumer_group(
    kafka_broker: EmbeddedBroker, compression: str
) -> None:
    settings = load_settings(kafka=TEST_KAFKA, kafka_compression=compression)
    kafka_topic = f"finsent.test.{uuid.uuid4().hex[:8]}"
    ensure_kafka_topics(kafka_broker.bootstrap, [kafka_topic], partitions=2)
    producer = make_producer(settings, kafka_broker.bootstrap)
    sent = {f"doc-{i}".encode() for i in range(10)}
    for value in sent:
        producer.send(kafka_topic, key=value, value=value)
    producer.flush(10)
    producer.close()

    consumer = make_consumer(settings, kafka_broker.bootstrap, "finsent-test-group", [kafka_topic])
    received: set[bytes] = set()
    deadline = time.monotonic() + 30
    try:
        while received != sent and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.update(r.value for r in records)
        consumer.commit()
    finally:
        consumer.close()
    assert received == sent


def test_project_kafka_topics_are_created_with_configured_partitions(
    kafka_broker: EmbeddedBroker,
) -> None:
    from kafka import KafkaConsumer

    name = f"finsent.parts.{uuid.uuid4().hex[:8]}"
    ensure_kafka_topics(kafka_broker.bootstrap, [name], partitions=3)
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    try:
        assert consumer.partitions_for_topic(name) == {0, 1, 2}
    finally:
        consumer.close()


def test_second_broker_on_a_taken_port_is_reported_not_hung() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port=port).start(timeout_s=10)
        assert time.monotonic() - started < 5


def test_broker_that_dies_at_start_is_reported(tmp_path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    import os

    os.environ["FINSENT_TANSU_BIN"] = str(fake)
    try:
        with pytest.raises(BrokerError, match="exited with code 3"):
            EmbeddedBroker().start(timeout_s=10)
    finally:
        del os.environ["FINSENT_TANSU_BIN"]


def test_missing_broker_binary_says_what_to_do(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINSENT_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(BrokerError, match="FINSENT_KAFKA_BOOTSTRAP"):
        EmbeddedBroker().start()


def test_broker_dies_with_a_killed_parent(tmp_path) -> None:
    """kill -9 of the process that started the embedded broker leaves no orphan broker."""
    import os
    import signal
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from pipeline.embedded import EmbeddedBroker\n"
        "b = EmbeddedBroker().start()\n"
        "print(b._proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        broker_pid = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(broker_pid, 0)
            except ProcessLookupError:
                return
            with open(f"/proc/{broker_pid}/stat") as stat:
                if stat.read().split()[2] == "Z":
                    return
            time.sleep(0.1)
        os.kill(broker_pid, signal.SIGKILL)
        raise AssertionError("embedded broker outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.stdout.close()
