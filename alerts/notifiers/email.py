"""Alert e-mail over SMTP (``FINSENT_SMTP__*``): plain-text and HTML bodies rendered from
Jinja2 templates in ``alerts/templates/``.

Security ``none`` (plain SMTP, for a local relay), ``starttls`` (upgrade on the submission
port, usually 587) or ``ssl`` (implicit TLS, usually 465); ``username``/``password`` log in
when set. The ``Message-ID`` derives from the delivery's idempotency key, so a message
resent after a crash carries the same id and mail clients show it once.

One send has a TOTAL deadline (``timeout_s``): connect, the TLS handshake, EHLO, STARTTLS,
AUTH, MAIL/RCPT/DATA and QUIT together, not a per-read timeout. A server dripping a byte a
second (or answering each command just inside a per-read timeout) would otherwise hold the
send past the dispatcher's lease, and another dispatcher would send the same delivery
again while this one is still blocked. smtplib does the talking; :class:`DeadlineSMTP`
gives every socket wait the time left and checks the clock between reads, so the send is
cut off wherever it is, its connection closed, and it fails with a retryable
:class:`~alerts.errors.DeliveryError`. Not covered: resolving the server's name
(``getaddrinfo`` cannot be interrupted; the resolver's own timeouts bound it).
Once DATA is acknowledged the message is delivered: QUIT gets what is left of the
deadline, and a slow or failing QUIT is logged, not a failed send (a retry would only send
the message twice).
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from alerts.errors import DeliveryError, PermanentDeliveryError
from pipeline.settings import SmtpSettings, secret_value

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
#: the socket timeout left between operations once the deadline has passed: positive,
#: since 0 would make the socket non-blocking, and short, so the next wait fails at once
_SPENT_S = 0.001
log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=False
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(payload: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) of an outbox payload."""
    alert = payload["alert"]
    status = "RESOLVED" if payload["event"] == "resolved" else "FIRING"
    if payload["event"] == "renotify":
        status = "STILL FIRING"
    subject = f"[finsent {status} {alert['severity']}] {alert['rule']} on {alert['key']}"
    context = {
        "subject": subject,
        "status": status,
        "event": payload["event"],
        "alert": alert,
        "figures": alert.get("figures") or {},
        "headlines": payload.get("headlines") or [],
        "evaluated_at": payload.get("evaluated_at"),
    }
    env = _environment()
    return (
        subject,
        env.get_template("email.txt.j2").render(context),
        env.get_template("email.html.j2").render(context),
    )


def build_message(
    payload: dict[str, Any], idempotency_key: str, sender: str, recipients: tuple[str, ...]
) -> EmailMessage:
    subject, text, html = render(payload)
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = f"<{idempotency_key}@finsent>"
    msg["X-Finsent-Fingerprint"] = payload["alert"]["fingerprint"]
    msg["X-Finsent-Event"] = payload["event"]
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg


class SmtpDeadlineExceeded(TimeoutError):
    """The total deadline of one send passed; the connection has been closed."""


class _ReplyReader:
    """Stands in for smtplib's ``sock.makefile("rb")``, from which ``getreply`` reads lines.

    Each wait for more bytes gets only the time left, and the clock is checked before
    each one, so a server dripping a byte just inside every timeout is still cut off at
    the deadline. Buffered like the file it replaces (smtplib never pipelines, so nothing
    past a reply is ever waiting here when STARTTLS swaps the socket).
    """

    def __init__(self, sock: socket.socket, time_left: Callable[[], float]) -> None:
        self._sock = sock
        self._time_left = time_left
        self._buffer = b""

    def readline(self, limit: int = -1) -> bytes:
        """Up to and including the next ``\\n``, at most ``limit`` bytes; what is left at EOF."""
        while True:
            end = self._buffer.find(b"\n") + 1  # 0: no whole line yet
            if 0 <= limit <= len(self._buffer) and not 0 < end <= limit:
                end = limit
            if end or limit == 0:
                line, self._buffer = self._buffer[:end], self._buffer[end:]
                return line
            self._sock.settimeout(self._time_left())
            chunk = self._sock.recv(4096)
            if not chunk:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += chunk

    def close(self) -> None:
        self._buffer = b""


