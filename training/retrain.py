"""The retraining job: train a challenger, compare it with the champion, promote only a
model that is not worse (``finsent retrain --now | --schedule CRON``).

One run, start to end:

1. take the PostgreSQL advisory lock ``RETRAIN_LOCK_KEY`` (``pg_try_advisory_lock``, held on
   one connection for the whole run). A second run, on this machine or another, finds it
   taken, says which run holds it and exits (``RetrainLocked``). The lock dies with its
   connection, so a killed run never leaves it stuck;
2. holding the lock, any ``training_runs`` row still 'running' belongs to a process that
   is gone (a live one would hold the lock): it becomes 'failed' with that reason, and the
   half-written model directory it left is removed;
3. gather the base training data (``Settings.train_sentiment_csv`` / ``train_topic_csv``,
   minus the fixed dev split) plus every document's newest human label (``labels``);
4. train the challenger (``training.api.train_and_export``) into
   ``<model_registry_dir>/.<version>.partial``, check the directory is complete, and rename
   it to ``<model_registry_dir>/<version>`` (atomic on one file system): a crash mid-training
   leaves at most a ``.partial`` directory and never a registered version;
5. evaluate the challenger AND the champion on the same fixed evaluation set (the dev split
   of the base data, ``training.api.fixed_dev_split``) through the ONNX runtime;
6. decide (:func:`decide`): promote only when, on each head, the challenger's macro-F1 is not
   worse than the champion's by more than ``retrain_promote_margin`` and no class's recall
   drops by more than ``retrain_max_recall_drop``;
7. in ONE transaction: register the version in ``model_versions`` (champion, or rejected)
   with its metrics, and finish the ``training_runs`` row with both models' metrics, the
   decision and the reason. Workers polling ``current_champion`` switch between batches.

A failed or rejected run leaves the champion serving and says why (the run's ``reason``,
the log, the command's output). Artefacts of each run (``metrics.json``, the
training-curve PNG and the confusion matrices) go to ``<model_registry_dir>/runs/run-<id>/``.

When no champion is registered yet but the shipped model (``Settings.model_dir``) is
complete, it is registered first (as champion, under its manifest's version) so the
challenger has something to beat and ``finsent models rollback`` can return to it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy.engine import Connection, Engine

from pipeline import db, registry
from pipeline.errors import ConfigurationError, FinsentError, InputError, ModelError
from pipeline.labels import feedback_rows
from pipeline.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: the advisory lock every retraining run takes (a fixed 64-bit key: "finsentR" in ASCII)
RETRAIN_LOCK_KEY = int.from_bytes(b"finsentR", "big")
SCHEDULE_JOB_ID = "finsent-retrain"
SCHEDULE_TABLE = "apscheduler_jobs"
HEADS = ("sentiment", "topic")
EPSILON = 1e-9


class RetrainLocked(FinsentError):
    """Another retraining run holds the advisory lock; this one did nothing."""


@dataclass
class Decision:
    """Whether the challenger replaces the champion, and every reason why (or why not)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class RetrainOutcome:
    """What one run did: status is 'promoted', 'rejected' or 'failed'."""

    run_id: int
    status: str
    reason: str
    challenger_version: str | None = None
    champion_version: str | None = None
    challenger_metrics: dict[str, Any] | None = None
    champion_metrics: dict[str, Any] | None = None
    wall_s: float = 0.0
    run_dir: Path | None = None

    def summary(self) -> str:
        """A few lines for people: the decision, why, and both models' headline figures."""
        lines = [f"retraining run {self.run_id}: {self.status.upper()} ({self.wall_s:.1f} s)", f"  why: {self.reason}"]
        for name, version, metrics in (("challenger", self.challenger_version, self.challenger_metrics),
                                       ("champion", self.champion_version, self.champion_metrics)):
            if version is None and metrics is None:
                continue
            figures = ", ".join(
                f"{head} macro-F1 {metrics[head]['macro_f1']:.4f} acc {metrics[head]['accuracy']:.4f}"
                for head in HEADS if metrics and head in metrics
            ) or "no metrics"
            lines.append(f"  {name} {version or '-'}: {figures}")
        if self.run_dir is not None:
            lines.append(f"  artefacts: {self.run_dir}")
        if self.status != "promoted":
            lines.append(f"  the champion ({self.champion_version or 'shipped model'}) keeps serving")
        return "\n".join(lines)


