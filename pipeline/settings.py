"""The one settings object of finsent.

Every field can be set by an environment variable ``FINSENT_<FIELD NAME IN CAPITALS>``
(for example ``FINSENT_DATABASE_URL``); a command-line flag overrides its variable by
passing the value to :func:`get_settings` as an override. The object is frozen: code
that needs a different value builds a new object with ``settings.model_copy(update=...)``
rather than mutating a shared one.

Credentials (``FINSENT_SMTP__PASSWORD``, ``FINSENT_WEBHOOK__SECRET``,
``FINSENT_HTTP_TOKEN``) are ``SecretStr``: ``repr(settings)`` and any log line that prints
a settings object show ``'**********'``; code that needs the value calls
``.get_secret_value()`` at the point of use. The database URL stays a plain string (SQLAlchemy
and Alembic take it as one), but ``repr(settings)`` shows it through :func:`redact_url`, and
so must every log line and error message that names it.

Grouped knobs are value objects (``BatchPolicy``, ``KafkaTimeouts``, ``SmtpSettings``,
``WebhookSettings``); nested fields are set with a double underscore, e.g.
``FINSENT_BATCH__MAX_SIZE=64`` or ``FINSENT_SMTP__HOST=mail.example.com``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.errors import ConfigurationError

ENV_PREFIX = "FINSENT_"
#: The model shipped with finsent: package data of the application package, which is
#: installed next to this one (a source checkout and a wheel alike). A path, not an
#: import: the base layer never imports the application.
SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "finsent" / "model"
REDACTED = "***"


def redact_url(url: str | None) -> str:
    """``url`` with the password replaced by ``***``, for logs and error messages.

    Use it wherever a database or Kafka URL may be shown: start-up lines, ``finsent
    status``, exceptions. Text that is not a URL with credentials comes back unchanged.

    >>> redact_url("postgresql+psycopg://finsent:s3cret@db.internal:5432/finsent")
    'postgresql+psycopg://finsent:***@db.internal:5432/finsent'
    >>> redact_url("postgresql://db.internal/finsent")
    'postgresql://db.internal/finsent'
    >>> redact_url("kafka1:9092,kafka2:9092")
    'kafka1:9092,kafka2:9092'
    >>> redact_url("kafka://user:pa%40ss@broker:9093")
    'kafka://user:***@broker:9093'
    >>> redact_url(None)
    ''
    """
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED  # unparseable: it may still hold a password
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def secret_value(secret: SecretStr | str | None) -> str | None:
    """The plain value of a credential field, at the point of use (None when unset).

    Takes a plain ``str`` too: ``settings.model_copy(update=...)`` does not validate, so a
    copy may hold one.

    >>> secret_value(SecretStr("s3cret")), secret_value(None)
    ('s3cret', None)
    """
    if secret is None:
        return None
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


class BatchPolicy(BaseModel):
    """How the stream workers cut micro-batches: whichever limit is reached first."""

    model_config = ConfigDict(frozen=True)

    max_size: int = Field(32, ge=1, le=4096, description="documents per batch at most")
    max_wait_ms: int = Field(
        200, ge=1, le=60_000, description="wait for a fuller batch at most this long"
    )


class KafkaTimeouts(BaseModel):
    """Consumer-group timing. Group join takes about session_timeout_ms / 2 on the
    embedded broker (see notes/broker.md), so the demo and tests use short values."""

    model_config = ConfigDict(frozen=True)

    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    request_timeout_ms: int = Field(30_000, ge=1_000)
    poll_timeout_ms: int = Field(500, ge=10)


class SmtpSettings(BaseModel):
    """Outgoing mail for alert notifications."""

    model_config = ConfigDict(frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = "finsent@localhost"
    recipients: tuple[str, ...] = ()
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="total deadline of one send (connect, TLS, EHLO, STARTTLS, "
        "AUTH, the message and QUIT together); capped at half of FINSENT_DELIVERY__LEASE_S",
    )
    tls_ca_file: Path | None = Field(
        None, description="CA bundle to trust for STARTTLS/SSL (default: the system's)"
    )


class WebhookSettings(BaseModel):
    """Outgoing signed webhooks for alert notifications."""

    model_config = ConfigDict(frozen=True)

    url: str | None = None
    secret: SecretStr | None = Field(
        None, description="shared HMAC-SHA256 secret for the signature header"
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        description="total deadline of one send (connect, request, whole "
        "answer); capped at half of FINSENT_DELIVERY__LEASE_S",
    )


class DeliveryPolicy(BaseModel):
    """Retries of the alert outbox: exponential backoff with jitter, bounded."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(8, ge=1)
    base_delay_s: float = Field(2.0, gt=0)
    max_delay_s: float = Field(600.0, gt=0)
    lease_s: float = Field(
        120.0,
        gt=0,
        description="a claimed ('sending') delivery is retried after this if its dispatcher died",
    )
    poll_interval_s: float = Field(
        1.0, gt=0, description="how often the dispatcher looks for due deliveries"
    )


