"""The initial finsent schema: documents, predictions, recurrent state, trends, ledger,
alerts and their outbox, silences, labels, model registry, training runs, feed cursors,
and the SQL views users query.

Every timestamp is ``timestamptz``; finsent writes UTC.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

TABLES = """
-- One row per document, whatever the source. id is stable (source + guid/url, else a
-- content hash), so re-ingesting the same item is an upsert, not a second row.
CREATE TABLE documents (
    id            text PRIMARY KEY,
    source        text NOT NULL,
    kind          text NOT NULL DEFAULT 'news' CHECK (kind IN ('news', 'social')),
    published_at  timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    title         text,
    text          text NOT NULL,
    url           text,
    author        text,
    language      text,
    entities      text[] NOT NULL DEFAULT '{}',
    extra         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX documents_published_at_idx ON documents (published_at);
CREATE INDEX documents_source_published_idx ON documents (source, published_at);
CREATE INDEX documents_entities_gin ON documents USING gin (entities);

-- One row per document and model version that scored it.
CREATE TABLE predictions (
    document_id       text NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    model_version     text NOT NULL,
    topic_id          smallint NOT NULL,
    topic             text NOT NULL,
    topic_confidence  real NOT NULL CHECK (topic_confidence BETWEEN 0 AND 1),
    sentiment         text NOT NULL CHECK (sentiment IN ('bearish', 'neutral', 'bullish')),
    p_bearish         real NOT NULL,
    p_neutral         real NOT NULL,
    p_bullish         real NOT NULL,
    doc_vector        real[],
    latency_ms        real,
    scored_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, model_version)
);
CREATE INDEX predictions_scored_at_idx ON predictions (scored_at);
CREATE INDEX predictions_topic_idx ON predictions (topic, sentiment);

-- The recurrent memory of each key ("topic:<name>" or "entity:<TICKER>").
CREATE TABLE key_state (
    key                     text PRIMARY KEY,
    key_kind                text NOT NULL CHECK (key_kind IN ('topic', 'entity')),
    state                   real[] NOT NULL,
    last_event_at           timestamptz,
    doc_count               bigint NOT NULL DEFAULT 0,
    negative_count          bigint NOT NULL DEFAULT 0,
    expected_negative_rate  real,
    surge_score             real,
    model_version           text,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    -- the key's newest document in its canonical order (order_at, document_id): the
    -- trends worker rewinds when a record sorts before it (see README, "Trends")
    last_order_at           timestamptz,
    last_document_id        text
);

-- One point per (key, document) the memory applied: the key's figures after it.
CREATE TABLE trend_points (
    id                      bigserial PRIMARY KEY,
    key                     text NOT NULL,
    event_at                timestamptz NOT NULL,
    document_id             text NOT NULL,
    sentiment               text NOT NULL CHECK (sentiment IN ('bearish', 'neutral', 'bullish')),
    p_bearish               real NOT NULL,
    expected_negative_rate  real NOT NULL,
    surge_score             real NOT NULL,
    doc_count               bigint NOT NULL,
    negative_count          bigint NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    -- what a rewind needs to replay this point: its position in the key's canonical
    -- order, the memory's inputs and the state after it (trends worker)
    order_at                timestamptz,
    p_neutral               real,
    p_bullish               real,
    topic_confidence        real,
    doc_vector              real[],
    state                   real[],
    model_version           text,
    UNIQUE (key, document_id)
);
CREATE INDEX trend_points_key_event_idx ON trend_points (key, event_at);
CREATE INDEX trend_points_event_idx ON trend_points (event_at);
CREATE INDEX trend_points_key_order_idx ON trend_points (key, order_at);

-- The applied-document ledger: a document moves a key's memory once, ever.
CREATE TABLE applied_documents (
    key          text NOT NULL,
    document_id  text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, document_id)
);

