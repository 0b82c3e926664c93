"""Delivery channels: email over SMTP, Slack, and a signed HTTP webhook.

Every channel takes a `RecipientAddress`, a rendered `Message` and an idempotency key
that stays the same across retries of one notification. A channel either delivers or
raises `DeliveryError`; `retryable` tells the caller whether trying again later can
help (a timeout, a 4xx SMTP reply, HTTP 429/5xx) or not (a 5xx SMTP reply, a refused
address, a revoked token). Delivery is at-least-once, so each channel lets a receiver
recognise a repeat: email's `Message-ID` is derived from the key, Slack messages sent
through the Web API carry it in their metadata, webhooks send `Idempotency-Key`.

Secrets (SMTP password, Slack token, Slack webhook URL, webhook secret) never appear
in reprs, log lines or error messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any, Literal, Protocol

import httpx

from accord.notify.message import Message
from accord.settings import Secret
from accord.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from accord.spec.notify import NotifySpec
from accord.spec.people import UserSpec

log = logging.getLogger("accord.notify")

IDEMPOTENCY_HEADER = "Idempotency-Key"
SLACK_SECTION_LIMIT = 3000  # characters in one section block's text
SLACK_TEXT_LIMIT = 4000  # the fallback `text` shown in notifications


class DeliveryError(Exception):
    """The channel did not deliver. `retryable` says whether trying again may help.

    `retry_after` carries the seconds a rate-limiting server asked to wait, if it said.
    """

    def __init__(self, message: str, retryable: bool, *,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class RecipientAddress:
    """Where one Accord user can be reached (from `users:` in accord.yaml)."""

    user: str
    email: str | None = None
    slack: str | None = None  # a Slack member id such as U024BE7LH

    @classmethod
    def from_spec(cls, user: str, spec: UserSpec | None) -> RecipientAddress:
        if spec is None:
            return cls(user)
        return cls(user, email=spec.email, slack=spec.slack)


class Channel(Protocol):
    name: str

    def send(self, recipient: RecipientAddress, message: Message,
             idempotency_key: str) -> None:
        """Deliver `message` to `recipient`, or raise DeliveryError."""
        ...


# ---------------------------------------------------------------- email


def message_id(idempotency_key: str, domain: str) -> str:
    """The `Message-ID` for a notification: the same key always gives the same id."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"<accord.{digest}@{domain}>"


class EmailChannel:
    """Sends multipart/alternative (text and HTML) mail through an SMTP server.

    `security` is "ssl" (implicit TLS, usually port 465), "starttls" (usually 587; a
    server not offering STARTTLS is an error, never a silent downgrade) or "plain"
    (a local relay; credentials are refused there, as they would cross in clear).
    """

    name = "email"

    def __init__(self, host: str, port: int, *, security: Literal["plain", "starttls", "ssl"],
                 sender: str, username: str | None = None, password: str | None = None,
                 timeout: float = 10.0, tls_context: ssl.SSLContext | None = None) -> None:
        if security not in ("plain", "starttls", "ssl"):
            raise ValueError(f"email: security must be plain, starttls or ssl, not {security!r}")
        if security == "plain" and (username or password):
            raise ValueError("email: a username/password needs security starttls or ssl")
        if (username is None) != (password is None):
            raise ValueError("email: give both username and password, or neither")
        sender_addr = parseaddr(sender)[1]
        if "@" not in sender_addr or _unsafe(sender):
            raise ValueError(f"email: the sender {sender!r} is not an email address")
        self.host, self.port, self.security = host, port, security
        self.sender, self.timeout = sender, timeout
        self._sender_addr = sender_addr
        self._domain = sender_addr.rsplit("@", 1)[1]
        self._username = username
        self._password = Secret(password) if password is not None else None
        self._tls = tls_context

    def __repr__(self) -> str:
        return (f"EmailChannel(host={self.host!r}, port={self.port}, "
                f"security={self.security!r}, sender={self.sender!r})")

    def compose(self, recipient: RecipientAddress, message: Message,
                idempotency_key: str) -> EmailMessage:
        """The email for `recipient`, exactly as `send` hands it to the server."""
        address = _address(recipient)
        mail = EmailMessage()
        try:
            mail["From"] = self.sender
            mail["To"] = address
            mail["Subject"] = message.subject
            mail["Date"] = formatdate(usegmt=True)
            mail["Message-ID"] = message_id(idempotency_key, self._domain)
            mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
            mail.set_content(message.text)
            if message.html is not None:
                mail.add_alternative(message.html, subtype="html")
        except ValueError as exc:  # e.g. a header the email package refuses
            raise DeliveryError(f"email to {recipient.user}: cannot build the message: {exc}",
                                retryable=False) from None
        return mail

    def send(self, recipient: RecipientAddress, message: Message,
             idempotency_key: str) -> None:
        mail = self.compose(recipient, message, idempotency_key)
        where = f"email to {recipient.user} via {self.host}:{self.port}"
        try:
            smtp = self._connect()
        except (smtplib.SMTPException, OSError) as exc:
            raise _smtp_error(where, exc) from None
        try:
            smtp.send_message(mail, from_addr=self._sender_addr, to_addrs=[_address(recipient)])
        except (smtplib.SMTPException, OSError) as exc:
            smtp.close()
            raise _smtp_error(where, exc) from None
        try:
            smtp.quit()  # the server has the message: a failing QUIT changes nothing
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            smtp.close()
        log.info("email: sent %s for %s to %s", message.event_type, message.request_id,
                 recipient.user)

    def _connect(self) -> smtplib.SMTP:
        context = self._tls or ssl.create_default_context()
        # Connecting in the constructor is what sets the name TLS verifies against.
        smtp = (smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
                if self.security == "ssl"
                else smtplib.SMTP(self.host, self.port, timeout=self.timeout))
        try:
            smtp.ehlo()
            if self.security == "starttls":  # refused by smtplib when not offered
                smtp.starttls(context=context)
                smtp.ehlo()
            if self._username is not None and self._password is not None:
                smtp.login(self._username, self._password.get())
        except BaseException:
            smtp.close()
            raise
        return smtp


