"""``finsent retrain --schedule CRON``: retrain on a crontab schedule, in UTC, with the job
(and its next fire time) kept in PostgreSQL so it survives restarts (see
:func:`run_schedule` for misfires, overlaps and signals). Each run is one
:func:`training.retrain_run.run_retraining` with trigger 'schedule'.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import UTC
from typing import TYPE_CHECKING, Any

from pipeline import db
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings, get_settings
from training.errors import RetrainLocked
from training.retrain_jobstore import (
    SCHEDULE_JOB_ID,
    SCHEDULE_TABLE,
    RetrainJobStore,
    stored_job_trigger,
)
from training.retrain_run import run_retraining

if TYPE_CHECKING:
    from training.train import TrainConfig

log = logging.getLogger(__name__)

#: set by run_schedule in the scheduler's process; the stored job carries no settings
#: (they may hold secrets and belong to the process, not the database)
_SCHEDULE_CONTEXT: dict[str, Any] = {}


def scheduled_retrain() -> None:
    """The stored job's target. Rows name it (``SCHEDULE_JOB_FUNC`` in
    :mod:`training.retrain_jobstore`): moving or renaming it needs a new entry in
    ``PRE_SPLIT_JOB_FUNCS`` there, or stored schedules are dropped and replaced."""
    settings = _SCHEDULE_CONTEXT.get("settings") or get_settings()
    try:
        outcome = run_retraining(
            settings, trigger="schedule", config=_SCHEDULE_CONTEXT.get("config")
        )
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
        raise ConfigurationError(
            f"schedule {expression!r} must have 5 fields (minute hour day month weekday, UTC), "
            "e.g. '0 2 * * *' for 02:00 UTC daily, or 6 with leading seconds"
        )
    second = fields[0] if len(fields) == 6 else "0"
    minute, hour, day, month, dow = fields[-5:]
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=crontab_day_of_week(dow),
            timezone=UTC,
        )
    except ValueError as exc:
        raise ConfigurationError(
            f"schedule {expression!r} is not a valid cron expression: {exc}"
        ) from exc


def run_schedule(
    settings: Settings,
    cron: str,
    *,
    config: TrainConfig | None = None,
    stop_event: threading.Event | None = None,
) -> None:
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
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": settings.retrain_misfire_grace_s,
        },
        timezone=UTC,
    )
    stored = stored_job_trigger(engine)
    if stored == str(trigger):
        log.info("keeping the stored retraining schedule %s (next fire time as stored)", stored)
    else:
        if stored is not None:
            log.info("replacing the stored retraining schedule %s with %s", stored, trigger)
        scheduler.add_job(
            scheduled_retrain,
            trigger,
            id=SCHEDULE_JOB_ID,
            name="finsent retraining",
            replace_existing=True,
        )
    stop_event = stop_event or threading.Event()

    def _stop(*_: object) -> None:
        if stop_event.is_set():  # second signal: do not wait for the run in progress
            log.warning(
                "second stop signal: exiting now; the next run marks the interrupted one failed"
            )
            os._exit(143)
        log.info(
            "stopping the retraining scheduler; a run in progress finishes first (signal again to abandon it)"
        )
        stop_event.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)

    def _watch() -> None:
        stop_event.wait()
        if scheduler.running:
            scheduler.shutdown(wait=False)

    threading.Thread(target=_watch, name="retrain-schedule-stop", daemon=True).start()
    log.info(
        "retraining scheduled: %s (UTC); job store: table %s in %s",
        cron,
        SCHEDULE_TABLE,
        db.database_description(settings),
    )
    try:
        if not stop_event.is_set():
            scheduler.start()  # blocks until _watch shuts it down
    finally:
        stop_event.set()
        engine.dispose()
