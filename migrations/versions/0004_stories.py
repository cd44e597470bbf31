"""Stories: one story, one count. ``documents.story_id`` (the id of the first document of
the document's story; NULL for rows stored before this revision), the LSH band table
``story_bands`` the scorer matches new documents against (``pipeline/stories.py``), and the
view ``stories``.

``story_bands`` holds one row per (band, band hash, story): the stories whose documents
hashed to that bucket of that band, with the event time of the story's first document
(``story_at``, what the horizon and the pruning use). The scorer deletes rows older than
twice the horizon; the PRIMARY KEY serves the lookups, ``story_bands_story_at_idx`` the
pruning.

Revision ID: 0004_stories
Revises: 0003_time_precision
Create Date: 2026-12-14
"""

from __future__ import annotations

from alembic import op

revision = "0004_stories"
down_revision = "0003_time_precision"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
ALTER TABLE documents ADD COLUMN story_id text;
-- a story's members, earliest first (the scorer reads the first few of each candidate story)
CREATE INDEX documents_story_id_idx ON documents (story_id, published_at, id);

CREATE TABLE story_bands (
    band         smallint NOT NULL CHECK (band >= 0),
    hash         bigint NOT NULL,
    story_id     text NOT NULL,
    document_id  text NOT NULL,   -- the document that put this story in this bucket
    event_at     timestamptz NOT NULL,
    story_at     timestamptz NOT NULL,
    entities     text[] NOT NULL DEFAULT '{}',  -- of the story's first document: stories
                                                -- naming a new document's entities rank first
    -- unique as (band, hash, story_id) is (a story has one story_at); this order serves the
    -- "most recent stories in this bucket within the horizon" lookup read backwards
    PRIMARY KEY (band, hash, story_at, story_id)
);
CREATE INDEX story_bands_story_at_idx ON story_bands (story_at);

-- One row per story: when it was first and last published, how many documents and
-- sources carried it, the headline of its first document (the one whose id is the
-- story id) and the entities any of its documents name.
CREATE VIEW stories AS
SELECT s.story_id,
       s.first_seen,
       s.last_seen,
       s.documents,
       s.sources,
       coalesce(nullif(f.title, ''), left(f.text, 300)) AS headline,
       f.source                                         AS first_source,
       f.published_at                                   AS first_published_at,
       s.source_names,
       ARRAY(SELECT DISTINCT e FROM documents m CROSS JOIN LATERAL unnest(m.entities) AS e
             WHERE m.story_id = s.story_id ORDER BY e) AS entities
FROM (
    SELECT d.story_id,
           min(d.published_at)                                AS first_seen,
           max(d.published_at)                                AS last_seen,
           count(*)                                           AS documents,
           count(DISTINCT d.source)                           AS sources,
           array_agg(DISTINCT d.source ORDER BY d.source)     AS source_names
    FROM documents d
    WHERE d.story_id IS NOT NULL
    GROUP BY d.story_id
) s
LEFT JOIN documents f ON f.id = s.story_id;
""")


def downgrade() -> None:
    op.execute("""
DROP VIEW IF EXISTS stories;
DROP TABLE IF EXISTS story_bands;
DROP INDEX IF EXISTS documents_story_id_idx;
ALTER TABLE documents DROP COLUMN IF EXISTS story_id;
""")