# --- the promotion gate -------------------------------------------------------------------

def decide(challenger: dict[str, Any], champion: dict[str, Any] | None, *, margin: float,
           max_recall_drop: float) -> Decision:
    """The champion/challenger gate, a pure function of both models' metrics on the same rows.

    ``metrics[head]`` has ``macro_f1`` and ``recall`` (class -> recall). A head the champion
    was not evaluated on is not compared; a head the champion has and the challenger lacks
    rejects it. With no champion at all, the challenger is promoted.
    """
    if not champion:
        return Decision(True, ["no champion to compare with: the challenger becomes the first champion"])
    problems: list[str] = []
    notes: list[str] = []
    for head in HEADS:
        if head not in champion:
            continue
        if head not in challenger:
            problems.append(f"the challenger has no {head} metrics")
            continue
        new, old = float(challenger[head]["macro_f1"]), float(champion[head]["macro_f1"])
        if new < old - margin - EPSILON:
            problems.append(f"{head} macro-F1 {new:.4f} is worse than the champion's {old:.4f} "
                            f"by {old - new:.4f} (allowed: {margin})")
        else:
            notes.append(f"{head} macro-F1 {new:.4f} vs champion {old:.4f} ({new - old:+.4f})")
        new_recall = challenger[head].get("recall") or {}
        for cls, old_r in (champion[head].get("recall") or {}).items():
            new_r = float(new_recall.get(cls, 0.0))
            if float(old_r) - new_r > max_recall_drop + EPSILON:
                problems.append(f"{head} recall of {cls!r} drops {float(old_r):.4f} -> {new_r:.4f} "
                                f"(allowed drop: {max_recall_drop})")
    if problems:
        return Decision(False, problems)
    return Decision(True, notes + [f"no class's recall dropped by more than {max_recall_drop}"])


# --- the run ------------------------------------------------------------------------------

def _host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def new_version(run_id: int) -> str:
    """``r<run>-<UTC timestamp>``: unique, sortable, and says which run made it."""
    return f"r{run_id}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def _lock_holder(engine: Engine) -> str:
    with engine.connect() as conn:
        row = conn.execute(sa.text(
            "select id, started_at, host, trigger from training_runs where status = 'running' "
            "order by started_at desc limit 1")).first()
    if row is None:
        return "another retraining run"
    return f"run {row.id} ({row.trigger}, on {row.host}, started {row.started_at:%Y-%m-%d %H:%M:%S %Z})"


def abandon_stale_runs(conn: Connection, registry_dir: Path, by_run: int | None = None) -> list[int]:
    """Mark 'running' rows as failed and remove what they left half-written.

    Only call this while holding the retraining lock: then no live run exists, so every
    'running' row is a process that crashed or was killed.
    """
    rows = conn.execute(sa.text(
        "update training_runs set status = 'failed', finished_at = now(), "
        "reason = 'its process ended before the run finished (crash, kill or power loss); found by run ' "
        "|| coalesce(cast(:by as text), 'start-up') "
        "where status = 'running' and (cast(:by as bigint) is null or id <> cast(:by as bigint)) "
        "returning id, challenger_version"), {"by": by_run}).all()
    for row in rows:
        log.warning("training run %s was left 'running' by a process that is gone; marked failed", row.id)
        if row.challenger_version and registry.get_version(conn, row.challenger_version) is None:
            for leftover in (registry_dir / row.challenger_version, registry_dir / f".{row.challenger_version}.partial"):
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
        log.info("no champion registered and no complete shipped model (%s): the challenger competes with nobody", exc)
        return None
    version = str(manifest.get("version") or "shipped")
    with engine.begin() as conn:
        if registry.get_version(conn, version) is None:
            registry.register_version(conn, version, Path(settings.model_dir), {}, status="challenger")
        registry.promote(conn, version)
    log.info("registered the shipped model %s (%s) as the champion", version, settings.model_dir)
    return registry.current_champion(engine)


