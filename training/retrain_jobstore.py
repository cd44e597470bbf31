"""The retraining schedule's row in PostgreSQL (APScheduler's ``apscheduler_jobs``), read
without running code from the database.

APScheduler 3 stores jobs pickled and imports whatever function a row names, so a row is
checked as data (:func:`load_job_state`) before APScheduler sees it. The one job this code
writes calls :data:`SCHEDULE_JOB_FUNC` with no arguments on a cron trigger.
"""

from __future__ import annotations

import io
import logging
import pickle
from typing import Any

import sqlalchemy as sa
from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from sqlalchemy.engine import Engine

from training.errors import UnsafeJobState

log = logging.getLogger(__name__)

SCHEDULE_JOB_ID = "finsent-retrain"
SCHEDULE_TABLE = "apscheduler_jobs"
#: the stored job's target, by name (APScheduler's "module:function" reference); a test
#: checks it names :func:`training.retrain_schedule.scheduled_retrain`
SCHEDULE_JOB_FUNC = "training.retrain_schedule:scheduled_retrain"
#: the same target under the name it had before ``training/retrain.py`` was split: a row a
#: scheduler stored then is read as ours (and rewritten on its next update), so an upgrade
#: keeps the stored schedule and a fire time missed while it was down
PRE_SPLIT_JOB_FUNCS = frozenset({"training.retrain:scheduled_retrain"})

#: the only globals a stored job state may name: a cron trigger, its fields and expressions,
#: and datetimes. Everything else in the row (the job's function, its arguments) is checked
#: as data by :func:`load_job_state`.
_JOB_STATE_GLOBALS = {
    ("apscheduler.triggers.cron", "CronTrigger"),
    *(
        ("apscheduler.triggers.cron.fields", name)
        for name in ("BaseField", "DayOfMonthField", "DayOfWeekField", "MonthField", "WeekField")
    ),
    *(
        ("apscheduler.triggers.cron.expressions", name)
        for name in (
            "AllExpression",
            "RangeExpression",
            "MonthRangeExpression",
            "WeekdayRangeExpression",
            "WeekdayPositionExpression",
            "LastDayOfMonthExpression",
        )
    ),
    ("datetime", "datetime"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
}


class _JobStateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _JOB_STATE_GLOBALS:
            raise UnsafeJobState(
                f"the stored job names {module}.{name}, which a retraining job never holds"
            )
        return super().find_class(module, name)


def load_job_state(data: bytes) -> dict[str, Any]:
    """Decode one ``apscheduler_jobs.job_state`` WITHOUT running code from the database.

    APScheduler 3 stores jobs pickled, and a plain ``pickle.loads`` runs whatever the bytes
    say: anyone able to write that table would run code in the scheduler. Here only the
    classes of a cron trigger and datetimes may be named (an allow-list unpickler), and
    the job must call :data:`SCHEDULE_JOB_FUNC` with no arguments on our cron trigger: a
    job naming any other function (``os:system``, say) is code execution too, without any
    pickle trick, because APScheduler imports and calls whatever ``func`` names.
    A row naming the function's pre-split name (:data:`PRE_SPLIT_JOB_FUNCS`) is
    returned with the current name. Raises :class:`UnsafeJobState` otherwise.
    """
    from apscheduler.triggers.cron import CronTrigger

    state = _JobStateUnpickler(io.BytesIO(data)).load()
    if not isinstance(state, dict):
        raise UnsafeJobState(f"the stored job is a {type(state).__name__}, not a job state")
    if state.get("func") in PRE_SPLIT_JOB_FUNCS:
        state["func"] = SCHEDULE_JOB_FUNC
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
    and :func:`training.retrain_schedule.run_schedule` then stores the configured
    schedule afresh.
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
        log.warning(
            "ignoring the stored retraining job (it is replaced by the configured schedule): %s",
            exc,
        )
        return None
    return str(job.trigger) if job is not None else None
