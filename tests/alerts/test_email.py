"""Alert e-mail over real aiosmtpd servers speaking STARTTLS with AUTH and implicit TLS,
verified against a throwaway CA (no certificate checks switched off)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alerts.errors import DeliveryError, PermanentDeliveryError
from alerts.notifiers.email import EmailNotifier, build_message
from pipeline.embedded import free_port
from pipeline.settings import SmtpSettings

PAYLOAD = {
    "event": "firing", "notifier": "email", "evaluated_at": "2026-11-20T10:00:00+00:00",
    "alert": {
        "id": 1, "fingerprint": "abc123", "rule": "negative-share", "kind": "threshold", "key": "topic:Earnings",
        "status": "firing", "severity": "critical", "labels": {"rule": "negative-share", "team": "risk"},
        "annotations": {"summary": "Earnings <b>turned</b> bearish", "description": "0.8 of 10 documents"},
        "group_key": '{rule="negative-share"}', "group_labels": {"rule": "negative-share"}, "value": 0.8,
        "figures": {"documents": 10, "negative_share": 0.8, "window": "20m"},
        "starts_at": "2026-11-20T09:50:00+00:00", "ends_at": None,
    },
    "headlines": [{"document_id": "d1", "title": "Profit warning <script>", "url": "https://news.example/1",
                   "source": "wire", "published_at": "2026-11-20T09:55:00+00:00", "p_bearish": 0.97}],
}


@dataclass
class TlsSmtp:
    port: int
    ca_file: Path
    messages: list[bytes] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def _server(certificate: tuple[Path, Path], *, implicit: bool) -> Iterator[TlsSmtp]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = TlsSmtp(port=free_port(), ca_file=cert)

    class Recorder:
        async def handle_DATA(self, _server, _session, envelope):  # noqa: N802 - aiosmtpd API
            server.messages.append(envelope.content)
            return "250 OK"

    def authenticator(_server, _session, _envelope, _mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            server.logins.append((auth_data.login.decode(), auth_data.password.decode()))
            ok = auth_data.password == b"right"
            return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535
        return AuthResult(success=False, handled=False)

    if implicit:
        controller = Controller(Recorder(), hostname="127.0.0.1", port=server.port, ssl_context=context)
    else:
        controller = Controller(Recorder(), hostname="127.0.0.1", port=server.port, tls_context=context,
                                require_starttls=True, authenticator=authenticator, auth_required=True)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def starttls_server(certificate: tuple[Path, Path]) -> Iterator[TlsSmtp]:
    yield from _server(certificate, implicit=False)


@pytest.fixture
def ssl_server(certificate: tuple[Path, Path]) -> Iterator[TlsSmtp]:
    yield from _server(certificate, implicit=True)


def _smtp(server: TlsSmtp, security: str, **extra: object) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=server.port, security=security, tls_ca_file=server.ca_file,
                        sender="alerts@example.com", timeout_s=5, **extra)


def test_starttls_with_login_delivers(starttls_server: TlsSmtp) -> None:
    notifier = EmailNotifier(_smtp(starttls_server, "starttls", username="finsent", password="right"),
                             ("risk@example.com",))
    notifier.send(PAYLOAD, "finsent-key-1")
    assert starttls_server.logins == [("finsent", "right")]
    (raw,) = starttls_server.messages
    assert b"Message-ID: <finsent-key-1@finsent>" in raw and b"negative-share" in raw


def test_wrong_password_is_a_permanent_failure(starttls_server: TlsSmtp) -> None:
    notifier = EmailNotifier(_smtp(starttls_server, "starttls", username="finsent", password="wrong"),
                             ("risk@example.com",))
    with pytest.raises(PermanentDeliveryError, match="535"):
        notifier.send(PAYLOAD, "k")
    assert starttls_server.messages == []


def test_plain_smtp_to_a_server_requiring_starttls_is_refused_not_sent_in_clear(starttls_server: TlsSmtp) -> None:
    notifier = EmailNotifier(_smtp(starttls_server, "none"), ("risk@example.com",))
    with pytest.raises(DeliveryError):
        notifier.send(PAYLOAD, "k")
    assert starttls_server.messages == []


def test_implicit_tls_delivers(ssl_server: TlsSmtp) -> None:
    EmailNotifier(_smtp(ssl_server, "ssl"), ("a@example.com", "b@example.com")).send(PAYLOAD, "finsent-key-2")
    assert len(ssl_server.messages) == 1


def test_untrusted_certificate_is_refused(ssl_server: TlsSmtp) -> None:
    smtp = SmtpSettings(host="127.0.0.1", port=ssl_server.port, security="ssl", timeout_s=5)
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        EmailNotifier(smtp, ("a@example.com",)).send(PAYLOAD, "k")


def test_html_part_escapes_what_it_shows() -> None:
    message = build_message(PAYLOAD, "k", "alerts@example.com", ("risk@example.com",))
    html = next(p for p in message.walk() if p.get_content_type() == "text/html").get_content()
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain").get_content()
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert '<a href="https://news.example/1">' in html
    assert "Profit warning <script>" in text and "https://news.example/1" in text and "negative_share" in text
