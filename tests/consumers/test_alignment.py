"""The group event-time clock (``consumers.alignment``) on a real database: what limit a
member gets from its own partitions and the rows the other members published."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from consumers import alignment
from consumers.alignment import UNKNOWN, GroupClock

DAY = 86_400.0
T0 = datetime(2026, 1, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _refresh_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alignment, "REFRESH_S", 0.0)


def _clock(engine: sa.engine.Engine, group: str, *, missing_wait_s: float = 60.0) -> GroupClock:
    return GroupClock(
        engine, group, "docs", max_drift_s=DAY, missing_wait_s=missing_wait_s, role="scorer"
    )


def test_a_member_may_run_ahead_of_the_slowest_partition_by_the_drift_and_no_more(engine) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    slow, fast = _clock(engine, group), _clock(engine, group)
    assert (
        slow.limit({0: T0, 1: T0 + timedelta(days=3)}, {0, 1, 2}) is UNKNOWN
    )  # partition 2 unpublished
    assert fast.limit({2: T0 + timedelta(days=30)}, {0, 1, 2}) == T0 + timedelta(days=1)
    # the slow member's own limit comes from its fresh heads and the fast member's row
    assert slow.limit(
        {0: T0 + timedelta(hours=5), 1: T0 + timedelta(days=3)}, {0, 1, 2}
    ) == T0 + timedelta(hours=5) + timedelta(days=1)
    assert fast.limit({2: T0 + timedelta(days=30)}, {0, 1, 2}) == T0 + timedelta(
        hours=5
    ) + timedelta(days=1)


def test_caught_up_partitions_do_not_hold_anyone(engine) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    a, b = _clock(engine, group), _clock(engine, group)
    assert a.limit({0: None, 1: None}, {0, 1, 2}) is UNKNOWN
    assert b.limit({2: T0}, {0, 1, 2}) == T0 + timedelta(days=1)
    assert a.limit({0: None, 1: None}, {0, 1, 2}) == T0 + timedelta(days=1)
    assert b.limit({2: None}, {0, 1, 2}) is None  # nothing of the group is behind
    assert a.limit({0: None, 1: None}, {0, 1, 2}) is None


def test_a_partition_nobody_publishes_holds_the_group_only_for_the_wait(engine, caplog) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    clock = _clock(engine, group, missing_wait_s=0.0)
    with caplog.at_level("WARNING", logger="consumers.alignment"):
        assert clock.limit({0: T0}, {0, 1}) == T0 + timedelta(days=1)
    assert "no longer waiting for it" in caplog.text and "docs:1" in caplog.text


def test_a_revoked_partition_keeps_its_row_for_the_new_owner(engine) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    old, new, third = _clock(engine, group), _clock(engine, group), _clock(engine, group)
    third.limit({2: None}, {0, 1, 2})
    old.limit({0: T0, 1: T0 + timedelta(days=2)}, {0, 1, 2})
    old.forget({1})
    # the dead member's row is a lower bound: the new owner of 0 is held by partition 1's row
    assert new.limit({0: T0 + timedelta(days=5)}, {0, 1, 2}) == T0 + timedelta(days=3)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT partition, next_event_at FROM partition_watermarks "
                "WHERE group_id = :g ORDER BY 1"
            ),
            {"g": group},
        ).all()
    assert [(r.partition, r.next_event_at) for r in rows] == [
        (0, T0 + timedelta(days=5)),
        (1, T0 + timedelta(days=2)),
        (2, None),
    ]


def test_a_member_owning_every_partition_exchanges_nothing(engine) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    alone = _clock(engine, group)
    assert alone.limit({0: T0, 1: T0 + timedelta(days=3)}, {0, 1}) == T0 + timedelta(days=1)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT count(*) FROM partition_watermarks WHERE group_id = :g"), {"g": group}
        ).scalar()
    assert rows == 0  # no transaction on its serial path; a member that joins rebalances first
    # once it shares the topic, it publishes again
    assert alone.limit({0: T0}, {0, 1}) is UNKNOWN
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT count(*) FROM partition_watermarks WHERE group_id = :g"), {"g": group}
        ).scalar()
    assert rows == 1


def test_an_unreachable_database_never_blocks_the_poll_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pipeline import db
    from pipeline.embedded import free_port

    engine = db.make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    try:
        clock = _clock(engine, "g-down")
        with caplog.at_level("WARNING", logger="consumers.alignment"):
            assert clock.limit({0: T0}, {0}) == T0 + timedelta(days=1)
            assert clock.limit({0: T0}, {0, 1}) is UNKNOWN  # nothing known of partition 1
    finally:
        engine.dispose()
    assert "cannot exchange event-time watermarks" in caplog.text
