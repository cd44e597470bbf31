"""One retraining run: train a challenger, compare it with the champion, promote only a
model that is not worse (``finsent retrain --now``, and each run of ``--schedule CRON``).

One run, start to end:

1. take the PostgreSQL advisory lock ``RETRAIN_LOCK_KEY`` (``pg_try_advisory_lock``, held on
   one connection for the whole run). A second run, on this machine or another, finds it
   taken, says which run holds it and exits (:class:`~training.errors.RetrainLocked`). The
   lock dies with its connection, so a killed run never leaves it stuck;
2. holding the lock, any ``training_runs`` row still 'running' belongs to a process that
   is gone (a live one would hold the lock): it becomes 'failed' with that reason, and the
   half-written model directory it left is removed;
3. gather the base training data (``Settings.train_sentiment_csv`` / ``train_topic_csv``,
   minus the fixed dev split) plus every document's newest human label (``labels``);
4. train the challenger (:func:`training.train_run.train_and_export`) into
   ``<model_registry_dir>/.<version>.partial``, check the directory is complete, and rename
   it to ``<model_registry_dir>/<version>`` (atomic on one file system): a crash mid-training
   leaves at most a ``.partial`` directory and never a registered version;
5. evaluate the challenger AND the champion on the same fixed evaluation set (the dev split
   of the base data, :func:`training.data.fixed_dev_split`) through the ONNX runtime;
6. decide (:func:`training.retrain_gate.decide`): promote only when, on each head, the
   challenger's macro-F1 is not worse than the champion's by more than
   ``retrain_promote_margin`` and no class's recall drops by more than
   ``retrain_max_recall_drop``;
7. in ONE transaction: register the version in ``model_versions`` (champion, or rejected)
   with its metrics, and finish the ``training_runs`` row with both models' metrics, the
   decision and the reason. Workers polling ``current_champion`` switch between batches.

A failed or rejected run leaves the champion serving and says why (the run's ``reason``,
the log, the command's output). Artefacts of each run (``metrics.json``, the
training-curve PNG and the confusion matrices, :mod:`training.retrain_report`) go to
``<model_registry_dir>/runs/run-<id>/``. The schedule is :mod:`training.retrain_schedule`.

When no champion is registered yet but the shipped model (``Settings.model_dir``) is
complete, it is registered first (as champion, under its manifest's version) so the
challenger has something to beat and ``finsent models rollback`` can return to it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline import db, registry
from pipeline.errors import ConfigurationError, FinsentError, ModelError
from pipeline.labels import feedback_rows
from pipeline.settings import Settings, get_settings
from training.data import fixed_dev_split
from training.errors import RetrainLocked
from training.news_data import news_dev_rows
from training.retrain_gate import decide
from training.retrain_report import RetrainOutcome, read_history, write_artefacts

if TYPE_CHECKING:
    from training.train import TrainConfig

log = logging.getLogger(__name__)

#: the advisory lock every retraining run takes (a fixed 64-bit key: "finsentR" in ASCII)
RETRAIN_LOCK_KEY = int.from_bytes(b"finsentR", "big")


def _host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def new_version(run_id: int) -> str:
    """``r<run>-<UTC timestamp>``: unique, sortable, and says which run made it."""
    return f"r{run_id}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def _lock_holder(engine: Engine) -> str:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "select id, started_at, host, trigger from training_runs where status = 'running' "
                "order by started_at desc limit 1"
            )
        ).first()
    if row is None:
        return "another retraining run"
    return f"run {row.id} ({row.trigger}, on {row.host}, started {row.started_at:%Y-%m-%d %H:%M:%S %Z})"


def abandon_stale_runs(
    conn: Connection, registry_dir: Path, by_run: int | None = None
) -> list[int]:
    """Mark 'running' rows as failed and remove what they left half-written.

    Only call this while holding the retraining lock: then no live run exists, so every
    'running' row is a process that crashed or was killed.
    """
    rows = conn.execute(
        sa.text(
            "update training_runs set status = 'failed', finished_at = now(), "
            "reason = 'its process ended before the run finished (crash, kill or power loss); found by run ' "
            "|| coalesce(cast(:by as text), 'start-up') "
            "where status = 'running' and (cast(:by as bigint) is null or id <> cast(:by as bigint)) "
            "returning id, challenger_version"
        ),
        {"by": by_run},
    ).all()
    for row in rows:
        log.warning(
            "training run %s was left 'running' by a process that is gone; marked failed", row.id
        )
        if row.challenger_version and registry.get_version(conn, row.challenger_version) is None:
            for leftover in (
                registry_dir / row.challenger_version,
                registry_dir / f".{row.challenger_version}.partial",
            ):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
                    log.warning("removed %s left by failed run %s", leftover, row.id)
    if registry_dir.is_dir():
        for partial in registry_dir.glob(".*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
            log.warning("removed half-written model directory %s", partial)
    return [int(r.id) for r in rows]


def resolve_champion(engine: Engine, settings: Settings) -> registry.ModelVersion | None:
    """The registered champion; else the shipped model, registered as champion on the spot."""
    champion = registry.current_champion(engine)
    if champion is not None:
        return champion
    try:
        manifest = registry.check_model_dir(settings.model_dir)
    except ModelError as exc:
        log.info(
            "no champion registered and no complete shipped model (%s): the challenger competes with nobody",
            exc,
        )
        return None
    version = str(manifest.get("version") or "shipped")
    with engine.begin() as conn:
        if registry.get_version(conn, version) is None:
            registry.register_version(
                conn, version, Path(settings.model_dir), {}, status="challenger"
            )
        registry.promote(conn, version)
    log.info("registered the shipped model %s (%s) as the champion", version, settings.model_dir)
    return registry.current_champion(engine)


def _config_json(config: Any) -> dict[str, Any]:
    try:
        return asdict(config)
    except TypeError:
        return {"repr": repr(config)}


def with_champion_teacher(
    config: TrainConfig, champion: registry.ModelVersion | None, settings: Settings
) -> TrainConfig:
    """``config`` with the champion as its distillation teacher, when ``retrain_distill`` is
    on, a champion exists and the config names no teacher of its own. A challenger trained
    on the champion's soft labels starts from what the champion knows, so a short run on
    new feedback no longer loses to it just for being short."""
    if not settings.retrain_distill or champion is None or getattr(config, "teacher", None):
        return config
    return replace(config, teacher=str(champion.path))


def with_news_data(config: TrainConfig, settings: Settings) -> TrainConfig:
    """``config`` with the news data of the settings (``train_news_csv``: the hand-labelled
    news train set and, for selection and the gate, the news dev set;
    ``train_synthetic_news``) where the config names none of its own: the recipe of the
    shipped champion (issue #13) is what a scheduled run reproduces."""
    news_csv = config.news_csv or (str(settings.train_news_csv) if settings.train_news_csv else "")
    return replace(
        config,
        news_csv=news_csv,
        synthetic_news=config.synthetic_news or settings.train_synthetic_news,
    )


def _own_dev_metrics(
    model_dir: Path, dev: Any, news_dev: Sequence[tuple[str, int]] = ()
) -> dict[str, Any] | None:
    """The int8 dev metrics the training code already wrote (same rows, same runtime), so
    the challenger is not evaluated twice; None when absent or made on other rows."""
    try:
        data = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    metrics = data.get("dev_int8") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        return None
    expected = {
        "sentiment": len(dev.sentiment),
        "topic": len(dev.topic),
        "news_sentiment": len(news_dev),
    }
    for head, n in expected.items():
        if n and (head not in metrics or metrics[head].get("n") != n):
            return None
    return metrics


def run_retraining(
    settings: Settings | None = None,
    *,
    trigger: str = "manual",
    config: TrainConfig | None = None,
    engine: Engine | None = None,
    candidate: Path | None = None,
) -> RetrainOutcome:
    """One retraining run (see the module docstring). Raises ``RetrainLocked`` when another
    run holds the lock; every other failure is recorded and returned as status 'failed'.

    ``candidate``: a model directory trained elsewhere (e.g. by ``python -m training train``)
    takes the place of the training step: it is copied into the registry under its own
    manifest version, evaluated and gated exactly like a trained challenger."""
    settings = settings or get_settings()
    own_engine = engine is None
    if engine is None:
        url = db.database_url(settings)
        db.upgrade(url)
        engine = db.make_engine(url, pool_size=2)
    lock_conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        got = lock_conn.execute(
            sa.text("select pg_try_advisory_lock(:k)"), {"k": RETRAIN_LOCK_KEY}
        ).scalar_one()
        if not got:
            raise RetrainLocked(
                f"{_lock_holder(engine)} holds the retraining lock; this run did nothing. "
                "Wait for it to finish (see the training_runs table) and run again."
            )
        try:
            return _run_locked(settings, engine, trigger, config, candidate)
        finally:
            lock_conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": RETRAIN_LOCK_KEY})
    finally:
        lock_conn.close()
        if own_engine:
            engine.dispose()


def _candidate_version(candidate: Path, engine: Engine) -> str:
    """The manifest version of a candidate model directory; ModelError when the directory is
    incomplete or the version is registered already (a version names one directory)."""
    version = str(registry.check_model_dir(candidate).get("version") or "")
    if not version:
        raise ModelError(f"{candidate}/manifest.json has no version; export it with --version")
    with engine.connect() as conn:
        if registry.get_version(conn, version) is not None:
            raise ModelError(
                f"version {version} is registered already; export the candidate under a new "
                "--version (see 'finsent models list')"
            )
    return version


def _run_locked(
    settings: Settings,
    engine: Engine,
    trigger: str,
    config: TrainConfig | None,
    candidate: Path | None = None,
) -> RetrainOutcome:
    # torch is loaded here, not at import: the schedule and the job store work without it
    from training.model_dir import evaluate_model_dir
    from training.train import TrainConfig
    from training.train_run import train_and_export

    t0 = time.perf_counter()
    registry_dir = Path(settings.model_registry_dir)
    registry_dir.mkdir(parents=True, exist_ok=True)
    config = config if config is not None else TrainConfig()
    candidate_version = _candidate_version(candidate, engine) if candidate is not None else None
    with engine.begin() as conn:
        run_id = int(
            conn.execute(
                sa.text(
                    "insert into training_runs (trigger, host, config) values (:t, :h, cast(:c as jsonb)) returning id"
                ),
                {"t": trigger, "h": _host(), "c": json.dumps(_config_json(config), default=str)},
            ).scalar_one()
        )
        abandon_stale_runs(conn, registry_dir, by_run=run_id)
        version = candidate_version or new_version(run_id)
        conn.execute(
            sa.text("update training_runs set challenger_version = :v where id = :i"),
            {"v": version, "i": run_id},
        )
    run_dir = registry_dir / "runs" / f"run-{run_id}"
    log.info("retraining run %s (%s) started: challenger %s", run_id, trigger, version)
    champion: registry.ModelVersion | None = None
    challenger_metrics: dict[str, Any] | None = None
    champion_metrics: dict[str, Any] | None = None
    try:
        champion = resolve_champion(engine, settings)
        config = with_champion_teacher(config, champion, settings)
        config = with_news_data(config, settings)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "update training_runs set champion_version = :v, config = cast(:c as jsonb) "
                    "where id = :i"
                ),
                {
                    "v": champion.version if champion else None,
                    "i": run_id,
                    "c": json.dumps(_config_json(config), default=str),
                },
            )
        s_csv, t_csv = settings.train_sentiment_csv, settings.train_topic_csv
        feedback = feedback_rows(engine)
        if not s_csv and not t_csv:
            raise ConfigurationError(
                "no base training data: set FINSENT_TRAIN_SENTIMENT_CSV and/or "
                "FINSENT_TRAIN_TOPIC_CSV (or --sentiment-csv/--topic-csv); the fixed "
                "evaluation set is carved from them"
            )
        _, dev = fixed_dev_split(s_csv, t_csv)
        log.info(
            "run %s: base data %s + %s; %d sentiment and %d topic feedback labels; "
            "evaluation set %d sentiment + %d topic rows",
            run_id,
            s_csv,
            t_csv,
            len(feedback.sentiment),
            len(feedback.topic),
            len(dev.sentiment),
            len(dev.topic),
        )
        partial = registry_dir / f".{version}.partial"
        final = registry_dir / version
        train_t0 = time.perf_counter()
        if candidate is not None:
            shutil.copytree(candidate, partial)
            log.info(
                "run %s: candidate %s copied from %s (no training)", run_id, version, candidate
            )
        else:
            # the memory cell is not retrained here: the challenger keeps the champion's
            train_and_export(
                partial,
                sentiment_csv=s_csv,
                topic_csv=t_csv,
                extra_sentiment=feedback.sentiment,
                extra_topic=feedback.topic,
                config=config,
                version=version,
                memory_from=champion.path if champion else None,
            )
        train_s = time.perf_counter() - train_t0
        manifest = registry.check_model_dir(partial)
        if manifest.get("version") != version:
            raise ModelError(
                f"the training code wrote version {manifest.get('version')!r}, expected {version!r}"
            )
        os.replace(partial, final)
        log.info(
            "run %s: challenger %s trained and exported in %.1f s -> %s",
            run_id,
            version,
            train_s,
            final,
        )

        news_dev = news_dev_rows(config.news_csv)
        challenger_metrics = _own_dev_metrics(final, dev, news_dev) or evaluate_model_dir(
            final, dev.sentiment, dev.topic, news_dev
        )
        if champion is not None:
            try:
                champion_metrics = evaluate_model_dir(
                    champion.path, dev.sentiment, dev.topic, news_dev
                )
            except Exception as exc:  # noqa: BLE001 - a broken champion must not block a working challenger
                log.error(
                    "run %s: the champion %s could not be evaluated: %s",
                    run_id,
                    champion.version,
                    exc,
                )
                champion_metrics = None
        decision = decide(
            challenger_metrics,
            champion_metrics,
            margin=settings.retrain_promote_margin,
            max_recall_drop=settings.retrain_max_recall_drop,
        )
        if champion is not None and champion_metrics is None:
            decision.reasons.insert(0, f"the champion {champion.version} could not be evaluated")
        status = "promoted" if decision.promote else "rejected"
        wall_s = time.perf_counter() - t0
        history = read_history(final)
        payload = {
            "run_id": run_id,
            "status": status,
            "reason": decision.reason,
            "trigger": trigger,
            "challenger_version": version,
            "champion_version": champion.version if champion else None,
            "challenger_metrics": challenger_metrics,
            "champion_metrics": champion_metrics,
            "feedback_labels": {"sentiment": len(feedback.sentiment), "topic": len(feedback.topic)},
            "evaluation_rows": {"sentiment": len(dev.sentiment), "topic": len(dev.topic)},
            "train_s": round(train_s, 1),
            "wall_s": round(wall_s, 1),
            "history": history,
            "config": _config_json(config),
        }
        try:
            write_artefacts(run_dir, payload, history)
        except Exception as exc:  # noqa: BLE001 - plots are for people; their failure must not lose the run
            log.warning("run %s: could not write the plots: %s", run_id, exc)
        with engine.begin() as conn:
            registry.register_version(
                conn,
                version,
                final,
                challenger_metrics,
                training_run_id=run_id,
                status="challenger" if decision.promote else "rejected",
            )
            if decision.promote:
                registry.promote(conn, version)
            if champion is not None and champion_metrics is not None and not champion.metrics:
                conn.execute(
                    sa.text(
                        "update model_versions set metrics = cast(:m as jsonb) where version = :v"
                    ),
                    {"m": json.dumps(champion_metrics), "v": champion.version},
                )
            _finish(conn, run_id, status, decision.reason, challenger_metrics, champion_metrics)
        outcome = RetrainOutcome(
            run_id,
            status,
            decision.reason,
            version,
            champion.version if champion else None,
            challenger_metrics,
            champion_metrics,
            wall_s,
            run_dir,
        )
        log.info("retraining run %s %s in %.1f s: %s", run_id, status, wall_s, decision.reason)
        return outcome
    except Exception as exc:
        reason = str(exc) if isinstance(exc, FinsentError) else f"{type(exc).__name__}: {exc}"
        log.exception("retraining run %s failed: %s; the champion keeps serving", run_id, reason)
        for leftover in (registry_dir / f".{version}.partial", registry_dir / version):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        with engine.begin() as conn:
            _finish(conn, run_id, "failed", reason, challenger_metrics, champion_metrics)
        return RetrainOutcome(
            run_id,
            "failed",
            reason,
            None,
            champion.version if champion else None,
            challenger_metrics,
            champion_metrics,
            time.perf_counter() - t0,
            None,
        )


def _finish(
    conn: Connection,
    run_id: int,
    status: str,
    reason: str,
    challenger: dict[str, Any] | None,
    champion: dict[str, Any] | None,
) -> None:
    conn.execute(
        sa.text(
            "update training_runs set status = :s, reason = :r, finished_at = now(), "
            "challenger_metrics = cast(:cm as jsonb), champion_metrics = cast(:km as jsonb) where id = :i"
        ),
        {
            "s": status,
            "r": reason,
            "i": run_id,
            "cm": json.dumps(challenger) if challenger is not None else None,
            "km": json.dumps(champion) if champion is not None else None,
        },
    )
