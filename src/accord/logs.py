"""How Accord's processes log: plain lines, or one JSON object per line
(ACCORD_LOG_FORMAT=json) for log pipelines, with the HTTP request each line belongs to.

The HTTP layer (`accord.api.observe`) opens a `RequestContext` per call (its id, answered
as `X-Request-Id`, and the route template); authentication fills in the user. Every line
logged while the call runs, on the event loop or on a worker thread, carries them.

Secrets never reach a line: the formatters replace Accord's tokens (API, gateway, SCIM),
passwords in URLs and `password=` pairs, whatever a message or a traceback held.
"""

from __future__ import annotations

import json
import logging
import logging.config
import random
import re
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
# Libraries held at WARNING whatever the level: alembic's INFO is noise, and httpx's (and
# httpcore's DEBUG) print the full URL of every outgoing call: a Slack or webhook URL is a
# credential (its path is the secret), so those lines would leak it.
QUIET = {"alembic": "WARNING", "httpx": "WARNING", "httpcore": "WARNING"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# acc_ (API tokens), acg_ (gateway connection tokens), accscim_ (SCIM bearer tokens): 256
# random bits, urlsafe base64.
_TOKEN = re.compile(r"\b(acc|acg|accscim)_[A-Za-z0-9_\-]{16,}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]*@")
_PAIR = re.compile(r"(?i)\b(password|passwd|pgpassword|secret)(\s*[=:]\s*)"
                   r"(?!\*\*\*)('[^']*'|\"[^\"]*\"|[^\s,;&]+)")


def redact(text: str) -> str:
    """`text` with every secret Accord knows the shape of replaced by ***."""
    if "_" in text:
        text = _TOKEN.sub(r"\1_***", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    return _PAIR.sub(r"\1\2***", text)


class RequestContext:
    """The HTTP call a line belongs to: its id, route template and (once known) user.

    `scope`: the call's ASGI scope, where the router leaves the route it matched: the
    template is read from it when a line is written."""

    __slots__ = ("id", "scope", "user")

    def __init__(self, request_id: str | None = None,
                 scope: Mapping[str, Any] | None = None) -> None:
        # 64 random bits: unique enough to find a call's lines, and 3 times cheaper than
        # os.urandom (the random module reseeds in a forked child)
        self.id = request_id or f"{random.getrandbits(64):016x}"
        self.scope = scope
        self.user: str | None = None

    @property
    def route(self) -> str | None:
        route = self.scope.get("route") if self.scope is not None else None
        path = getattr(route, "path", None)
        return path if isinstance(path, str) else None


_REQUEST: ContextVar[RequestContext | None] = ContextVar("accord_request", default=None)


def current() -> RequestContext | None:
    return _REQUEST.get()


def begin(ctx: RequestContext) -> Any:
    """Make `ctx` the current call's; returns what `end` takes."""
    return _REQUEST.set(ctx)


def end(token: Any) -> None:
    _REQUEST.reset(token)


def set_user(user: str) -> None:
    """The authenticated user of the current call (shared with its threads: the context
    holds the one object)."""
    ctx = _REQUEST.get()
    if ctx is not None:
        ctx.user = user


class TextFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = TEXT_FORMAT, *args: Any, **kw: Any) -> None:
        super().__init__(fmt, *args, **kw)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = _REQUEST.get()
        if ctx is not None:
            line += f" [request {ctx.id}]"
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, pid; the
    request's id, route and user within an HTTP call; `exception` with its traceback;
    and the fields a caller passed as `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pid": record.process,
        }
        ctx = _REQUEST.get()
        if ctx is not None:
            out["request_id"] = ctx.id
            route = ctx.route
            if route is not None:
                out["route"] = route
            if ctx.user is not None:
                out["user"] = ctx.user
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, redact(value) if isinstance(value, str) else value)
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def config(fmt: str = "text", level: str = "info") -> dict[str, Any]:
    """A logging.config.dictConfig for `fmt`: the root logger and uvicorn's, to stderr.
    uvicorn applies it in each of its worker processes too (`log_config`)."""
    if fmt not in FORMATS:
        raise ValueError(f"ACCORD_LOG_FORMAT must be text or json, not {fmt!r}")
    formatter = {"()": f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"}
    handler = {"class": "logging.StreamHandler", "formatter": "accord",
               "stream": "ext://sys.stderr"}
    quiet = {"level": level.upper()}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # uvicorn's own config names these two formatters; keep them to hand
        "formatters": {"accord": formatter, "default": formatter, "access": formatter},
        "handlers": {"accord": handler},
        "root": {"handlers": ["accord"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, **quiet},
            "uvicorn.error": {"handlers": [], "propagate": True, **quiet},
            "uvicorn.access": {"handlers": [], "propagate": True, **quiet},
            **{name: {"level": level} for name, level in QUIET.items()},
        },
    }


def configure(fmt: str = "text", level: str = "info") -> dict[str, Any]:
    """Set up this process's logging (`fmt`: Settings.log_format); returns the config,
    for uvicorn to apply in its workers."""
    cfg = config(fmt, level)
    logging.config.dictConfig(cfg)
    return cfg