-- One row per fingerprint (rule + key + labels) and episode.
CREATE TABLE alerts (
    id                 bigserial PRIMARY KEY,
    fingerprint        text NOT NULL,
    rule_name          text NOT NULL,
    key                text NOT NULL,
    labels             jsonb NOT NULL DEFAULT '{}'::jsonb,
    annotations        jsonb NOT NULL DEFAULT '{}'::jsonb,
    severity           text NOT NULL DEFAULT 'warning',
    group_key          text,
    state              text NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    value              double precision,
    figures            jsonb NOT NULL DEFAULT '{}'::jsonb,
    pending_since      timestamptz NOT NULL,
    fired_at           timestamptz,
    resolved_at        timestamptz,
    last_evaluated_at  timestamptz,
    last_notified_at   timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now()
);
-- At most one open (pending or firing) episode per fingerprint, whatever runs at once.
CREATE UNIQUE INDEX alerts_one_open_episode ON alerts (fingerprint) WHERE state IN ('pending', 'firing');
CREATE INDEX alerts_state_idx ON alerts (state);
CREATE INDEX alerts_fingerprint_idx ON alerts (fingerprint, created_at);

-- The delivery outbox: one row per alert event, channel and target.
CREATE TABLE alert_deliveries (
    id               bigserial PRIMARY KEY,
    alert_id         bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    event            text NOT NULL CHECK (event IN ('firing', 'resolved', 'renotify')),
    channel          text NOT NULL CHECK (channel IN ('email', 'webhook')),
    target           text NOT NULL,
    idempotency_key  text NOT NULL UNIQUE,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'delivered', 'dead', 'silenced')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_deliveries_due_idx ON alert_deliveries (next_attempt_at) WHERE status IN ('pending', 'sending');

