"""The outbox dispatcher: sends due deliveries, retries with backoff, dead-letters.

Each delivery is claimed alone (``alerts.outbox.claim``: committed as 'sending' with a
lease before the send), sent, then marked delivered right after the acknowledgement.
A failure puts only that row back to 'pending' with exponential backoff and jitter (at
least the receiver's ``Retry-After`` on 429/503), so one failing channel never resends the
others; after ``FINSENT_DELIVERY__MAX_ATTEMPTS`` attempts, or at once on a permanent
error, the row is 'dead' with the last error. Several dispatchers may run at once.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from alerts import outbox
from alerts.errors import DeliveryError, PermanentDeliveryError
from alerts.notifiers import build_notifier
from alerts.notifiers.webhook import WebhookClient
from alerts.rules import RuleSet
from pipeline import metrics
from pipeline.settings import Settings, redact_url

log = logging.getLogger(__name__)


@dataclass
class DispatchSummary:
    delivered: int = 0
    retried: int = 0
    dead: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.retried + self.dead


class Dispatcher:
    """Delivers what the outbox holds; safe to run in several processes at once."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        ruleset: RuleSet | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.ruleset = ruleset
        self.policy = settings.delivery
        self.rng = rng or random.Random()
        # one pooled client: a new client per send costs more than the send on a LAN
        self._http: WebhookClient | None = None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def dispatch_once(
        self, *, max_deliveries: int = 100, stop: threading.Event | None = None
    ) -> DispatchSummary:
        """Send every due delivery (at most ``max_deliveries``), one claim at a time."""
        summary = DispatchSummary()
        while summary.attempted < max_deliveries and not (stop is not None and stop.is_set()):
            claimed = outbox.claim(self.engine, limit=1, lease_s=self.policy.lease_s)
            if not claimed:
                break
            self._deliver(claimed[0], summary)
        return summary

    def _deliver(self, delivery: outbox.Delivery, summary: DispatchSummary) -> None:
        channel = delivery.channel
        if delivery.attempts > self.policy.max_attempts:
            self._dead(
                delivery,
                f"gave up after {delivery.attempts - 1} attempts; the dispatcher stopped "
                "during the last one",
                summary,
            )
            return
        if channel == "webhook" and self._http is None:
            self._http = WebhookClient(headers={"User-Agent": "finsent-alerts"})
        notifier = build_notifier(
            channel,
            delivery.target,
            str(delivery.payload.get("notifier", "")),
            self.ruleset,
            self.settings,
            http_client=self._http,
        )
        try:
            notifier.send(delivery.payload, delivery.idempotency_key)
        except PermanentDeliveryError as exc:
            self._dead(delivery, f"attempt {delivery.attempts}: {exc}", summary)
            return
        except DeliveryError as exc:
            self._failed(delivery, str(exc), exc.retry_after, summary)
            return
        except Exception as exc:
            log.exception("delivery %s raised unexpectedly", delivery.id)
            self._failed(delivery, f"{type(exc).__name__}: {exc}", None, summary)
            return
        outbox.mark_delivered(self.engine, delivery.id)
        summary.delivered += 1
        metrics.DELIVERIES.labels(channel=channel, outcome="delivered").inc()
        log.info(
            "delivered %s %s of alert %s to %s (attempt %d)",
            channel,
            delivery.event,
            delivery.alert_id,
            redact_url(delivery.target),
            delivery.attempts,
        )

    def _failed(
        self,
        delivery: outbox.Delivery,
        error: str,
        retry_after: float | None,
        summary: DispatchSummary,
    ) -> None:
        if delivery.attempts >= self.policy.max_attempts:
            self._dead(
                delivery,
                f"gave up after {delivery.attempts} attempts; last error: {error}",
                summary,
            )
            return
        delay = outbox.backoff_s(delivery.attempts, self.policy, self.rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        outbox.mark_failed(
            self.engine,
            delivery,
            f"attempt {delivery.attempts}: {error}",
            delay_s=delay,
            dead=False,
        )
        summary.retried += 1
        metrics.DELIVERIES.labels(channel=delivery.channel, outcome="retry").inc()
        log.warning(
            "delivery %s (%s to %s) failed, retry in %.2fs: %s",
            delivery.id,
            delivery.channel,
            redact_url(delivery.target),
            delay,
            error,
        )

    def _dead(self, delivery: outbox.Delivery, error: str, summary: DispatchSummary) -> None:
        outbox.mark_failed(self.engine, delivery, error, delay_s=None, dead=True)
        summary.dead += 1
        metrics.DELIVERIES.labels(channel=delivery.channel, outcome="dead").inc()
        log.error(
            "delivery %s (%s to %s) is dead: %s",
            delivery.id,
            delivery.channel,
            redact_url(delivery.target),
            error,
        )
