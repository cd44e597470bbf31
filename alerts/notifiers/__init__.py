"""Notifiers: one class per channel, each with one ``send(payload, idempotency_key)``.

``payload`` is the outbox row's JSON (event, notifier name, the alert with its labels,
annotations and window figures, the most negative headlines). ``send`` returns on
acknowledgement and raises :class:`alerts.errors.DeliveryError` (retry later) or
:class:`alerts.errors.PermanentDeliveryError` (retrying cannot help).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from alerts.rules import EmailNotifierConfig, RuleSet, WebhookNotifierConfig
from pipeline.settings import Settings, secret_value

if TYPE_CHECKING:
    from alerts.notifiers.webhook import WebhookClient

#: a send (webhook or e-mail) must end within this fraction of the delivery lease, leaving
#: the rest of the lease to record the outcome before another dispatcher may claim the
#: delivery again
SEND_DEADLINE_LEASE_FRACTION = 0.5


class Notifier(Protocol):
    channel: str

    def send(self, payload: dict[str, Any], idempotency_key: str) -> None:
        """Deliver once; return on acknowledgement, raise DeliveryError otherwise."""


def build_notifier(
    channel: str,
    target: str,
    name: str,
    ruleset: RuleSet | None,
    settings: Settings,
    *,
    http_client: WebhookClient | None = None,
) -> Notifier:
    """The notifier for an outbox row. The row's target wins (it is what was promised
    when the alert fired); the rules file supplies secrets and timeouts when it still
    defines the notifier, the settings otherwise.

    A webhook's and an e-mail's timeout is the total deadline of one send, capped at half
    of ``FINSENT_DELIVERY__LEASE_S``: a send still running when the lease lapses would be
    sent a second time by another dispatcher.
    """
    from alerts.notifiers.email import EmailNotifier
    from alerts.notifiers.webhook import WebhookNotifier

    config = ruleset.notifiers.get(name) if ruleset is not None else None
    longest = settings.delivery.lease_s * SEND_DEADLINE_LEASE_FRACTION
    if channel == "email":
        recipients = tuple(a for a in target.split(",") if a)
        if isinstance(config, EmailNotifierConfig):
            recipients = recipients or config.to
        return EmailNotifier(
            settings.smtp, recipients, timeout_s=min(settings.smtp.timeout_s, longest)
        )
    secret = secret_value(settings.webhook.secret)
    timeout = settings.webhook.timeout_s
    if isinstance(config, WebhookNotifierConfig):
        secret = config.resolved_secret(settings)
        timeout = config.timeout_s or timeout
    timeout = min(timeout, longest)
    return WebhookNotifier(
        target, secret=secret, timeout_s=timeout, receiver=name, client=http_client
    )