CREATE TABLE silences (
    id          bigserial PRIMARY KEY,
    matchers    jsonb NOT NULL,
    starts_at   timestamptz NOT NULL DEFAULT now(),
    ends_at     timestamptz NOT NULL,
    created_by  text NOT NULL DEFAULT current_user,
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX silences_active_idx ON silences (ends_at);

-- Alerts a backtest (`finsent alerts backtest --store`) says would have fired: kept apart
-- from live alerts so a replay never notifies anyone nor blocks a live episode.
CREATE TABLE alert_backtests (
    id             bigserial PRIMARY KEY,
    run_id         text NOT NULL,
    fingerprint    text NOT NULL,
    rule_name      text NOT NULL,
    key            text NOT NULL,
    labels         jsonb NOT NULL DEFAULT '{}'::jsonb,
    severity       text NOT NULL,
    state          text NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    value          double precision,
    figures        jsonb NOT NULL DEFAULT '{}'::jsonb,
    pending_since  timestamptz NOT NULL,
    fired_at       timestamptz,
    resolved_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_backtests_run_idx ON alert_backtests (run_id);

-- Human feedback for retraining.
CREATE TABLE labels (
    id                    bigserial PRIMARY KEY,
    document_id           text NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    sentiment             text CHECK (sentiment IN ('bearish', 'neutral', 'bullish')),
    topic_id              smallint,
    labelled_by           text NOT NULL,
    labelled_at           timestamptz NOT NULL DEFAULT now(),
    corrects_version      text,
    corrects_sentiment    text,
    corrects_topic_id     smallint,
    CHECK (sentiment IS NOT NULL OR topic_id IS NOT NULL)
);
CREATE INDEX labels_document_idx ON labels (document_id);

CREATE TABLE training_runs (
    id                  bigserial PRIMARY KEY,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    status              text NOT NULL DEFAULT 'running'
                        CHECK (status IN ('running', 'promoted', 'rejected', 'failed')),
    trigger             text NOT NULL DEFAULT 'manual',
    host                text,
    challenger_version  text,
    champion_version    text,
    challenger_metrics  jsonb,
    champion_metrics    jsonb,
    config              jsonb NOT NULL DEFAULT '{}'::jsonb,
    reason              text
);

CREATE TABLE model_versions (
    version          text PRIMARY KEY,
    status           text NOT NULL CHECK (status IN ('champion', 'challenger', 'retired', 'rejected')),
    path             text NOT NULL,
    metrics          jsonb NOT NULL DEFAULT '{}'::jsonb,
    training_run_id  bigint REFERENCES training_runs (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    promoted_at      timestamptz
);
-- Exactly one champion at a time.
CREATE UNIQUE INDEX model_versions_one_champion ON model_versions (status) WHERE status = 'champion';

-- Where each RSS/Atom feed's producer stopped, so a restart neither repeats nor skips.
CREATE TABLE feed_cursors (
    feed_url        text PRIMARY KEY,
    etag            text,
    last_modified   text,
    seen_ids        text[] NOT NULL DEFAULT '{}',
    last_fetched_at timestamptz,
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
"""

VIEWS = """
-- The newest prediction of each document (a document re-scored by a new model version
-- counts once, with its latest scores).
CREATE VIEW latest_predictions AS
SELECT DISTINCT ON (p.document_id) p.*
FROM predictions p
ORDER BY p.document_id, p.scored_at DESC;

-- Hourly sentiment per predicted topic, by document event time (UTC hours).
CREATE VIEW topic_sentiment_hourly AS
SELECT date_trunc('hour', d.published_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       lp.topic,
       count(*)                                          AS documents,
       count(*) FILTER (WHERE lp.sentiment = 'bearish')  AS bearish,
       count(*) FILTER (WHERE lp.sentiment = 'neutral')  AS neutral,
       count(*) FILTER (WHERE lp.sentiment = 'bullish')  AS bullish,
       avg(lp.p_bullish - lp.p_bearish)                  AS mean_sentiment,
       avg((lp.sentiment = 'bearish')::int)              AS negative_share
FROM latest_predictions lp
JOIN documents d ON d.id = lp.document_id
GROUP BY 1, 2;

-- Hourly sentiment per watched entity (ticker), by document event time (UTC hours).
CREATE VIEW entity_sentiment_hourly AS
SELECT date_trunc('hour', d.published_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       e.entity,
       count(*)                                          AS documents,
       count(*) FILTER (WHERE lp.sentiment = 'bearish')  AS bearish,
       count(*) FILTER (WHERE lp.sentiment = 'neutral')  AS neutral,
       count(*) FILTER (WHERE lp.sentiment = 'bullish')  AS bullish,
       avg(lp.p_bullish - lp.p_bearish)                  AS mean_sentiment,
       avg((lp.sentiment = 'bearish')::int)              AS negative_share
FROM latest_predictions lp
JOIN documents d ON d.id = lp.document_id
CROSS JOIN LATERAL unnest(d.entities) AS e(entity)
GROUP BY 1, 2;

-- Alerts that are pending or firing, with whether an active silence matches them
-- (a silence matches when every key/value of its matchers equals the alert's labels,
-- where the alert's labels include rule, key and severity).
CREATE VIEW open_alerts AS
SELECT a.id, a.fingerprint, a.rule_name, a.key, a.severity, a.state, a.value,
       a.labels, a.annotations, a.figures, a.pending_since, a.fired_at, a.last_notified_at,
       EXISTS (
           SELECT 1 FROM silences s
           WHERE now() >= s.starts_at AND now() < s.ends_at
             AND (a.labels || jsonb_build_object('rule', a.rule_name, 'key', a.key, 'severity', a.severity))
                 @> s.matchers
       ) AS silenced
FROM alerts a
WHERE a.state IN ('pending', 'firing');
"""

DROP = """
DROP VIEW IF EXISTS open_alerts;
DROP VIEW IF EXISTS entity_sentiment_hourly;
DROP VIEW IF EXISTS topic_sentiment_hourly;
DROP VIEW IF EXISTS latest_predictions;
DROP TABLE IF EXISTS feed_cursors;
DROP TABLE IF EXISTS model_versions;
DROP TABLE IF EXISTS training_runs;
DROP TABLE IF EXISTS labels;
DROP TABLE IF EXISTS alert_backtests;
DROP TABLE IF EXISTS silences;
DROP TABLE IF EXISTS alert_deliveries;
DROP TABLE IF EXISTS alerts;
DROP TABLE IF EXISTS applied_documents;
DROP TABLE IF EXISTS trend_points;
DROP TABLE IF EXISTS key_state;
DROP TABLE IF EXISTS predictions;
DROP TABLE IF EXISTS documents;
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(VIEWS)


def downgrade() -> None:
    op.execute(DROP)
