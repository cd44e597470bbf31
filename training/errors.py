"""Errors of the training package, on the shared core's hierarchy (:mod:`pipeline.errors`).

    FinsentError
    ├── ConfigurationError
    │   └── TrainExtraMissing    torch & co. (the ``train`` extra) are not installed
    ├── ModelError
    │   ├── ExportParityError    an exported classifier ONNX disagrees with PyTorch
    │   └── MemoryExportError    memory.onnx disagrees with PyTorch or with the classifier
    ├── InputError
    │   └── UnsafeJobState       a stored scheduler job is not one this code wrote
    │                            (also a ``pickle.UnpicklingError``: see the class)
    └── RetrainLocked            another retraining run holds the advisory lock

Being FinsentErrors, the CLI shows each as one line (exit code 2); every message says what
was wrong and what to do. Programming errors (a bad argument from our own code) stay
``ValueError``.
"""

from __future__ import annotations

import pickle

from pipeline.errors import ConfigurationError, FinsentError, InputError, ModelError


class TrainExtraMissing(ConfigurationError):
    """Training needs the ``train`` extra: ``pip install -e '.[train]'``."""


class ExportParityError(ModelError):
    """An exported classifier variant disagrees with PyTorch: do not ship this export."""


class MemoryExportError(ModelError):
    """The exported memory.onnx disagrees with PyTorch, or its feature size does not match
    the classifier's doc vectors: do not ship it; re-export or report a bug."""


class UnsafeJobState(InputError, pickle.UnpicklingError):
    """A row of the job table is not a retraining job this code wrote.

    Also an ``UnpicklingError`` because APScheduler's job store and
    :func:`training.retrain_jobstore.stored_job_trigger` treat it as any row that cannot be
    restored: logged and replaced by the configured schedule."""


class RetrainLocked(FinsentError):
    """Another retraining run holds the advisory lock; this one did nothing."""
