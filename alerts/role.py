"""What ``finsent run`` / ``finsent demo`` start from the alert engine
(``pipeline.commands.stream.alerts_roles`` imports :func:`build_roles`)."""

from __future__ import annotations

import logging
from typing import Any

from alerts.service import AlertService
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def build_roles(settings: Settings, services: Any) -> list[AlertService]:
    """The alert service on the process's engine, or nothing when no rules are configured
    (the stream runs without alerts, and says so). A bad rules file raises RuleError: it
    should stop the daemon at start-up, not be skipped silently."""
    if settings.rules is None:
        log.warning("FINSENT_RULES is not set: running without alerts (see examples/rules.yaml)")
        return []
    return [AlertService(settings, engine=services.engine)]