def _config_json(config: Any) -> dict[str, Any]:
    try:
        return asdict(config)
    except TypeError:
        return {"repr": repr(config)}


def with_champion_teacher(config: Any, champion: registry.ModelVersion | None, settings: Settings) -> Any:
    """``config`` with the champion as its distillation teacher, when ``retrain_distill`` is
    on, a champion exists and the config names no teacher of its own. A challenger trained
    on the champion's soft labels starts from what the champion knows, so a short run on
    new feedback no longer loses to it just for being short."""
    if not settings.retrain_distill or champion is None or getattr(config, "teacher", None):
        return config
    return replace(config, teacher=str(champion.path))


def _read_history(model_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch history the training code left in the model directory, if any."""
    for name in ("history.json", "metrics.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            for holder in (data, data.get("training") or {}):
                if isinstance(holder, dict) and isinstance(holder.get("history"), list):
                    return list(holder["history"])
    return []


def _own_dev_metrics(model_dir: Path, dev: Any) -> dict[str, Any] | None:
    """The int8 dev metrics the training code already wrote (same rows, same runtime), so
    the challenger is not evaluated twice; None when absent or made on other rows."""
    try:
        data = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    metrics = data.get("dev_int8") if isinstance(data, dict) else None
    if not isinstance(metrics, dict):
        return None
    expected = {"sentiment": len(dev.sentiment), "topic": len(dev.topic)}
    for head, n in expected.items():
        if n and (head not in metrics or metrics[head].get("n") != n):
            return None
    return metrics


def plot_training_curve(history: list[dict[str, Any]], path: Path) -> bool:
    """Loss and dev macro-F1 per epoch as a PNG; False when there is no history to plot."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h.get("loss", float("nan")) for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (smoothed)")
    for head in HEADS:
        key = f"{head}_macro_f1"
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=head)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("dev macro-F1")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _write_artefacts(run_dir: Path, payload: dict[str, Any], history: list[dict[str, Any]]) -> None:
    from training.evaluate import plot_confusion

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(payload, indent=2, default=str))
    plot_training_curve(history, run_dir / "training_curve.png")
    from pipeline.inference import SENTIMENTS, TOPICS

    for who in ("challenger", "champion"):
        metrics = payload.get(f"{who}_metrics") or {}
        for head, names in (("sentiment", SENTIMENTS), ("topic", TOPICS)):
            if head in metrics and "confusion" in metrics[head]:
                plot_confusion(metrics[head], names, f"{who} {payload.get(f'{who}_version')} {head}",
                               run_dir / f"confusion_{who}_{head}.png")


def run_retraining(settings: Settings | None = None, *, trigger: str = "manual", config: Any | None = None,
                   engine: Engine | None = None) -> RetrainOutcome:
    """One retraining run (see the module docstring). Raises ``RetrainLocked`` when another
    run holds the lock; every other failure is recorded and returned as status 'failed'."""
    settings = settings or get_settings()
    own_engine = engine is None
    if engine is None:
        url = db.database_url(settings)
        db.upgrade(url)
        engine = db.make_engine(url, pool_size=2)
    lock_conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        got = lock_conn.execute(sa.text("select pg_try_advisory_lock(:k)"), {"k": RETRAIN_LOCK_KEY}).scalar_one()
        if not got:
            raise RetrainLocked(f"{_lock_holder(engine)} holds the retraining lock; this run did nothing. "
                                "Wait for it to finish (see the training_runs table) and run again.")
        try:
            return _run_locked(settings, engine, trigger, config)
        finally:
            lock_conn.execute(sa.text("select pg_advisory_unlock(:k)"), {"k": RETRAIN_LOCK_KEY})
    finally:
        lock_conn.close()
        if own_engine:
            engine.dispose()