class FeedPolicy(BaseModel):
    """RSS/Atom polling: how often, how long to wait, how far to back off a failing feed."""

    model_config = ConfigDict(frozen=True)

    urls: tuple[str, ...] = Field(
        (), description="feeds `finsent run` polls (FINSENT_FEEDS__URLS as a JSON list)"
    )
    interval_s: float = Field(60.0, gt=0, description="seconds between polls of one feed")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one fetch")
    max_backoff_s: float = Field(
        900.0, gt=0, description="a failing feed is retried at most this far apart"
    )
    max_seen_ids: int = Field(
        5000, ge=10, description="ids remembered per feed so a restart does not re-send"
    )


class Settings(BaseSettings):
    """Everything finsent reads from its environment. See the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of PostgreSQL (postgresql+psycopg://...). Empty: "
        "127.0.0.1:5432 if a server answers there, else an embedded PostgreSQL (pgserver).",
    )
    embedded_pg_dir: Path = Field(
        Path.home() / ".finsent" / "pgdata",
        description="data directory of the embedded PostgreSQL, when it is used",
    )
    kafka_bootstrap: str | None = Field(
        None, description="comma-separated host:port list. Empty: start the embedded broker."
    )
    kafka_partitions: int = Field(
        4,
        ge=1,
        le=1024,
        description="partitions of the project's Kafka topics when finsent creates them",
    )
    kafka_compression: Literal["none", "lz4", "gzip", "snappy", "zstd"] = Field(
        "lz4",
        description="compression of every record batch finsent produces. lz4 by default: kafka-python "
        "compresses gzip at level 9, about 100 us per scored record (0.17 ms of CPU per document "
        "on the scorer's forward path, bench/pipeline.py), lz4 about 3 us at 60 % of gzip's ratio. "
        "'none' saves that too where the network is local; snappy and zstd need the python-snappy "
        "or zstandard package installed",
    )
    kafka_topic_documents: str = "finsent.documents"
    kafka_topic_scored: str = "finsent.scored"
    kafka_topic_dlq: str = "finsent.dlq"
    kafka_group_prefix: str = Field(
        "finsent",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="consumer groups are PREFIX-scorer and PREFIX-trends: give each deployment that "
        "shares a Kafka cluster its own prefix, or they split each other's partitions",
    )
    kafka_static_membership: bool = Field(
        True,
        description="join consumer groups as a static member (Kafka group.instance.id = FINSENT_WORKER_ID): "
        "a worker restarted after a crash takes its partitions back without waiting for the dead member's "
        "session to expire and a second rebalance (measured on tansu: 8 s instead of 18 s at the default "
        "10 s session). A static member does not leave the group on shutdown: its partitions wait one "
        "session timeout for it",
    )
    worker_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,200}$",
        description="this worker's stable name in its consumer groups (static membership). Default: the "
        "host name. Two workers of one role on one host need different ids (e.g. scorer-1, scorer-2)",
    )
    kafka: KafkaTimeouts = KafkaTimeouts()
    batch: BatchPolicy = BatchPolicy()

    model_dir: Path = Field(
        SHIPPED_MODEL_DIR,
        description="the model served while no champion is registered (default: the shipped one)",
    )
    model_registry_dir: Path = Field(
        Path.home() / ".finsent" / "models",
        description="where retraining writes new model versions",
    )
    ort_providers: tuple[str, ...] = Field(
        (),
        description="onnxruntime execution providers in order of preference; empty = automatic (CUDA when the "
        "installed runtime offers it, else CPU); a listed provider that cannot be used is skipped "
        "with one WARNING",
    )
    ort_intra_threads: int = Field(
        1,
        ge=0,
        description="onnxruntime intra-op threads (0 = onnxruntime's default, one per core). 1 by "
        "default: the scorer shares the cores with trends, the broker and PostgreSQL, and a second "
        "spinning onnxruntime thread starved them (bench/pipeline.py on 2 cores: p99 at half load "
        "4.4 s with 2 threads, 0.36 s with 1). 'finsent classify' uses every core unless this is set",
    )
    ort_inter_threads: int = Field(1, ge=0)
    gil_switch_interval_s: float = Field(
        0.0005,
        gt=0,
        le=0.1,
        description="sys.setswitchinterval for the stream processes (finsent run / worker / demo): the "
        "scorer releases the GIL for each onnxruntime call and must get it back while trends, the "
        "producer and the consumer threads run Python; at Python's 5 ms default it waited for it "
        "(bench/pipeline.py: 500 -> 520 docs/s at 0.5 ms)",
    )
    max_text_chars: int = Field(
        20_000, ge=100, description="documents are truncated to this many characters"
    )
    max_tokens: int = Field(128, ge=8, le=512, description="tokenizer truncation length")
    batch_independent_inference: bool = Field(
        True,
        description="a document's prediction never depends on the other documents of its batch (exact "
        "replays). Models whose manifest has classifier.cpu_exact_batching (written by training.batch_exact; "
        "the shipped model has it) are bit-exact in any batch and run inference_run_batch documents per "
        "onnxruntime call; any other model (and the GPU file) then gets one call per document. Off: "
        "batches for every model (their fp32 pooling then moves outputs by ~1e-7 with the batch mates, "
        "dynamically quantized int8 by up to ~0.1)",
    )
    inference_run_batch: int = Field(
        8,
        ge=1,
        le=256,
        description="documents per onnxruntime call when batching (texts sorted by length, each call padded "
        "to its longest): 4-8 measured fastest on a 2-core AVX2 machine at one ORT thread (bench/model.py)",
    )

    rules: Path | None = Field(None, description="alert rules YAML")
    watchlist: Path | None = Field(
        None, description="entity watchlist YAML (ticker: [names, aliases])"
    )
    alert_interval_s: float = Field(30.0, gt=0, description="how often alert rules are evaluated")
    alert_clock: Literal["wall", "data"] = Field(
        "wall",
        description="alert evaluation instants follow the wall clock, or (data) the newest event time "
        "in trend_points, so replaying history through the stream raises its alerts (demos, replays)",
    )
    smtp: SmtpSettings = SmtpSettings()
    webhook: WebhookSettings = WebhookSettings()
    delivery: DeliveryPolicy = DeliveryPolicy()

    feeds: FeedPolicy = FeedPolicy()

    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP ingest, /healthz and /metrics")
    http_token: SecretStr | None = Field(
        None, description="bearer token required by HTTP ingest when set"
    )
    http_max_body_bytes: int = Field(5_000_000, ge=1024)
    http_backlog: int = Field(
        2048, ge=1, description="listen() backlog: connections the kernel queues before accept"
    )
    http_max_connections: int = Field(
        1000,
        ge=1,
        description="open connections (or requests in flight) served at once; beyond it a request "
        "gets 503 at once (no thread is started for it)",
    )
    http_keepalive_timeout_s: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    http_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a client gets this long to send a request's headers, and again its body; "
        "slower: 408 and the handler never runs",
    )
    shutdown_grace_s: float = Field(
        30.0,
        gt=0,
        description="SIGTERM: stop every role, stage by stage (and drain the embedded broker), within this",
    )
    model_poll_s: float = Field(
        5.0, gt=0, description="stream workers check model_versions for a new champion this often"
    )
    lateness_horizon_s: float = Field(
        604_800.0,
        ge=0,
        description="trends: a record older than its key's newest by more than this is "
        "applied in arrival order (logged) instead of rewinding the key's memory",
    )
    scorer_max_drift_s: float = Field(
        86_400.0,
        ge=0,
        description="scorers sharing a backlog hold back documents later than the group's slowest "
        "partition plus this (event time), so a key's documents reach trends within its lateness horizon; "
        "must not exceed FINSENT_LATENESS_HORIZON_S",
    )
    scorer_align_wait_s: float = Field(
        30.0,
        ge=0,
        description="how long scorers wait for a partition whose event-time watermark no member "
        "has published yet before ignoring it (logged)",
    )

    story_grouping: bool = Field(
        False,
        description="the scorer gives each stored document a story_id (near-duplicate headlines "
        "across outlets, pipeline/stories.py) in its store transaction. Off by default: it "
        "serialises scorers on one advisory lock and rewrites each documents row once (about "
        "1-3 ms per document, measured under load); alert rules do not count stories yet",
    )
    train_sentiment_csv: Path | None = Field(
        None, description="labelled sentiment training CSV (text,label)"
    )
    train_topic_csv: Path | None = Field(
        None, description="labelled topic training CSV (text,label)"
    )
    train_news_csv: Path | None = Field(
        None,
        description="the external headline file rss_finance_headlines_2021.csv.gz: retraining adds "
        "the hand-labelled news train set (training/news_train) and evaluates both models on the "
        "news dev set (training/news_dev), which the gate then compares too",
    )
    train_synthetic_news: bool = Field(
        False,
        description="retraining adds finsent's own synthetic news headlines "
        "(training/news_synth/headlines.csv)",
    )
    retrain_promote_margin: float = Field(
        0.005, ge=0, description="challenger may be this much worse in macro-F1 and still win"
    )
    retrain_max_recall_drop: float = Field(
        0.05, ge=0, description="no class's recall may drop more than this"
    )
    retrain_distill: bool = Field(
        True,
        description="the champion teaches the challenger: its predictions label the head each "
        "training row has no gold label for (self-distillation; see training/distill.py)",
    )
    retrain_misfire_grace_s: int = Field(
        3600,
        ge=1,
        description="a scheduled retraining missed while the scheduler was down still runs (once) "
        "if the scheduler is back within this many seconds; later, it waits for the next slot",
    )

    log_level: str = "INFO"

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        value = value.strip()
        if not value.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError(
                "FINSENT_DATABASE_URL must be a PostgreSQL URL such as "
                "postgresql+psycopg://user:password@host:5432/dbname"
            )
        from sqlalchemy.engine import make_url

        try:
            url = make_url(value)
        except Exception as exc:
            raise ValueError(f"FINSENT_DATABASE_URL is not a valid URL: {exc}") from exc
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"FINSENT_KAFKA_BOOTSTRAP entry {server.strip()!r} is not host:port; "
                    "give a comma-separated list such as kafka1:9092,kafka2:9092"
                )
        return value.strip()

    @model_validator(mode="after")
    def _check_drift_within_horizon(self) -> Settings:
        if self.scorer_max_drift_s > self.lateness_horizon_s:
            raise ValueError(
                f"FINSENT_SCORER_MAX_DRIFT_S ({self.scorer_max_drift_s:g}) exceeds FINSENT_LATENESS_HORIZON_S "
                f"({self.lateness_horizon_s:g}): scorers could then hand a key documents further out of order than "
                "trends can rewind; lower the drift or raise the horizon"
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Like pydantic's, with the database URL's password masked: settings objects end
        up in logs and tracebacks (the secrets proper are SecretStr already)."""
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "database_url" and value else value

    def group_id(self, role: str) -> str:
        """The consumer group of a stream role (``scorer``, ``trends``)."""
        return f"{self.kafka_group_prefix}-{role}"

    def group_instance_id(self) -> str | None:
        """This process's static member id in every group it joins (None: dynamic
        membership). Stable across restarts, which is the point: see ``kafka_static_membership``."""
        if not self.kafka_static_membership:
            return None
        import socket

        return self.worker_id or socket.gethostname() or "finsent"

    @property
    def kafka_topics(self) -> tuple[str, str, str]:
        """The project's three Kafka topics: documents, scored, dead letters."""
        return (self.kafka_topic_documents, self.kafka_topic_scored, self.kafka_topic_dlq)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus explicit overrides (CLI flags).

    Raises ConfigurationError naming the ``FINSENT_*`` variable that is wrong.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = "__".join(str(part) for part in err["loc"])
            problems.append(f"{ENV_PREFIX}{loc.upper()}: {err['msg']}")
        raise ConfigurationError("invalid settings:\n  " + "\n  ".join(problems)) from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached; tests call
    ``get_settings.cache_clear()`` after changing the environment)."""
    return load_settings()
