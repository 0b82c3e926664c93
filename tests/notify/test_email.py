"""The email channel against a real SMTP server (aiosmtpd in a thread on 127.0.0.1)."""

from __future__ import annotations

import email
import email.policy
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from accord.notify.channels import DeliveryError, EmailChannel, RecipientAddress
from accord.notify.message import Message, render
from tests.notify import samples as s

ALICE = RecipientAddress("alice", email="alice@example.com", slack="U0ALICE")
BOB = RecipientAddress("bob", email="bob@example.com")
SENDER = "Accord <accord@example.com>"


@dataclass
class Mailbox:
    """The SMTP server's handler: records what arrives; can be told to refuse."""

    rcpt_reply: str | None = None  # e.g. "550 5.1.1 no such user"
    data_reply: str = "250 OK"
    received: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply.startswith("250"):
            content = envelope.content
            assert isinstance(content, bytes)
            parsed = email.message_from_bytes(content, policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), parsed))
        return self.data_reply

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                     mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        ok = (auth_data.login, auth_data.password) == (b"accord", b"hunter2")
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: the server replies 535


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def smtp_server(mailbox: Mailbox, **kwargs: Any) -> Iterator[int]:
    # aiosmtpd's Controller cannot bind port 0 (it connects to `port` to check it is up).
    controller = Controller(mailbox, hostname="127.0.0.1", port=_free_port(),
                            server_hostname="mail.test", **kwargs)
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


@dataclass(frozen=True)
class Tls:
    cert: Path
    server: ssl.SSLContext

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate for 127.0.0.1 and the server context using it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accord test SMTP")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    return Tls(cert_path, server)


def approver_message() -> Message:
    return render(s.created(), base_url=s.BASE_URL, recipient="bob", approver=True)


def test_plain_delivery_sends_text_and_escaped_html() -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        channel = EmailChannel("127.0.0.1", port, security="plain", sender=SENDER, timeout=5)
        channel.send(BOB, approver_message(), "notify:request.created:7:bob:email")
    [(mail_from, rcpts, mail)] = mailbox.received
    assert mail_from == "accord@example.com"
    assert rcpts == ["bob@example.com"]
    assert mail["To"] == "bob@example.com" and mail["From"] == SENDER
    assert mail["Subject"] == "[Accord] alice asks for orders-db/read for 1h (request #7)"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail.get_content_type() == "multipart/alternative"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    plain_part, html_part = text.get_content(), html.get_content()
    assert "alice asks for orders-db/read for 1h: INC-42 <script>alert('x')</script>" \
        in plain_part
    assert "<script>" not in html_part
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html_part


def test_a_retried_notification_keeps_its_message_id() -> None:
    mailbox = Mailbox()
    message = approver_message()
    with smtp_server(mailbox) as port:
        channel = EmailChannel("127.0.0.1", port, security="plain", sender=SENDER, timeout=5)
        channel.send(BOB, message, "notify:7:bob")
        channel.send(BOB, message, "notify:7:bob")  # a retry after an unclear failure
        channel.send(BOB, message, "notify:8:bob")
    ids = [mail["Message-ID"] for _, _, mail in mailbox.received]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0].startswith("<accord.") and ids[0].endswith("@example.com>")


def test_starttls_not_offered_is_refused_not_downgraded() -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        channel = EmailChannel("127.0.0.1", port, security="starttls", sender=SENDER,
                               username="accord", password="hunter2", timeout=5)
        with pytest.raises(DeliveryError) as caught:
            channel.send(BOB, approver_message(), "k1")
    assert not caught.value.retryable
    assert "STARTTLS" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(channel)
    assert mailbox.received == [] and mailbox.logins == []


