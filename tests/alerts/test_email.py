"""Alert e-mail over real aiosmtpd servers speaking STARTTLS with AUTH and implicit TLS,
verified against a throwaway CA (no certificate checks switched off), and over raw TCP
servers that drip their answers a byte at a time (the total deadline of one send)."""

from __future__ import annotations

import asyncio
import contextlib
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alerts.errors import DeliveryError, PermanentDeliveryError
from alerts.notifiers import build_notifier
from alerts.notifiers.email import EmailNotifier, build_message
from pipeline.embedded import free_port
from pipeline.settings import SmtpSettings
from tests.alerts.conftest import alert_settings
from tests.conftest import SmtpServer

#: the total deadline of the sends below that must be cut off
DEADLINE_S = 1.5
#: how much later than the deadline a cut-off send may end, on a loaded 2-core machine; a
#: per-read timeout instead of a total deadline takes 18 s on a dripped greeting
MARGIN_S = 2.0
#: a dripping server sends one byte this often
DRIP_INTERVAL_S = 0.3
#: each answer of the "slow" aiosmtpd server comes this late: well inside a per-read
#: timeout of DEADLINE_S, but MAIL, RCPT and DATA together take longer than DEADLINE_S
ANSWER_DELAY_S = 0.7
#: 60 bytes: 18 s when dripped
DRIPPED_GREETING = b"220 " + b"d" * 54 + b"\r\n"
#: a TLS handshake record header announcing 16 KiB, then zeros: a handshake that never ends
DRIPPED_TLS = b"\x16\x03\x03\x40\x00" + b"\x00" * 55

