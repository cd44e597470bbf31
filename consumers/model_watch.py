"""Which model a stream worker serves, and hot reloads between batches.

The champion in ``model_versions`` wins; with none registered the worker serves
``Settings.model_dir`` (the shipped model). :meth:`ModelWatcher.maybe_reload` is called
between batches only, so a batch is always scored by one model from start to end and each
prediction records the version that made it. The check is one indexed SELECT every
``Settings.model_poll_s`` seconds; a champion that fails to load is logged and the worker
keeps serving what it has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline.errors import ModelError
from pipeline.registry import current_champion
from pipeline.settings import Settings

log = logging.getLogger(__name__)

M = TypeVar("M")


class ModelWatcher(Generic[M]):
    """Holds the loaded model ``M`` (whatever ``loader`` builds from a model directory)."""

    def __init__(
        self, settings: Settings, engine: Engine, loader: Callable[[Path], M], role: str
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.loader = loader
        self.role = role
        self.model: M | None = None
        self.path: Path | None = None
        self._checked = 0.0

    def _wanted_path(self) -> Path:
        champion = current_champion(self.engine)
        return champion.path if champion is not None else Path(self.settings.model_dir)

    def load_initial(self, wanted: Path | None = None) -> M:
        """Load the champion (or the configured model directory); raises ModelError."""
        path = wanted if wanted is not None else self._wanted_path()
        self.model = self.loader(path)
        self.path = path
        self._checked = time.monotonic()
        return self.model

    def maybe_reload(self) -> bool:
        """Reload when the champion changed; True when a new model is now served."""
        now = time.monotonic()
        if self.model is not None and now - self._checked < self.settings.model_poll_s:
            return False
        self._checked = now
        try:
            wanted = self._wanted_path()
        except SQLAlchemyError as exc:
            log.warning(
                "%s: cannot check for a new champion (%s); keeping the current model",
                self.role,
                exc,
            )
            return False
        if self.model is not None and wanted == self.path:
            return False
        try:
            self.model = self.loader(wanted)
        except ModelError as exc:
            log.error(
                "%s: the champion at %s does not load (%s); still serving %s",
                self.role,
                wanted,
                exc,
                self.path,
            )
            return False
        log.info("%s: now serving the model at %s", self.role, wanted)
        self.path = wanted
        return True