def _run_locked(settings: Settings, engine: Engine, trigger: str, config: Any | None) -> RetrainOutcome:
    from training import api

    t0 = time.perf_counter()
    registry_dir = Path(settings.model_registry_dir)
    registry_dir.mkdir(parents=True, exist_ok=True)
    config = config if config is not None else api.TrainConfig()
    with engine.begin() as conn:
        run_id = int(conn.execute(sa.text(
            "insert into training_runs (trigger, host, config) values (:t, :h, cast(:c as jsonb)) returning id"
        ), {"t": trigger, "h": _host(), "c": json.dumps(_config_json(config), default=str)}).scalar_one())
        abandon_stale_runs(conn, registry_dir, by_run=run_id)
        version = new_version(run_id)
        conn.execute(sa.text("update training_runs set challenger_version = :v where id = :i"),
                     {"v": version, "i": run_id})
    run_dir = registry_dir / "runs" / f"run-{run_id}"
    log.info("retraining run %s (%s) started: challenger %s", run_id, trigger, version)
    champion: registry.ModelVersion | None = None
    challenger_metrics: dict[str, Any] | None = None
    champion_metrics: dict[str, Any] | None = None
    try:
        champion = resolve_champion(engine, settings)
        config = with_champion_teacher(config, champion, settings)
        with engine.begin() as conn:
            conn.execute(sa.text("update training_runs set champion_version = :v, config = cast(:c as jsonb) "
                                 "where id = :i"),
                         {"v": champion.version if champion else None, "i": run_id,
                          "c": json.dumps(_config_json(config), default=str)})
        s_csv, t_csv = settings.train_sentiment_csv, settings.train_topic_csv
        feedback = feedback_rows(engine)
        if not s_csv and not t_csv:
            raise ConfigurationError("no base training data: set FINSENT_TRAIN_SENTIMENT_CSV and/or "
                                     "FINSENT_TRAIN_TOPIC_CSV (or --sentiment-csv/--topic-csv); the fixed "
                                     "evaluation set is carved from them")
        _, dev = api.fixed_dev_split(s_csv, t_csv)
        log.info("run %s: base data %s + %s; %d sentiment and %d topic feedback labels; "
                 "evaluation set %d sentiment + %d topic rows", run_id, s_csv, t_csv, len(feedback.sentiment),
                 len(feedback.topic), len(dev.sentiment), len(dev.topic))
        partial = registry_dir / f".{version}.partial"
        final = registry_dir / version
        train_t0 = time.perf_counter()
        # the memory cell is not retrained here: the challenger keeps the champion's
        api.train_and_export(partial, sentiment_csv=s_csv, topic_csv=t_csv, extra_sentiment=feedback.sentiment,
                             extra_topic=feedback.topic, config=config, version=version,
                             memory_from=champion.path if champion else None)
        train_s = time.perf_counter() - train_t0
        manifest = registry.check_model_dir(partial)
        if manifest.get("version") != version:
            raise ModelError(f"the training code wrote version {manifest.get('version')!r}, expected {version!r}")
        os.replace(partial, final)
        log.info("run %s: challenger %s trained and exported in %.1f s -> %s", run_id, version, train_s, final)

        challenger_metrics = _own_dev_metrics(final, dev) or api.evaluate_model_dir(final, dev.sentiment, dev.topic)
        if champion is not None:
            try:
                champion_metrics = api.evaluate_model_dir(champion.path, dev.sentiment, dev.topic)
            except Exception as exc:  # noqa: BLE001 - a broken champion must not block a working challenger
                log.error("run %s: the champion %s could not be evaluated: %s", run_id, champion.version, exc)
                champion_metrics = None
        decision = decide(challenger_metrics, champion_metrics, margin=settings.retrain_promote_margin,
                          max_recall_drop=settings.retrain_max_recall_drop)
        if champion is not None and champion_metrics is None:
            decision.reasons.insert(0, f"the champion {champion.version} could not be evaluated")
        status = "promoted" if decision.promote else "rejected"
        wall_s = time.perf_counter() - t0
        history = _read_history(final)
        payload = {"run_id": run_id, "status": status, "reason": decision.reason, "trigger": trigger,
                   "challenger_version": version, "champion_version": champion.version if champion else None,
                   "challenger_metrics": challenger_metrics, "champion_metrics": champion_metrics,
                   "feedback_labels": {"sentiment": len(feedback.sentiment), "topic": len(feedback.topic)},
                   "evaluation_rows": {"sentiment": len(dev.sentiment), "topic": len(dev.topic)},
                   "train_s": round(train_s, 1), "wall_s": round(wall_s, 1), "history": history,
                   "config": _config_json(config)}
        try:
            _write_artefacts(run_dir, payload, history)
        except Exception as exc:  # noqa: BLE001 - plots are for people; their failure must not lose the run
            log.warning("run %s: could not write the plots: %s", run_id, exc)
        with engine.begin() as conn:
            registry.register_version(conn, version, final, challenger_metrics, training_run_id=run_id,
                                      status="challenger" if decision.promote else "rejected")
            if decision.promote:
                registry.promote(conn, version)
            if champion is not None and champion_metrics is not None and not champion.metrics:
                conn.execute(sa.text("update model_versions set metrics = cast(:m as jsonb) where version = :v"),
                             {"m": json.dumps(champion_metrics), "v": champion.version})
            _finish(conn, run_id, status, decision.reason, challenger_metrics, champion_metrics)
        outcome = RetrainOutcome(run_id, status, decision.reason, version, champion.version if champion else None,
                                 challenger_metrics, champion_metrics, wall_s, run_dir)
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
        return RetrainOutcome(run_id, "failed", reason, None, champion.version if champion else None,
                              challenger_metrics, champion_metrics, time.perf_counter() - t0, None)