class DeadlineSMTP(smtplib.SMTP):
    """``smtplib.SMTP`` whose whole session must end by ``expires_at`` (``time.monotonic()``).

    Every socket operation (connect, each read of a reply, each send) waits at most the time
    left, and raises :class:`SmtpDeadlineExceeded` (closing the connection) once none is.
    Between operations the socket is left with the time left as its timeout, so the TLS
    handshake that ``starttls()`` runs on it is bounded too (CPython's TLS handshake, read
    and write take the socket timeout as a deadline for the whole call, not per read).
    ``tls`` makes it implicit TLS (what ``smtplib.SMTP_SSL`` does), handshake included.
    Connects on construction, like ``smtplib.SMTP(host, port)``.
    """

    def __init__(
        self, host: str, port: int, *, expires_at: float, tls: ssl.SSLContext | None = None
    ) -> None:
        self.expires_at = expires_at
        self.tls = tls
        super().__init__(host, port, timeout=max(expires_at - time.monotonic(), _SPENT_S))

    def time_left(self) -> float:
        """Seconds left to the deadline; past it, closes the connection and raises."""
        left = self.expires_at - time.monotonic()
        if left <= 0:
            self.close()
            raise SmtpDeadlineExceeded("the total deadline of the send passed")
        return left

    def _rest(self) -> None:
        if self.sock is not None:
            self.sock.settimeout(max(self.expires_at - time.monotonic(), _SPENT_S))

    def _get_socket(self, host: str, port: int, timeout: float | None) -> socket.socket:
        sock = self._open_tcp(host, port)
        if self.tls is None:
            return sock
        try:
            sock.settimeout(self.time_left())  # wrap_socket runs the handshake under it
            return self.tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise

    def _open_tcp(self, host: str, port: int) -> socket.socket:
        # socket.create_connection gives each address the whole timeout; here they share it
        error: OSError | None = None
        for family, kind, proto, _name, address in socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.time_left())
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(address)
                return sock
            except SmtpDeadlineExceeded:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"getaddrinfo returned no address for {host}:{port}")

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None and self.sock is not None:
            self.file = _ReplyReader(self.sock, self.time_left)
        reply = super().getreply()
        self._rest()
        return reply

    def send(self, s: ReadableBuffer | str) -> None:
        if self.sock is None:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        data = s.encode(self.command_encoding) if isinstance(s, str) else s
        sys.audit("smtplib.send", self, data)
        view = memoryview(data)
        try:
            # one chunk at a time: SSLSocket.sendall would give each chunk the whole timeout
            while view:
                self.sock.settimeout(self.time_left())
                view = view[self.sock.send(view) :]
        except OSError as exc:
            self.close()
            raise smtplib.SMTPServerDisconnected(f"Server not connected: {exc}") from exc
        self._rest()


class EmailNotifier:
    """Sends one message per delivery to its recipients, within a total deadline of
    ``timeout_s`` seconds (default: ``smtp.timeout_s``).

    ``timeout_s`` must be shorter than the dispatcher's delivery lease (``build_notifier``
    caps it at half the lease), so a send always ends, one way or the other, while this
    dispatcher still holds the delivery.
    """

    channel = "email"

    def __init__(
        self, smtp: SmtpSettings, recipients: tuple[str, ...], *, timeout_s: float | None = None
    ) -> None:
        self.smtp = smtp
        self.recipients = recipients
        self.timeout_s = smtp.timeout_s if timeout_s is None else timeout_s

    def _connect(self, expires_at: float) -> DeadlineSMTP:
        s = self.smtp
        context = ssl.create_default_context(
            cafile=str(s.tls_ca_file) if getattr(s, "tls_ca_file", None) else None
        )
        conn = DeadlineSMTP(
            s.host, s.port, expires_at=expires_at, tls=context if s.security == "ssl" else None
        )
        try:
            if s.security == "starttls":
                conn.ehlo()
                conn.starttls(context=context)
                conn.ehlo()
        except BaseException:
            conn.close()
            raise
        return conn

    def send(self, payload: dict[str, Any], idempotency_key: str) -> None:
        if not self.recipients:
            raise PermanentDeliveryError(
                "no recipients: set FINSENT_SMTP__RECIPIENTS or the notifier's 'to'"
            )
        message = build_message(payload, idempotency_key, self.smtp.sender, self.recipients)
        where = f"SMTP {self.smtp.host}:{self.smtp.port} ({self.smtp.security})"
        started = time.monotonic()
        expires_at = started + self.timeout_s
        try:
            conn = self._connect(expires_at)
            try:
                if self.smtp.username:
                    conn.login(self.smtp.username, secret_value(self.smtp.password) or "")
                conn.send_message(message, to_addrs=list(self.recipients))
            except BaseException:
                conn.close()
                raise
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentDeliveryError(
                f"{where} refused every recipient: {exc.recipients}"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            text = (
                exc.smtp_error.decode("utf-8", "replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            message_text = f"{where} answered {exc.smtp_code}: {text}"
            if exc.smtp_code >= 500:
                raise PermanentDeliveryError(
                    message_text + " (not retried: check the address or credentials)"
                ) from exc
            raise DeliveryError(message_text) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # every wait is bounded by the time left, so a transport failure past the
            # deadline is the deadline (the socket timeout or a closed connection after it)
            if time.monotonic() >= expires_at:
                raise DeliveryError(
                    f"{where} did not complete within {self.timeout_s:g} s (total deadline for connect, TLS, "
                    f"login and the message; waited {time.monotonic() - started:.1f} s): the server is too slow "
                    "or unreachable, the connection was closed and the delivery is retried. Raise "
                    "FINSENT_SMTP__TIMEOUT_S together with FINSENT_DELIVERY__LEASE_S if the server is "
                    f"legitimately slow (last error: {type(exc).__name__}: {exc})"
                ) from exc
            raise DeliveryError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        self._quit(conn, where)

    @staticmethod
    def _quit(conn: DeadlineSMTP, where: str) -> None:
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError) as exc:
            log.info(
                "%s accepted the message; QUIT did not complete (%s: %s)",
                where,
                type(exc).__name__,
                exc,
            )
        finally:
            conn.close()
