"""Signed webhooks with an Alertmanager-shaped JSON body.

The body follows Alertmanager's webhook payload (version 4): ``status``, ``receiver``,
``groupKey``, ``groupLabels``, ``commonLabels``, ``commonAnnotations`` and ``alerts`` (each
with ``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``, ``fingerprint``),
plus finsent's ``event``, the window ``figures`` and the most negative ``headlines``.

Every request carries::

    X-Finsent-Timestamp: <unix seconds>
    Idempotency-Key:     <the delivery's key; the same on every retry>
    X-Finsent-Signature: hex(HMAC-SHA256(secret, f"{timestamp}.{idempotency_key}.{body}"))

The signature covers the timestamp, the idempotency key and the exact body bytes, so a
captured request can neither be replayed later (old timestamp) nor under a fresh
``Idempotency-Key`` to slip past the receiver's dedupe. Receivers verify the signature,
reject timestamps older than a few minutes, and dedupe on ``Idempotency-Key`` (retries after
a lost acknowledgement). :func:`verify` does the first two; the README shows a standalone copy.
Keys are ``finsent-<32 hex>``: they never contain the ``.`` separator.

One send has a TOTAL deadline (``timeout_s``: connect, request, response headers and
body together), not a per-read timeout: a receiver dripping a byte a second would
otherwise hold the send past the dispatcher's lease, so another dispatcher would send the
same delivery again while this one is still blocked. The request runs on an asyncio loop
under ``asyncio.timeout``, which cancels it at whatever point it has reached (even in the
middle of the response headers) and closes its connection; :class:`WebhookClient` keeps that
loop and a connection pool for a dispatcher's lifetime.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from alerts.errors import DeliveryError, PermanentDeliveryError
from pipeline.settings import redact_url

ZERO_TIME = "0001-01-01T00:00:00Z"
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 86_400.0
#: bytes of a response body read at most: enough for an error snippet, and a receiver
#: answering with an endless body cannot make us buffer it
MAX_RESPONSE_BYTES = 64 * 1024
T = TypeVar("T")


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


def sign(secret: str, timestamp: str, idempotency_key: str, body: bytes) -> str:
    """hex HMAC-SHA256 of ``f"{timestamp}.{idempotency_key}.{body}"`` with the shared secret.

    The key is signed so that a captured request cannot be replayed under a new
    ``Idempotency-Key`` (which the receiver's dedupe would take for a new delivery).
    """
    message = b".".join((timestamp.encode("ascii"), idempotency_key.encode("utf-8"), body))
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    timestamp: str,
    idempotency_key: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: the signature over timestamp, idempotency key and the raw body
    matches, and the timestamp is recent. Pass the headers exactly as received."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(
        sign(secret, timestamp, idempotency_key, body), signature
    )


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


@dataclass(frozen=True)
class WebhookAnswer:
    """What the receiver answered: status, headers and the first ``MAX_RESPONSE_BYTES`` of
    the body (enough for an error message)."""

    status_code: int
    headers: httpx.Headers
    body: bytes


class WebhookClient:
    """A pooled HTTP client whose every request has a total deadline.

    It owns an asyncio loop on a daemon thread and an ``httpx.AsyncClient`` living on it, so
    connections are reused across sends (a new connection per send costs more than the
    send on a LAN) and a request can be cancelled wherever it is blocked. Thread-safe; call
    :meth:`close` when done (an unclosed one only leaks an idle daemon thread).
    """

    def __init__(self, *, headers: dict[str, str] | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="finsent-webhook", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._client: httpx.AsyncClient = self._run(self._make_client(headers or {}))

    @staticmethod
    async def _make_client(headers: dict[str, str]) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=headers)

    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise

    def post(
        self, url: str, *, content: bytes, headers: dict[str, str], deadline_s: float
    ) -> WebhookAnswer:
        """POST and read the answer, all within ``deadline_s`` seconds of wall-clock time.

        Raises ``TimeoutError`` when the deadline passes (the connection is closed, so a
        slow receiver keeps nothing of ours), ``httpx.HTTPError`` for transport errors.
        """
        if self._closed:
            raise RuntimeError("WebhookClient is closed")
        # the coroutine enforces the deadline itself; the margin here only guards against a
        # wedged loop thread
        return self._run(self._post(url, content, headers, deadline_s), timeout_s=deadline_s + 5.0)

    async def _post(
        self, url: str, content: bytes, headers: dict[str, str], deadline_s: float
    ) -> WebhookAnswer:
        # httpx's own timeouts are per operation; they stay as a bound on each step, the
        # asyncio.timeout around the whole exchange is what enforces the total.
        async with asyncio.timeout(deadline_s):
            async with self._client.stream(
                "POST", url, content=content, headers=headers, timeout=httpx.Timeout(deadline_s)
            ) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= MAX_RESPONSE_BYTES:
                        break
                return WebhookAnswer(
                    response.status_code, response.headers, bytes(body[:MAX_RESPONSE_BYTES])
                )

    def close(self) -> None:
        """Close the pool and stop the loop thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.aclose(), timeout_s=5.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WebhookNotifier:
    """POSTs the signed body to one URL, within a total deadline of ``timeout_s`` seconds.

    ``timeout_s`` must be shorter than the dispatcher's delivery lease (``build_notifier``
    caps it at half the lease), so a send always ends, one way or the other, while this
    dispatcher still holds the delivery.
    """

    channel = "webhook"

    def __init__(
        self,
        url: str,
        *,
        secret: str | None,
        timeout_s: float = 10.0,
        receiver: str = "",
        client: WebhookClient | None = None,
    ) -> None:
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
            headers["X-Finsent-Signature"] = sign(self.secret, timestamp, idempotency_key, body)
        where = redact_url(self.url)  # error texts end up in the outbox and the log
        started = time.monotonic()
        try:
            if self.client is not None:
                answer = self.client.post(
                    self.url, content=body, headers=headers, deadline_s=self.timeout_s
                )
            else:
                with WebhookClient() as client:
                    answer = client.post(
                        self.url, content=body, headers=headers, deadline_s=self.timeout_s
                    )
        except TimeoutError as exc:
            raise DeliveryError(
                f"POST {where} did not complete within {self.timeout_s:g} s (total deadline; waited "
                f"{time.monotonic() - started:.1f} s): the receiver is too slow or unreachable; it is retried. "
                "Raise FINSENT_WEBHOOK__TIMEOUT_S (or the notifier's timeout_s) together with "
                "FINSENT_DELIVERY__LEASE_S if the receiver is legitimately slow"
            ) from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"POST {where} failed: {type(exc).__name__}: {exc}") from exc
        if 200 <= answer.status_code < 300:
            return
        snippet = answer.body[:200].decode("utf-8", "replace").replace("\n", " ")
        message = f"POST {where} answered HTTP {answer.status_code}: {snippet}"
        if answer.status_code in RETRYABLE:
            retry_after = None
            if answer.status_code in (429, 503):
                retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            raise DeliveryError(message, retry_after=retry_after)
        raise PermanentDeliveryError(message + " (not retried: fix the receiver or the URL)")