def _finish(conn: Connection, run_id: int, status: str, reason: str, challenger: dict[str, Any] | None,
            champion: dict[str, Any] | None) -> None:
    conn.execute(sa.text(
        "update training_runs set status = :s, reason = :r, finished_at = now(), "
        "challenger_metrics = cast(:cm as jsonb), champion_metrics = cast(:km as jsonb) where id = :i"
    ), {"s": status, "r": reason, "i": run_id,
        "cm": json.dumps(challenger) if challenger is not None else None,
        "km": json.dumps(champion) if champion is not None else None})


# --- the schedule -------------------------------------------------------------------------

#: set by run_schedule in the scheduler's process; the stored job carries no settings
#: (they may hold secrets and belong to the process, not the database)
_SCHEDULE_CONTEXT: dict[str, Any] = {}


def scheduled_retrain() -> None:
    """The stored job's target (referenced by name in the job store, so it must stay here)."""
    settings = _SCHEDULE_CONTEXT.get("settings") or get_settings()
    try:
        outcome = run_retraining(settings, trigger="schedule", config=_SCHEDULE_CONTEXT.get("config"))
    except RetrainLocked as exc:
        log.warning("scheduled retraining skipped: %s", exc)
        return
    log.info("scheduled retraining:\n%s", outcome.summary())


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_day_of_week(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday, 1 = Monday) in APScheduler's terms.

    APScheduler 3 numbers days from Monday = 0, even in ``CronTrigger.from_crontab``, so
    ``0 2 * * 1`` would fire on Tuesdays. Numeric days, ranges and steps are turned into
    day names here; named days (``mon-fri``) are kept as they are.
    """
    out: list[str] = []
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        if base != "*" and not base.replace("-", "").isdigit():
            out.append(part)  # names (mon, mon-fri, ...) mean the same in both
            continue
        step = int(step_text) if step_text else 1
        if base == "*":
            if not step_text:
                return "*"
            first, last = 0, 6
        elif "-" in base:
            first, last = (int(x) for x in base.split("-", 1))
        else:
            first = int(base)
            last = 7 if step_text else first
        if not (0 <= first <= 7 and 0 <= last <= 7 and first <= last and step >= 1):
            raise ValueError(f"day of week {part!r} is outside 0-7 (0 and 7 are Sunday)")
        out.extend(_DAY_NAMES[d % 7] for d in range(first, last + 1, step))
    return ",".join(dict.fromkeys(out))


def parse_cron(expression: str) -> Any:
    """A CronTrigger in UTC from a 5-field crontab (``m h dom mon dow``, with the usual
    crontab meaning: day of week 0 or 7 = Sunday) or a 6-field one with a leading seconds
    field (``s m h dom mon dow``). ConfigurationError says what is wrong."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ConfigurationError(f"schedule {expression!r} must have 5 fields (minute hour day month weekday, UTC), "
                                 "e.g. '0 2 * * *' for 02:00 UTC daily, or 6 with leading seconds")
    second = fields[0] if len(fields) == 6 else "0"
    minute, hour, day, month, dow = fields[-5:]
    try:
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month,
                           day_of_week=crontab_day_of_week(dow), timezone=UTC)
    except ValueError as exc:
        raise ConfigurationError(f"schedule {expression!r} is not a valid cron expression: {exc}") from exc


