"""Alert e-mail over SMTP (``FINSENT_SMTP__*``): plain-text and HTML bodies rendered from
Jinja2 templates in ``alerts/templates/``.

Security ``none`` (plain SMTP, for a local relay), ``starttls`` (upgrade on the submission
port, usually 587) or ``ssl`` (implicit TLS, usually 465); ``username``/``password`` log in
when set. The ``Message-ID`` derives from the delivery's idempotency key, so a message
resent after a crash carries the same id and mail clients show it once.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from alerts.errors import DeliveryError, PermanentDeliveryError
from pipeline.settings import SmtpSettings, secret_value

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=False),
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
    context = {"subject": subject, "status": status, "event": payload["event"], "alert": alert,
               "figures": alert.get("figures") or {}, "headlines": payload.get("headlines") or [],
               "evaluated_at": payload.get("evaluated_at")}
    env = _environment()
    return subject, env.get_template("email.txt.j2").render(context), env.get_template("email.html.j2").render(context)


def build_message(payload: dict[str, Any], idempotency_key: str, sender: str, recipients: tuple[str, ...]) -> EmailMessage:
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


class EmailNotifier:
    """Sends one message per delivery to its recipients."""

    channel = "email"

    def __init__(self, smtp: SmtpSettings, recipients: tuple[str, ...]) -> None:
        self.smtp = smtp
        self.recipients = recipients

    def _connect(self) -> smtplib.SMTP:
        s = self.smtp
        context = ssl.create_default_context(cafile=str(s.tls_ca_file) if getattr(s, "tls_ca_file", None) else None)
        if s.security == "ssl":
            return smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=context)
        conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        if s.security == "starttls":
            conn.ehlo()
            conn.starttls(context=context)
            conn.ehlo()
        return conn

    def send(self, payload: dict[str, Any], idempotency_key: str) -> None:
        if not self.recipients:
            raise PermanentDeliveryError("no recipients: set FINSENT_SMTP__RECIPIENTS or the notifier's 'to'")
        message = build_message(payload, idempotency_key, self.smtp.sender, self.recipients)
        where = f"SMTP {self.smtp.host}:{self.smtp.port} ({self.smtp.security})"
        try:
            with self._connect() as conn:
                if self.smtp.username:
                    conn.login(self.smtp.username, secret_value(self.smtp.password) or "")
                conn.send_message(message, to_addrs=list(self.recipients))
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentDeliveryError(f"{where} refused every recipient: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            message_text = f"{where} answered {exc.smtp_code}: {text}"
            if exc.smtp_code >= 500:
                raise PermanentDeliveryError(message_text + " (not retried: check the address or credentials)") from exc
            raise DeliveryError(message_text) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