def _address(recipient: RecipientAddress) -> str:
    address = recipient.email
    if not address or "@" not in address or _unsafe(address):
        raise DeliveryError(f"email: user {recipient.user} has no usable email address",
                            retryable=False)
    return address


def _smtp_error(where: str, exc: smtplib.SMTPException | OSError) -> DeliveryError:
    """Classify an smtplib/socket failure: 4xx and network trouble retry, 5xx does not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(f"{code} {_reply(text)}" for code, text in exc.recipients.values())
        return DeliveryError(f"{where}: recipient refused: {detail}",
                             retryable=any(400 <= c < 500 for c in codes))
    if isinstance(exc, smtplib.SMTPResponseException):
        code = exc.smtp_code
        what = ("login failed" if isinstance(exc, smtplib.SMTPAuthenticationError)
                else "the server answered")
        return DeliveryError(f"{where}: {what}: {code} {_reply(exc.smtp_error)}",
                             retryable=not 500 <= code < 600)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return DeliveryError(f"{where}: {exc}", retryable=False)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return DeliveryError(f"{where}: {exc}", retryable=True)
    if isinstance(exc, smtplib.SMTPException):
        return DeliveryError(f"{where}: {exc}", retryable=False)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DeliveryError(f"{where}: TLS certificate not accepted: {exc.verify_message}",
                             retryable=False)
    if isinstance(exc, ssl.SSLError):
        return DeliveryError(f"{where}: TLS failed: {exc.reason or exc}", retryable=False)
    if isinstance(exc, TimeoutError):
        return DeliveryError(f"{where}: timed out", retryable=True)
    return DeliveryError(f"{where}: {type(exc).__name__}: {exc.strerror or exc}",
                         retryable=True)


def _reply(text: bytes | str) -> str:
    value = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return " ".join(value.split())[:300]


def _unsafe(value: str) -> bool:
    return any(ch in value for ch in "\r\n\x00")


# ---------------------------------------------------------------- HTTP helpers


def _post(client: httpx.Client, url: str, what: str, *, content: bytes,
          headers: dict[str, str]) -> httpx.Response:
    """POST, turning transport failures into DeliveryError. Never names the URL."""
    try:
        return client.post(url, content=content, headers=headers)
    except httpx.TimeoutException:
        raise DeliveryError(f"{what}: timed out", retryable=True) from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL):
        raise DeliveryError(f"{what}: the URL is invalid", retryable=False) from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{what}: {type(exc).__name__}", retryable=True) from None


def _check_status(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if response.is_success:
        return
    detail = _reply(response.text) if status < 500 else ""
    wait = response.headers.get("Retry-After", "")
    raise DeliveryError(f"{what}: HTTP {status}" + (f" {detail}" if detail else ""),
                        retryable=status >= 500 or status in (408, 429),
                        retry_after=float(wait) if wait.isascii() and wait.isdigit() else None)


# ---------------------------------------------------------------- Slack


class SlackChannel:
    """Posts Block Kit messages: to an incoming webhook, or with a bot token to the user.

    With `webhook_url` every message goes to the webhook's channel and mentions the
    recipient (`<@U…>`) when their Slack id is known. With `bot_token` it is sent by
    `chat.postMessage` straight to the recipient's Slack id (a direct message from the
    app), with the idempotency key in the message metadata. Messages with actions get
    Approve/Deny buttons whose `value` is "<action>:<request_id>".
    """

    name = "slack"

    def __init__(self, *, webhook_url: str | None = None, bot_token: str | None = None,
                 api_url: str = "https://slack.com/api",
                 transport: httpx.BaseTransport | None = None, timeout: float = 10.0) -> None:
        if (webhook_url is None) == (bot_token is None):
            raise ValueError("slack: give either webhook_url or bot_token")
        self._webhook = Secret(webhook_url) if webhook_url else None
        self._token = Secret(bot_token) if bot_token else None
        self.api_url = api_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def __repr__(self) -> str:
        mode = "webhook" if self._webhook is not None else f"api={self.api_url!r}"
        return f"SlackChannel({mode})"

    def close(self) -> None:
        self._http.close()

    def payload(self, recipient: RecipientAddress, message: Message,
                idempotency_key: str) -> dict[str, Any]:
        """The JSON body for Slack (without `channel` for webhooks)."""
        mention = f"<@{recipient.slack}> " if self._webhook is not None and recipient.slack \
            else ""
        text = slack_escape(message.text.removesuffix(f"\n\nDetails: {message.link}"))
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": _cut(mention + text, SLACK_SECTION_LIMIT)}},
            {"type": "context", "elements": [{
                "type": "mrkdwn",
                "text": f"<{slack_escape(message.link)}|"
                        f"{slack_escape(_label(message))}> · {slack_escape(message.event_type)}",
            }]},
        ]
        if message.actions and message.request_id is not None:
            blocks.append({
                "type": "actions",
                "block_id": f"accord_request_{message.request_id}",
                "elements": [_button(action, message.request_id)
                             for action in message.actions],
            })
        body: dict[str, Any] = {
            "text": _cut(mention + slack_escape(message.headline), SLACK_TEXT_LIMIT),
            "blocks": blocks,
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if self._token is not None:
            body["channel"] = recipient.slack
            facts: dict[str, Any] = {"idempotency_key": idempotency_key,
                                     "event": message.event_type}
            if message.request_id is not None:  # Slack's metadata takes no nulls
                facts["request_id"] = message.request_id
            body["metadata"] = {"event_type": "accord_notification", "event_payload": facts}
        return body

    def send(self, recipient: RecipientAddress, message: Message,
             idempotency_key: str) -> None:
        if self._token is not None and not recipient.slack:
            raise DeliveryError(f"slack: user {recipient.user} has no Slack id",
                                retryable=False)
        content = json.dumps(self.payload(recipient, message, idempotency_key)).encode()
        what = f"slack message to {recipient.user}"
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self._webhook is not None:
            response = _post(self._http, self._webhook.get(), what, content=content,
                             headers=headers)
            _check_status(response, what)
        else:
            assert self._token is not None
            headers["Authorization"] = f"Bearer {self._token.get()}"
            response = _post(self._http, f"{self.api_url}/chat.postMessage", what,
                             content=content, headers=headers)
            _check_status(response, what)
            _check_slack_api(response, what)
        log.info("slack: sent %s for %s to %s", message.event_type, message.request_id,
                 recipient.user)


# Web API errors worth another try; everything else (invalid_auth, channel_not_found,
# not_in_channel, invalid_blocks, ...) needs a person to fix something.
_SLACK_TRANSIENT = frozenset({"ratelimited", "rate_limited", "internal_error", "fatal_error",
                              "service_unavailable", "request_timeout", "team_added_to_org"})


def _check_slack_api(response: httpx.Response, what: str) -> None:
    try:
        answer = response.json()
    except ValueError:
        raise DeliveryError(f"{what}: Slack answered something other than JSON",
                            retryable=True) from None
    if not isinstance(answer, dict):
        raise DeliveryError(f"{what}: unexpected answer from Slack", retryable=True)
    if answer.get("ok") is True:
        return
    error = str(answer.get("error") or "unknown_error")[:100]
    raise DeliveryError(f"{what}: Slack says {error}", retryable=error in _SLACK_TRANSIENT)


_BUTTON_STYLE = {"approve": "primary", "deny": "danger"}


def _button(action: str, request_id: int) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": f"accord_{action}",
        "text": {"type": "plain_text", "text": action.capitalize()[:75]},
        "value": f"{action}:{request_id}",
    }
    if action in _BUTTON_STYLE:
        button["style"] = _BUTTON_STYLE[action]
    return button


def _label(message: Message) -> str:
    if message.request_id is not None:
        return f"Request #{message.request_id}"
    if not message.resource:  # e.g. a daily digest
        return "Accord"
    return f"{message.resource}/{message.role}"


def slack_escape(text: str) -> str:
    """Slack's mrkdwn escaping: user text cannot form links, mentions or @channel."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- webhook


