"""Group event-time watermarks: per consumer group, Kafka topic and partition, the event
time of the next record its owner will hand out (NULL: the partition is caught up).
Scorers sharing a backlog read each other's rows and keep within
``FINSENT_SCORER_MAX_DRIFT_S`` of the group's slowest partition, so no key's documents
reach the trends worker further out of event-time order than its lateness horizon
(``consumers/alignment.py``).

Revision ID: 0002_partition_watermarks
Revises: 0001_initial
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0002_partition_watermarks"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE TABLE partition_watermarks (
    group_id       text NOT NULL,
    kafka_topic    text NOT NULL,
    partition      integer NOT NULL CHECK (partition >= 0),
    next_event_at  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, kafka_topic, partition)
);
""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS partition_watermarks;")
