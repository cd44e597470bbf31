"""The resume rule of consumers/batching.py, against the real broker and kafka-python:
read-ahead survives a partition handed back to the same member, idle polls do not spin,
commits name processed offsets only, and a backlog leaves in event-time order."""

from __future__ import annotations

import threading
import time
from typing import Any

from kafka.structs import TopicPartition

from consumers.batching import PartitionReader
from pipeline.kafka_io import make_consumer, make_producer
from pipeline.settings import BatchPolicy, Settings
from tests.consumers.helpers import wait_for

POLICY = BatchPolicy(max_size=10, max_wait_ms=50)


def _send(settings: Settings, rows: list[tuple[int, str]]) -> None:
    """(partition, event-time text) rows, sent in order to the documents topic."""
    producer = make_producer(settings, settings.kafka_bootstrap or "")
    for i, (partition, when) in enumerate(rows):
        producer.send(
            settings.kafka_topic_documents,
            key=f"k{i}".encode(),
            value=when.encode(),
            partition=partition,
        )
    producer.flush()
    producer.close()


def _reader(
    settings: Settings, *, merge: bool = True, group: str = "reader", **kw: Any
) -> PartitionReader:
    reader = PartitionReader(
        None, (lambda r: r.value.decode()) if merge else None, role="test", **kw
    )
    reader.consumer = make_consumer(
        settings,
        settings.kafka_bootstrap or "",
        settings.group_id(group),
        [settings.kafka_topic_documents],
        listener=reader,
        fetch_max_wait_ms=50,
    )
    return reader


def _drain(
    reader: PartitionReader, stop: threading.Event, expected: int, timeout_s: float = 30.0
) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        batch = reader.poll_batch(POLICY, stop, 200)
        out.extend(batch)
        if batch:
            reader.commit(batch, "test")
    return out