class WebhookChannel:
    """POSTs each notification as JSON, signed like the ledger's webhook sink.

    Body: {"type", "request_id", "recipient", "text", "event"} where `recipient` is the
    Accord user name and `event` the ledger envelope the message was rendered from.
    Headers: `X-Accord-Timestamp`, `X-Accord-Signature` (`sha256=` + hex HMAC-SHA256 of
    `timestamp.body`; check it with `accord.signing.verify`) and
    `Idempotency-Key`.
    """

    name = "webhook"

    def __init__(self, url: str, secret: bytes, transport: httpx.BaseTransport | None = None,
                 *, timeout: float = 10.0) -> None:
        if not secret:
            raise ValueError("webhook channel: the HMAC secret is empty")
        self._url = Secret(url)
        self._secret = secret
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def __repr__(self) -> str:
        return "WebhookChannel()"

    def close(self) -> None:
        self._http.close()

    def send(self, recipient: RecipientAddress, message: Message,
             idempotency_key: str) -> None:
        if not idempotency_key or _unsafe(idempotency_key):
            raise DeliveryError("webhook: the idempotency key is empty or has line breaks",
                                retryable=False)
        body = json.dumps({
            "type": message.event_type,
            "request_id": message.request_id,
            "recipient": recipient.user,
            "text": message.text,
            "event": message.event,
        }, separators=(",", ":")).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: idempotency_key,
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(self._secret, stamp, body),
        }
        what = f"webhook notification to {recipient.user}"
        response = _post(self._http, self._url.get(), what, content=body, headers=headers)
        _check_status(response, what)
        log.info("webhook: sent %s for %s to %s", message.event_type, message.request_id,
                 recipient.user)