#: the only globals a stored job state may name: a cron trigger, its fields and expressions,
#: and datetimes. Everything else in the row (the job's function, its arguments) is checked
#: as data by :func:`load_job_state`.
_JOB_STATE_GLOBALS = {
    ("apscheduler.triggers.cron", "CronTrigger"),
    *(("apscheduler.triggers.cron.fields", name) for name in (
        "BaseField", "DayOfMonthField", "DayOfWeekField", "MonthField", "WeekField")),
    *(("apscheduler.triggers.cron.expressions", name) for name in (
        "AllExpression", "RangeExpression", "MonthRangeExpression", "WeekdayRangeExpression",
        "WeekdayPositionExpression", "LastDayOfMonthExpression")),
    ("datetime", "datetime"), ("datetime", "timedelta"), ("datetime", "timezone"),
}
SCHEDULE_JOB_FUNC = f"{__name__}:scheduled_retrain"


class UnsafeJobState(pickle.UnpicklingError):
    """A row of the job table is not a retraining job this code wrote."""


class _JobStateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _JOB_STATE_GLOBALS:
            raise UnsafeJobState(f"the stored job names {module}.{name}, which a retraining job never holds")
        return super().find_class(module, name)


def load_job_state(data: bytes) -> dict[str, Any]:
    """Decode one ``apscheduler_jobs.job_state`` WITHOUT running code from the database.

    APScheduler 3 stores jobs pickled, and a plain ``pickle.loads`` runs whatever the bytes
    say: anyone able to write that table would run code in the scheduler. Here only the
    classes of a cron trigger and datetimes may be named (an allow-list unpickler), and
    the job must call :func:`scheduled_retrain` with no arguments on our cron trigger: a
    job naming any other function (``os:system``, say) is code execution too, without any
    pickle trick, because APScheduler imports and calls whatever ``func`` names.
    Raises :class:`UnsafeJobState` otherwise.
    """
    from apscheduler.triggers.cron import CronTrigger

    state = _JobStateUnpickler(io.BytesIO(data)).load()
    if not isinstance(state, dict):
        raise UnsafeJobState(f"the stored job is a {type(state).__name__}, not a job state")
    problems = []
    if state.get("func") != SCHEDULE_JOB_FUNC:
        problems.append(f"calls {state.get('func')!r}, not {SCHEDULE_JOB_FUNC}")
    if tuple(state.get("args") or ()) or dict(state.get("kwargs") or {}):
        problems.append("has arguments")
    if not isinstance(state.get("trigger"), CronTrigger):
        problems.append(f"has a {type(state.get('trigger')).__name__} trigger")
    if state.get("executor") != "default":
        problems.append(f"runs on executor {state.get('executor')!r}")
    if problems:
        raise UnsafeJobState(f"stored job {state.get('id')!r} " + "; ".join(problems))
    return state


class RetrainJobStore(SQLAlchemyJobStore):
    """APScheduler's PostgreSQL job store, reading jobs through :func:`load_job_state`.

    A row it refuses is logged and removed by APScheduler (as any job it cannot restore),
    and ``run_schedule`` then stores the configured schedule afresh.
    """

    def _reconstitute_job(self, job_state: bytes) -> Job:
        state = load_job_state(job_state)
        state["jobstore"] = self
        job = Job.__new__(Job)
        job.__setstate__(state)
        job._scheduler = self._scheduler
        job._jobstore_alias = self._alias
        return job


