"""Signed webhooks with an Alertmanager-shaped JSON body.

The body follows Alertmanager's webhook payload (version 4): ``status``, ``receiver``,
``groupKey``, ``groupLabels``, ``commonLabels``, ``commonAnnotations`` and ``alerts`` (each
with ``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``, ``fingerprint``),
plus finsent's ``event``, the window ``figures`` and the most negative ``headlines``.

Every request carries::

    X-Finsent-Timestamp: <unix seconds>
    X-Finsent-Signature: hex(HMAC-SHA256(secret, f"{timestamp}.{body}"))
    Idempotency-Key:     <the delivery's key; the same on every retry>

Receivers verify the signature over the exact body bytes, reject timestamps older than a
few minutes (replays), and dedupe on ``Idempotency-Key`` (retries after a lost
acknowledgement). :func:`verify` does the first two; the README shows a standalone copy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from alerts.errors import DeliveryError, PermanentDeliveryError

ZERO_TIME = "0001-01-01T00:00:00Z"
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 86_400.0


def render_body(payload: dict[str, Any], receiver: str = "") -> bytes:
    """The request body for an outbox payload; deterministic, so every retry sends the
    same bytes (only the timestamp and signature headers change)."""
    alert = payload["alert"]
    status = "resolved" if payload["event"] == "resolved" else "firing"
    item = {
        "status": status,
        "labels": alert["labels"],
        "annotations": alert["annotations"],
        "startsAt": alert["starts_at"],
        "endsAt": alert["ends_at"] or ZERO_TIME,
        "generatorURL": "",
        "fingerprint": alert["fingerprint"],
        "value": alert["value"],
        "figures": alert["figures"],
        "headlines": payload["headlines"],
    }
    body = {
        "version": "4",
        "receiver": receiver or payload.get("notifier", ""),
        "status": status,
        "event": payload["event"],
        "groupKey": alert["group_key"],
        "groupLabels": alert.get("group_labels", {}),
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "",
        "truncatedAlerts": 0,
        "alerts": [item],
        "figures": alert["figures"],
        "headlines": payload["headlines"],
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` with the shared secret."""
    return hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class WebhookNotifier:
    """POSTs the signed body to one URL."""

    channel = "webhook"

    def __init__(self, url: str, *, secret: str | None, timeout_s: float = 10.0, receiver: str = "",
                 client: httpx.Client | None = None) -> None:
        self.url = url
        self.secret = secret
        self.timeout_s = timeout_s
        self.receiver = receiver
        self.client = client

    def send(self, payload: dict[str, Any], idempotency_key: str) -> None:
        body = render_body(payload, self.receiver)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "finsent-alerts",
            "Idempotency-Key": idempotency_key,
            "X-Finsent-Timestamp": timestamp,
        }
        if self.secret:
            headers["X-Finsent-Signature"] = sign(self.secret, timestamp, body)
        try:
            if self.client is not None:
                response = self.client.post(self.url, content=body, headers=headers, timeout=self.timeout_s)
            else:
                with httpx.Client(timeout=self.timeout_s) as client:
                    response = client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"POST {self.url} failed: {type(exc).__name__}: {exc}") from exc
        if 200 <= response.status_code < 300:
            return
        snippet = response.text[:200].replace("\n", " ")
        message = f"POST {self.url} answered HTTP {response.status_code}: {snippet}"
        if response.status_code in RETRYABLE:
            retry_after = None
            if response.status_code in (429, 503):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise DeliveryError(message, retry_after=retry_after)
        raise PermanentDeliveryError(message + " (not retried: fix the receiver or the URL)")
