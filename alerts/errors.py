"""Errors of the alert engine.

    FinsentError (pipeline.errors)
    ├── ConfigurationError
    │   └── RuleError            a rules file is unreadable or invalid; the message names
    │                            the file, the rule and the field, and says what to write
    └── DeliveryError            one attempt to deliver a notification failed
        └── PermanentDeliveryError   retrying cannot help (HTTP 4xx, SMTP 5xx): dead at once

A ``DeliveryError`` carries ``retry_after`` (seconds) when the receiver asked for a pause
(HTTP 429/503 ``Retry-After``); the dispatcher waits at least that long.
"""

from __future__ import annotations

from pipeline.errors import ConfigurationError, FinsentError


class RuleError(ConfigurationError):
    """The rules file is invalid; raised at load time, before anything is evaluated."""


class DeliveryError(FinsentError):
    """A notification attempt failed and may be retried."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """A notification attempt failed in a way retrying cannot fix."""
