"""Workers log their partition assignments, so a stuck rebalance is visible in their logs."""

from __future__ import annotations

import logging
from collections import deque

import pytest
from kafka.structs import TopicPartition

from consumers.batching import AssignmentLog, PartitionReader


def test_assignments_and_revocations_are_logged_with_the_partitions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="consumers.batching")
    listener = AssignmentLog("trends")
    listener.on_partitions_assigned(
        {TopicPartition("finsent.scored", 1), TopicPartition("finsent.scored", 0)}
    )
    listener.on_partitions_revoked({TopicPartition("finsent.scored", 0)})
    listener.on_partitions_assigned(set())
    messages = [r.getMessage() for r in caplog.records]
    assert "after subscribing (assignment 1): finsent.scored:0, finsent.scored:1" in messages[0]
    assert messages[0].startswith("trends: partitions assigned")
    assert messages[1] == "trends: partitions revoked: finsent.scored:0"
    assert messages[2].endswith("(assignment 2): none")


def test_reader_drops_revoked_buffers_remembers_where_to_resume_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="consumers.batching")
    merge = PartitionReader(None, lambda record: "", role="scorer")
    tp = TopicPartition("finsent.documents", 0)
    merge.buffers[tp] = deque([("a", Record(7)), ("b", Record(8))])
    merge.total = 2
    merge.on_partitions_revoked({tp})
    assert merge.total == 0 and tp not in merge.buffers
    assert merge.resume_at == {tp: 7}
    assert caplog.records[-1].getMessage() == "scorer: partitions revoked: finsent.documents:0"


class Record:
    def __init__(self, offset: int) -> None:
        self.offset = offset