def stored_job_trigger(engine: Engine) -> str | None:
    """The trigger of the job stored by an earlier scheduler, as text, or None (no job
    table, no job, or a row :func:`load_job_state` refuses: it is then replaced)."""
    store = RetrainJobStore(engine=engine, tablename=SCHEDULE_TABLE)
    try:
        job = store.lookup_job(SCHEDULE_JOB_ID)
    except sa.exc.ProgrammingError:
        return None
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError) as exc:
        log.warning("ignoring the stored retraining job (it is replaced by the configured schedule): %s", exc)
        return None
    return str(job.trigger) if job is not None else None


def run_schedule(settings: Settings, cron: str, *, config: Any | None = None,
                 stop_event: threading.Event | None = None) -> None:
    """Retrain on a cron schedule until stopped (SIGTERM/SIGINT, or ``stop_event``).

    The job lives in PostgreSQL (APScheduler's SQLAlchemyJobStore, table
    ``apscheduler_jobs``), so the schedule and its next fire time survive restarts, and
    each run is in ``training_runs``. A restart with the same schedule keeps the stored
    job (and so a fire time missed while the scheduler was down); a new schedule replaces it.

    * ``misfire_grace_time`` = ``Settings.retrain_misfire_grace_s`` (1 h by default): a
      run missed because the scheduler was down or busy still happens if the scheduler is
      back within the grace; after that it is skipped, so a long outage does not start a
      CPU-heavy training at an unplanned hour, and the next slot comes soon enough.
    * ``coalesce=True``: several missed fire times make ONE run, not a burst; one run
      trains on all the labels gathered so far, so repeating it adds nothing.
    * ``max_instances=1`` and one worker thread: a run that outlasts the interval delays
      the next one instead of overlapping it (the advisory lock guards other machines).

    SIGTERM stops the scheduler and lets a run in progress finish; a second signal exits
    at once, leaving that run to be marked failed (and cleaned up) by the next one.
    """
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.blocking import BlockingScheduler

    trigger = parse_cron(cron)
    url = db.database_url(settings)
    db.upgrade(url)
    engine = db.make_engine(url, pool_size=2)
    _SCHEDULE_CONTEXT.update(settings=settings, config=config)
    scheduler = BlockingScheduler(
        jobstores={"default": RetrainJobStore(engine=engine, tablename=SCHEDULE_TABLE)},
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": settings.retrain_misfire_grace_s},
        timezone=UTC,
    )
    stored = stored_job_trigger(engine)
    if stored == str(trigger):
        log.info("keeping the stored retraining schedule %s (next fire time as stored)", stored)
    else:
        if stored is not None:
            log.info("replacing the stored retraining schedule %s with %s", stored, trigger)
        scheduler.add_job(scheduled_retrain, trigger, id=SCHEDULE_JOB_ID, name="finsent retraining",
                          replace_existing=True)
    stop_event = stop_event or threading.Event()

    def _stop(*_: object) -> None:
        if stop_event.is_set():  # second signal: do not wait for the run in progress
            log.warning("second stop signal: exiting now; the next run marks the interrupted one failed")
            os._exit(143)
        log.info("stopping the retraining scheduler; a run in progress finishes first (signal again to abandon it)")
        stop_event.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)

    def _watch() -> None:
        stop_event.wait()
        if scheduler.running:
            scheduler.shutdown(wait=False)

    threading.Thread(target=_watch, name="retrain-schedule-stop", daemon=True).start()
    log.info("retraining scheduled: %s (UTC); job store: table %s in %s", cron, SCHEDULE_TABLE,
             db.database_description(settings))
    try:
        if not stop_event.is_set():
            scheduler.start()  # blocks until _watch shuts it down
    finally:
        stop_event.set()
        engine.dispose()


def train_config_from_json(text: str | None) -> Any | None:
    """A TrainConfig from a JSON object of overrides (``--train-config``), or None."""
    if not text:
        return None
    from training import api

    try:
        overrides = json.loads(text)
    except ValueError as exc:
        raise InputError(f"--train-config is not JSON: {exc}; give e.g. '{{\"epochs\": 1}}'") from exc
    if not isinstance(overrides, dict):
        raise InputError("--train-config must be a JSON object of TrainConfig fields, e.g. '{\"epochs\": 1}'")
    try:
        return api.TrainConfig(**overrides)
    except TypeError as exc:
        raise InputError(f"--train-config: {exc}") from exc