# ---------------------------------------------------------------- from accord.yaml


def build_channel(spec: NotifySpec, name: str, env: dict[str, str] | None = None) -> Channel:
    """The channel `name` ("email", "slack", "webhook.<name>") as `notify:` configures it.

    A channel that cannot be built (an unset environment variable, a bad sender) is a
    DeliveryError that retrying cannot fix.
    """
    try:
        return _build(spec, name, dict(os.environ if env is None else env))
    except ValueError as exc:
        raise DeliveryError(f"{name} is misconfigured: {exc}", retryable=False) from None


def _build(spec: NotifySpec, name: str, env: dict[str, str]) -> Channel:
    if name == "email" and spec.email is not None:
        e = spec.email
        return EmailChannel(e.host, e.port, security=e.security, sender=e.sender,
                            username=env.get(e.username_env) if e.username_env else None,
                            password=env.get(e.password_env) if e.password_env else None)
    if name == "slack" and spec.slack is not None:
        s = spec.slack
        return SlackChannel(
            webhook_url=env.get(s.webhook_url_env) if s.webhook_url_env else None,
            bot_token=env.get(s.bot_token_env) if s.bot_token_env else None)
    for hook in spec.webhooks:
        if name == f"webhook.{hook.name}":
            secret = env.get(hook.secret_env, "")
            if not secret:
                raise DeliveryError(f"set {hook.secret_env} for webhook {hook.name}",
                                    retryable=False)
            return WebhookChannel(hook.url, secret.encode())
    raise DeliveryError(f"channel {name} is not configured", retryable=False)


def send_once(spec: NotifySpec, name: str, recipient: RecipientAddress, message: Message,
              idempotency_key: str) -> None:
    """Build the channel, send one message, and release the channel's connections."""
    channel = build_channel(spec, name)
    try:
        channel.send(recipient, message, idempotency_key=idempotency_key)
    finally:
        close = getattr(channel, "close", None)
        if callable(close):
            close()
