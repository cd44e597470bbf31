"""Transitional: the four names ``pipeline/commands/retrain.py`` imports from here today.

Retraining lives in :mod:`training.retrain_run` (one run), :mod:`training.retrain_gate`,
:mod:`training.retrain_report`, :mod:`training.retrain_schedule` and
:mod:`training.retrain_jobstore`; the application calls it through :mod:`training.api`.
Delete this module once the command calls ``api.retrain_once`` / ``api.run_retrain_schedule``.
"""

from __future__ import annotations

from training.api import RetrainLocked, train_config_from_json
from training.api import retrain_once as run_retraining
from training.api import run_retrain_schedule as run_schedule

__all__ = ["RetrainLocked", "run_retraining", "run_schedule", "train_config_from_json"]
