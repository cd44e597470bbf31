"""Documents carry their time precision: ``documents.time_precision`` and, copied by the
trends worker, ``trend_points.time_precision`` (so the alert evaluator reads it without a
join). One of ``second``, ``minute``, ``hour``, ``day``; ``second`` for every row written
before (the default, so old producers and workers keep working). Many news sources give a
date, not a time: a ``day`` document's ``published_at`` is the start of its day (in the
source's time zone, stored as UTC) and stands for the whole day.

Revision ID: 0003_time_precision
Revises: 0002_partition_watermarks
Create Date: 2026-12-14
"""

from __future__ import annotations

from alembic import op

revision = "0003_time_precision"
down_revision = "0002_partition_watermarks"
branch_labels = None
depends_on = None

PRECISIONS = "('second', 'minute', 'hour', 'day')"


def upgrade() -> None:
    # A constant default: PostgreSQL 11+ adds the column without rewriting the table.
    op.execute(f"""
ALTER TABLE documents
    ADD COLUMN time_precision text NOT NULL DEFAULT 'second'
    CONSTRAINT documents_time_precision_check CHECK (time_precision IN {PRECISIONS});
ALTER TABLE trend_points
    ADD COLUMN time_precision text NOT NULL DEFAULT 'second'
    CONSTRAINT trend_points_time_precision_check CHECK (time_precision IN {PRECISIONS});
""")


def downgrade() -> None:
    op.execute("""
ALTER TABLE trend_points DROP COLUMN IF EXISTS time_precision;
ALTER TABLE documents DROP COLUMN IF EXISTS time_precision;
""")