PAYLOAD = {
    "event": "firing",
    "notifier": "email",
    "evaluated_at": "2026-11-20T10:00:00+00:00",
    "alert": {
        "id": 1,
        "fingerprint": "abc123",
        "rule": "negative-share",
        "kind": "threshold",
        "key": "topic:Earnings",
        "status": "firing",
        "severity": "critical",
        "labels": {"rule": "negative-share", "team": "risk"},
        "annotations": {
            "summary": "Earnings <b>turned</b> bearish",
            "description": "0.8 of 10 documents",
        },
        "group_key": '{rule="negative-share"}',
        "group_labels": {"rule": "negative-share"},
        "value": 0.8,
        "figures": {"documents": 10, "negative_share": 0.8, "window": "20m"},
        "starts_at": "2026-11-20T09:50:00+00:00",
        "ends_at": None,
    },
    "headlines": [
        {
            "document_id": "d1",
            "title": "Profit warning <script>",
            "url": "https://news.example/1",
            "source": "wire",
            "published_at": "2026-11-20T09:55:00+00:00",
            "p_bearish": 0.97,
        }
    ],
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
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.contextmanager
def _server(
    certificate: tuple[Path, Path], *, implicit: bool, answer_delay_s: float = 0.0
) -> Iterator[TlsSmtp]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = TlsSmtp(port=free_port(), ca_file=cert)

    class Recorder:
        async def handle_MAIL(self, _server, _session, envelope, address, options):
            await asyncio.sleep(answer_delay_s)
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            return "250 OK"

        async def handle_RCPT(self, _server, _session, envelope, address, options):
            await asyncio.sleep(answer_delay_s)
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            return "250 OK"

        async def handle_DATA(self, _server, _session, envelope):
            await asyncio.sleep(answer_delay_s)
            server.messages.append(envelope.content)
            return "250 OK"

    def authenticator(_server, _session, _envelope, _mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            server.logins.append((auth_data.login.decode(), auth_data.password.decode()))
            ok = auth_data.password == b"right"
            return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535
        return AuthResult(success=False, handled=False)

    if implicit:
        controller = Controller(
            Recorder(), hostname="127.0.0.1", port=server.port, ssl_context=context
        )
    else:
        controller = Controller(
            Recorder(),
            hostname="127.0.0.1",
            port=server.port,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticator,
            auth_required=True,
        )
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture
def starttls_server(certificate: tuple[Path, Path]) -> Iterator[TlsSmtp]:
    with _server(certificate, implicit=False) as server:
        yield server


@pytest.fixture
def ssl_server(certificate: tuple[Path, Path]) -> Iterator[TlsSmtp]:
    with _server(certificate, implicit=True) as server:
        yield server


@dataclass(frozen=True)
class Reply:
    """One scripted answer: sent once the client has sent ``after`` (b"": at once), all at
    once or one byte every ``DRIP_INTERVAL_S``."""

    text: bytes
    after: bytes = b"\n"
    drip: bool = False


class DripServer:
    """A raw TCP imitation of an SMTP server, for what aiosmtpd will not do: misbehave byte
    by byte. It serves one connection with its script, then holds the connection open;
    ``hung_up`` is set when the client closes it."""

    def __init__(self, script: list[Reply]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.received = bytearray()
        self.hung_up = threading.Event()
        self._consumed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="drip-smtp", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # closed before anyone connected
            return
        with conn:
            try:
                for reply in self.script:
                    if not (self._wait_for(conn, reply.after) and self._write(conn, reply)):
                        return
                self._wait_for(conn, b"\x00never sent\x00")
            except OSError:  # reset by the client
                self.hung_up.set()

    def _pump(self, conn: socket.socket, timeout_s: float) -> bool:
        """Take what the client sent within ``timeout_s``; False once it hung up or the test ended."""
        if self._stop.is_set():
            return False
        readable, _, _ = select.select([conn], [], [], timeout_s)
        if readable:
            data = conn.recv(65536)
            if not data:
                self.hung_up.set()
                return False
            self.received += data
        return True

    def _wait_for(self, conn: socket.socket, marker: bytes) -> bool:
        while (found := self.received.find(marker, self._consumed)) < 0:
            if not self._pump(conn, 0.1):
                return False
        self._consumed = found + len(marker)
        return True

    def _write(self, conn: socket.socket, reply: Reply) -> bool:
        if not reply.drip:
            conn.sendall(reply.text)
            return True
        for byte in reply.text:
            due = time.monotonic() + DRIP_INTERVAL_S
            while (left := due - time.monotonic()) > 0:
                if not self._pump(conn, left):
                    return False
            conn.sendall(bytes([byte]))
        return True

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def drip_server(*script: Reply) -> Iterator[DripServer]:
    server = DripServer(list(script))
    try:
        yield server
    finally:
        server.close()


def _smtp(server: TlsSmtp, security: str, **extra: object) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1",
        port=server.port,
        security=security,
        tls_ca_file=server.ca_file,
        sender="alerts@example.com",
        timeout_s=5,
        **extra,
    )


def test_starttls_with_login_delivers(starttls_server: TlsSmtp) -> None:
    notifier = EmailNotifier(
        _smtp(starttls_server, "starttls", username="finsent", password="right"),
        ("risk@example.com",),
    )
    notifier.send(PAYLOAD, "finsent-key-1")
    assert starttls_server.logins == [("finsent", "right")]
    (raw,) = starttls_server.messages
    assert b"Message-ID: <finsent-key-1@finsent>" in raw and b"negative-share" in raw


def test_wrong_password_is_a_permanent_failure(starttls_server: TlsSmtp) -> None:
    notifier = EmailNotifier(
        _smtp(starttls_server, "starttls", username="finsent", password="wrong"),
        ("risk@example.com",),
    )
    with pytest.raises(PermanentDeliveryError, match="535"):
        notifier.send(PAYLOAD, "k")
    assert starttls_server.messages == []


def test_plain_smtp_to_a_server_requiring_starttls_is_refused_not_sent_in_clear(
    starttls_server: TlsSmtp,
) -> None:
    notifier = EmailNotifier(_smtp(starttls_server, "none"), ("risk@example.com",))
    with pytest.raises(DeliveryError):
        notifier.send(PAYLOAD, "k")
    assert starttls_server.messages == []


def test_implicit_tls_delivers(ssl_server: TlsSmtp) -> None:
    EmailNotifier(_smtp(ssl_server, "ssl"), ("a@example.com", "b@example.com")).send(
        PAYLOAD, "finsent-key-2"
    )
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
    assert (
        "Profit warning <script>" in text
        and "https://news.example/1" in text
        and "negative_share" in text
    )


def _cut_off(notifier: EmailNotifier) -> tuple[DeliveryError, float]:
    """Send, expecting the total deadline to end it: the error and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        notifier.send(PAYLOAD, "finsent-key-slow")
    return caught.value, time.monotonic() - started


def _assert_cut_off_at_the_deadline(error: DeliveryError, elapsed: float, port: int) -> None:
    assert not isinstance(error, PermanentDeliveryError), error  # retried by the dispatcher
    assert f"127.0.0.1:{port}" in str(error) and f"within {DEADLINE_S:g} s (total deadline" in str(
        error
    ), error
    assert DEADLINE_S <= elapsed < DEADLINE_S + MARGIN_S, elapsed


def _drip_smtp(port: int, security: str, ca_file: Path | None = None) -> SmtpSettings:
    return SmtpSettings(
        host="127.0.0.1",
        port=port,
        security=security,
        tls_ca_file=ca_file,
        sender="alerts@example.com",
        timeout_s=60,
    )


def test_a_greeting_dripped_a_byte_at_a_time_is_cut_off_at_the_total_deadline() -> None:
    with drip_server(Reply(DRIPPED_GREETING, after=b"", drip=True)) as server:
        notifier = EmailNotifier(
            _drip_smtp(server.port, "none"), ("risk@example.com",), timeout_s=DEADLINE_S
        )
        error, elapsed = _cut_off(notifier)
        assert server.hung_up.wait(timeout=5), "the connection was left open"
    _assert_cut_off_at_the_deadline(error, elapsed, server.port)


def test_a_dripped_implicit_tls_handshake_is_cut_off_at_the_total_deadline(
    certificate: tuple[Path, Path],
) -> None:
    with drip_server(Reply(DRIPPED_TLS, after=b"", drip=True)) as server:
        notifier = EmailNotifier(
            _drip_smtp(server.port, "ssl", certificate[0]),
            ("risk@example.com",),
            timeout_s=DEADLINE_S,
        )
        error, elapsed = _cut_off(notifier)
        assert server.hung_up.wait(timeout=5), "the connection was left open"
    _assert_cut_off_at_the_deadline(error, elapsed, server.port)


def test_a_dripped_starttls_handshake_is_cut_off_at_the_total_deadline(
    certificate: tuple[Path, Path],
) -> None:
    script = (
        Reply(b"220 drip ESMTP\r\n", after=b""),
        Reply(b"250-drip\r\n250 STARTTLS\r\n"),
        Reply(b"220 go ahead\r\n"),
        Reply(DRIPPED_TLS, after=b"", drip=True),
    )
    with drip_server(*script) as server:
        notifier = EmailNotifier(
            _drip_smtp(server.port, "starttls", certificate[0]),
            ("risk@example.com",),
            timeout_s=DEADLINE_S,
        )
        error, elapsed = _cut_off(notifier)
        assert server.hung_up.wait(timeout=5), "the connection was left open"
    assert b"STARTTLS" in bytes(server.received).upper()
    _assert_cut_off_at_the_deadline(error, elapsed, server.port)


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_answers_each_inside_a_per_read_timeout_are_still_cut_off_at_the_total_deadline(
    certificate: tuple[Path, Path], security: str
) -> None:
    # MAIL, RCPT and DATA answer ANSWER_DELAY_S late each: a per-read timeout of DEADLINE_S
    # would let this send succeed after 2.1 s; the total deadline ends it at 1.5 s
    with _server(certificate, implicit=security == "ssl", answer_delay_s=ANSWER_DELAY_S) as server:
        extra = {"username": "finsent", "password": "right"} if security == "starttls" else {}
        notifier = EmailNotifier(
            _smtp(server, security, **extra), ("risk@example.com",), timeout_s=DEADLINE_S
        )
        error, elapsed = _cut_off(notifier)
    _assert_cut_off_at_the_deadline(error, elapsed, server.port)


def test_a_prompt_server_delivers_within_the_same_deadline(
    smtp_server: SmtpServer, ssl_server: TlsSmtp
) -> None:
    plain = SmtpSettings(
        host=smtp_server.host, port=smtp_server.port, sender="alerts@example.com", timeout_s=60
    )
    EmailNotifier(plain, ("risk@example.com",), timeout_s=DEADLINE_S).send(PAYLOAD, "finsent-key-3")
    EmailNotifier(_smtp(ssl_server, "ssl"), ("risk@example.com",), timeout_s=DEADLINE_S).send(
        PAYLOAD, "finsent-key-4"
    )
    assert len(smtp_server.wait_for(1)) == 1 and len(ssl_server.messages) == 1


def test_a_slow_quit_after_the_message_was_accepted_is_not_a_failed_send() -> None:
    script = (
        Reply(b"220 drip ESMTP\r\n", after=b""),
        Reply(b"250 drip\r\n"),
        Reply(b"250 sender ok\r\n"),
        Reply(b"250 recipient ok\r\n"),
        Reply(b"354 go ahead\r\n"),
        Reply(b"250 queued\r\n", after=b"\r\n.\r\n"),
        Reply(b"221 " + b"b" * 20 + b"\r\n", drip=True),
    )
    with drip_server(*script) as server:
        notifier = EmailNotifier(
            _drip_smtp(server.port, "none"), ("risk@example.com",), timeout_s=DEADLINE_S
        )
        started = time.monotonic()
        notifier.send(
            PAYLOAD, "finsent-key-5"
        )  # a retry would only send the accepted message twice
        elapsed = time.monotonic() - started
        assert server.hung_up.wait(timeout=5), "the connection was left open"
    assert b"Message-ID: <finsent-key-5@finsent>" in server.received
    assert elapsed < DEADLINE_S + MARGIN_S, elapsed


def test_the_send_deadline_is_capped_below_the_delivery_lease() -> None:
    database_url = "postgresql://finsent@127.0.0.1:9/never-connected"
    settings = alert_settings(database_url, lease_s=4.0)
    assert settings.smtp.timeout_s == 5  # longer than the lease: capped
    notifier = build_notifier("email", "risk@example.com", "email", None, settings)
    assert isinstance(notifier, EmailNotifier) and notifier.timeout_s == 2.0
    assert (
        build_notifier(
            "email", "risk@example.com", "email", None, alert_settings(database_url, lease_s=60.0)
        ).timeout_s
        == 5
    )