def test_records_read_ahead_are_read_again_when_a_rebalance_hands_the_partition_back(
    settings: Settings,
) -> None:
    _send(settings, [(i % 2, f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}") for i in range(200)])
    reader = _reader(settings)
    stop = threading.Event()
    try:
        first = _drain(reader, stop, 10)
        assert reader.total > 0, "the test needs records read ahead"
        # Exactly what kafka-python does when a rebalance hands the same partitions back:
        # revoke all, assign the same set, keep each partition's fetch position.
        assigned = set(reader.consumer.assignment())
        reader.on_partitions_revoked(assigned)
        reader.on_partitions_assigned(assigned)
        assert reader.total == 0 and reader.seeks >= 1
        rest = _drain(reader, stop, 200 - len(first))
        seen = {(r.partition, r.offset) for r in first + rest}
        assert seen == {(p, o) for p in (0, 1) for o in range(100)}, (
            "a record read ahead was skipped"
        )
        for tp in assigned:
            assert reader.consumer.committed(tp) == 100
    finally:
        reader.consumer.close(autocommit=False)


def test_a_second_member_joining_loses_nothing_of_the_read_ahead(settings: Settings) -> None:
    _send(
        settings,
        [
            (i % 2, f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}")
            for i in range(3000)
        ],
    )
    stop = threading.Event()
    got: list[Any] = []
    lock = threading.Lock()
    first_batches = threading.Event()

    def member(name: str) -> None:
        reader = _reader(settings, group="join")
        try:
            while not stop.is_set():
                batch = reader.poll_batch(POLICY, stop, 100)
                if batch:
                    with lock:
                        got.extend(batch)
                    reader.commit(batch, "test")
                    if len(got) >= 40:
                        first_batches.set()
                    time.sleep(
                        0.02
                    )  # a little work per batch, so the second member joins mid-stream
        finally:
            reader.consumer.close(autocommit=False)

    a = threading.Thread(target=member, args=("a",))
    a.start()
    b = threading.Thread(target=member, args=("b",))
    try:
        assert first_batches.wait(30)
        b.start()
        wait_for(
            lambda: len({(r.partition, r.offset) for r in got}) == 3000,
            90,
            "every record handed out",
        )
    finally:
        stop.set()
        a.join(30)
        if b.is_alive() or b.ident:
            b.join(30)
    assert {(r.partition, r.offset) for r in got} == {(p, o) for p in (0, 1) for o in range(1500)}


def test_an_idle_reader_returns_within_the_poll_timeout_and_does_not_spin(
    settings: Settings,
) -> None:
    reader = _reader(settings)
    stop = threading.Event()
    try:
        reader.poll_batch(POLICY, stop, 2000)  # joins the group
        cpu, wall = time.process_time(), time.monotonic()
        calls = 0
        while time.monotonic() - wall < 2.0:
            started = time.monotonic()
            assert reader.poll_batch(POLICY, stop, 200) == []
            assert time.monotonic() - started < 1.0
            calls += 1
        used = (time.process_time() - cpu) / (time.monotonic() - wall)
        assert calls <= 12, f"{calls} empty polls in 2 s: the poll timeout is not honoured"
        assert used < 0.2, f"an idle reader used {used:.0%} of a core"
    finally:
        reader.consumer.close(autocommit=False)


def test_commits_name_processed_records_not_the_read_ahead(settings: Settings) -> None:
    _send(settings, [(0, f"2026-01-01T00:00:{i:02d}") for i in range(50)])
    reader = _reader(settings)
    stop = threading.Event()
    try:
        batch: list[Any] = []
        deadline = time.monotonic() + 30
        while not batch and time.monotonic() < deadline:
            batch = reader.poll_batch(POLICY, stop, 200)
        reader.commit(batch, "test")
        tp = TopicPartition(settings.kafka_topic_documents, 0)
        assert reader.consumer.committed(tp) == batch[-1].offset + 1 == len(batch)
        assert reader.consumer.position(tp) > len(batch), "the test needs records read ahead"
    finally:
        reader.consumer.close(autocommit=False)


def test_a_backlog_leaves_in_event_time_order_across_partitions(settings: Settings) -> None:
    # Partition 0 holds the even seconds, partition 1 the odd ones, sent one partition
    # after the other: the client hands out one partition's backlog before the other's.
    rows = [
        (0, f"2026-01-01T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}")
        for s in range(0, 4000, 2)
    ]
    rows += [
        (1, f"2026-01-01T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}")
        for s in range(1, 4000, 2)
    ]
    _send(settings, rows)
    reader = _reader(settings)
    try:
        out = _drain(reader, threading.Event(), 4000)
    finally:
        reader.consumer.close(autocommit=False)
    times = [r.value.decode() for r in out]
    assert len(times) == 4000
    assert times == sorted(times), "the backlog left out of event-time order"


def test_a_reader_serving_its_read_ahead_still_polls_to_stay_in_the_group(
    settings: Settings, monkeypatch: Any
) -> None:
    """kafka-python drops a member that does not call poll() within max_poll_interval_ms;
    a long read-ahead must not keep the reader from calling it."""
    from consumers import batching

    monkeypatch.setattr(batching, "KEEPALIVE_POLL_S", 0.1)
    _send(settings, [(0, f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}") for i in range(3000)])
    reader = _reader(settings, group="keepalive")
    stop = threading.Event()
    try:
        first = reader.poll_batch(POLICY, stop, 5000)
        wait_for(
            lambda: (
                reader.total + len(first) >= 3000
                or bool(first.extend(reader.poll_batch(POLICY, stop, 200)))
            ),
            30,
            "the whole partition read ahead",
        )
        calls: list[float] = []
        real_poll = reader.consumer.poll

        def counting_poll(*args: Any, **kwargs: Any) -> Any:
            calls.append(time.monotonic())
            return real_poll(*args, **kwargs)

        reader.consumer.poll = counting_poll  # type: ignore[method-assign]
        started = time.monotonic()
        while time.monotonic() - started < 1.0:
            assert reader.poll_batch(POLICY, stop, 200), "the read-ahead ran out"
            time.sleep(0.02)  # the batch's work
        assert len(calls) >= 5, f"{len(calls)} polls in 1 s while serving the read-ahead"
    finally:
        reader.consumer.close(autocommit=False)
