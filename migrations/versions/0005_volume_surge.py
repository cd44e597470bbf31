"""The memory's two surges: ``trend_points.volume_surge_score`` and
``key_state.volume_surge_score`` beside ``surge_score``.

Since this revision a memory cell has three outputs (``training/memory.py``): the expected
negative rate, the **negativity** surge score (``surge_score``: the bearish rate lifted
against the key's own level, blind to arrival times) and the **volume** surge score (the key's
documents arriving at least twice as fast as usual). The column is NULL for points written
before, and for points of a cell exported before the split (two outputs), so old rows and
old models keep working; ``kind: memory_surge`` rules with ``score: volume`` see no such
keys until a three-output cell serves them.

Revision ID: 0005_volume_surge
Revises: 0004_stories
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0005_volume_surge"
down_revision = "0004_stories"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: PostgreSQL adds the columns without rewriting the tables
    op.execute("""
ALTER TABLE trend_points ADD COLUMN volume_surge_score real;
ALTER TABLE key_state ADD COLUMN volume_surge_score real;
""")


def downgrade() -> None:
    op.execute("""
ALTER TABLE key_state DROP COLUMN IF EXISTS volume_surge_score;
ALTER TABLE trend_points DROP COLUMN IF EXISTS volume_surge_score;
""")