def test_starttls_with_login(tls: Tls) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox, tls_context=tls.server, require_starttls=True,
                     authenticator=mailbox.authenticate, auth_required=True) as port:
        channel = EmailChannel("127.0.0.1", port, security="starttls", sender=SENDER,
                               username="accord", password="hunter2", timeout=5,
                               tls_context=tls.client())
        channel.send(ALICE, approver_message(), "k1")
        wrong = EmailChannel("127.0.0.1", port, security="starttls", sender=SENDER,
                             username="accord", password="nope", timeout=5,
                             tls_context=tls.client())
        with pytest.raises(DeliveryError) as caught:
            wrong.send(ALICE, approver_message(), "k2")
    assert mailbox.logins == ["accord"]
    assert [rcpts for _, rcpts, _ in mailbox.received] == [["alice@example.com"]]
    assert not caught.value.retryable and "login failed: 535" in str(caught.value)
    assert "nope" not in str(caught.value)


def test_implicit_tls(tls: Tls) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox, ssl_context=tls.server) as port:
        channel = EmailChannel("127.0.0.1", port, security="ssl", sender=SENDER, timeout=5,
                               tls_context=tls.client())
        channel.send(ALICE, approver_message(), "k1")
        untrusting = EmailChannel("127.0.0.1", port, security="ssl", sender=SENDER, timeout=5)
        with pytest.raises(DeliveryError) as caught:
            untrusting.send(ALICE, approver_message(), "k2")
    assert len(mailbox.received) == 1
    assert not caught.value.retryable and "certificate" in str(caught.value)


@pytest.mark.parametrize(("mailbox", "retryable", "fragment"), [
    (Mailbox(rcpt_reply="550 5.1.1 no such user"), False, "recipient refused: 550"),
    (Mailbox(rcpt_reply="450 4.2.1 mailbox busy"), True, "recipient refused: 450"),
    (Mailbox(data_reply="554 5.7.1 rejected as spam"), False, "554"),
    (Mailbox(data_reply="451 4.3.0 try again later"), True, "451"),
])
def test_smtp_replies_decide_retrying(mailbox: Mailbox, retryable: bool, fragment: str) -> None:
    with smtp_server(mailbox) as port:
        channel = EmailChannel("127.0.0.1", port, security="plain", sender=SENDER, timeout=5)
        with pytest.raises(DeliveryError) as caught:
            channel.send(BOB, approver_message(), "k")
    assert caught.value.retryable is retryable
    assert fragment in str(caught.value)
    assert mailbox.received == []


def test_unreachable_and_silent_servers_are_retryable() -> None:
    channel = EmailChannel("127.0.0.1", _free_port(), security="plain", sender=SENDER,
                           timeout=2)
    with pytest.raises(DeliveryError) as refused:
        channel.send(BOB, approver_message(), "k")
    assert refused.value.retryable

    with socket.socket() as silent:  # accepts connections (backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        channel = EmailChannel("127.0.0.1", silent.getsockname()[1], security="plain",
                               sender=SENDER, timeout=0.3)
        with pytest.raises(DeliveryError) as timed_out:
            channel.send(BOB, approver_message(), "k")
    assert timed_out.value.retryable and "timed out" in str(timed_out.value)


def test_a_user_without_an_address_is_not_retried() -> None:
    channel = EmailChannel("127.0.0.1", 1, security="plain", sender=SENDER)
    for nobody in (RecipientAddress("dave"),
                   RecipientAddress("eve", email="eve@example.com\r\nBcc: x@example.com")):
        with pytest.raises(DeliveryError) as caught:
            channel.send(nobody, approver_message(), "k")
        assert not caught.value.retryable


def test_configuration_mistakes_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="starttls or ssl"):
        EmailChannel("smtp.example.com", 25, security="plain", sender=SENDER,
                     username="accord", password="hunter2")
    with pytest.raises(ValueError, match="both"):
        EmailChannel("smtp.example.com", 587, security="starttls", sender=SENDER,
                     username="accord")
    with pytest.raises(ValueError, match="sender"):
        EmailChannel("smtp.example.com", 587, security="starttls", sender="accord")
