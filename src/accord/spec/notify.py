"""`notify:`: email, Slack and webhook channels."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from accord.spec.base import Strict, as_duration


class EmailSpec(Strict):
    host: str
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["plain", "starttls", "ssl"] = "plain"
    sender: str
    username_env: str | None = None  # env vars, never the credentials themselves
    password_env: str | None = None


_HOST = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")


def _host(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise ValueError(f"{host!r} is not a lowercase host name (such as hooks.slack.com, "
                         "or *.example.com for its subdomains)")
    return host


class SlackSpec(Strict):
    webhook_url_env: str | None = None
    bot_token_env: str | None = None
    # Hosts a button click's response_url may name (the worker posts there); "*.x.com"
    # allows x.com's subdomains. Slack's response URLs are on hooks.slack.com.
    response_hosts: list[Annotated[str, AfterValidator(_host)]] = Field(
        default_factory=lambda: ["hooks.slack.com"], min_length=1)


class HookSpec(Strict):
    name: str
    url: str
    secret_env: str


class NotifySpec(Strict):
    base_url: str = "http://127.0.0.1:8000"  # where links in messages point
    expiry_warning: timedelta | None = timedelta(minutes=15)  # tell grantees this long before

    _d = field_validator("expiry_warning", mode="before")(
        lambda cls, v: None if v is None else as_duration(v))
    email: EmailSpec | None = None
    slack: SlackSpec | None = None
    webhooks: list[HookSpec] = Field(default_factory=list)
