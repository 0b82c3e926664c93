"""The one reader of environment variables: `Settings` (ACCORD_*), and `Secret`, a
string that never prints itself."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar


class Secret:
    """A string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def redact_url(url: str) -> str:
    """A database URL with its password replaced, safe to print."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Settings:
    """Process settings read from the environment (ACCORD_*)."""

    database_url: Secret
    config_path: Path
    data_dir: Path
    url: str
    token: Secret | None
    ledger_key_file: Path
    secrets_key_file: Path
    slack_signing_secret: Secret | None = None
    # `accord serve`'s HTTP limits against slow or idle clients (docs/api.md)
    header_timeout: float = 10.0  # seconds to send a request's headers, else 408
    timeout_keep_alive: int = 5  # seconds a kept-alive connection may idle between requests
    limit_concurrency: int = 1000  # open connections or running requests, then 503
    # Logs (docs/operations.md): "text" lines or "json" objects, one a line; with
    # access_log, a line per HTTP request
    log_format: str = "text"
    access_log: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("ACCORD_DATA_DIR", ".accord"))
        default_db = f"sqlite:///{data_dir / 'accord.db'}"
        token = env.get("ACCORD_TOKEN")
        return cls(
            database_url=Secret(env.get("ACCORD_DATABASE_URL", default_db)),
            config_path=Path(env.get("ACCORD_CONFIG", "accord.yaml")),
            data_dir=data_dir,
            url=env.get("ACCORD_URL", "http://127.0.0.1:8000").rstrip("/"),
            token=Secret(token) if token else None,
            ledger_key_file=Path(env.get("ACCORD_LEDGER_KEY_FILE", str(data_dir / "ledger.key"))),
            secrets_key_file=Path(env.get("ACCORD_SECRETS_KEY_FILE",
                                          str(data_dir / "secrets.key"))),
            slack_signing_secret=(Secret(env["ACCORD_SLACK_SIGNING_SECRET"])
                                  if env.get("ACCORD_SLACK_SIGNING_SECRET") else None),
            header_timeout=_positive(env, "ACCORD_HEADER_TIMEOUT", 10.0, float),
            timeout_keep_alive=_positive(env, "ACCORD_TIMEOUT_KEEP_ALIVE", 5, int),
            limit_concurrency=_positive(env, "ACCORD_LIMIT_CONCURRENCY", 1000, int),
            log_format=_choice(env, "ACCORD_LOG_FORMAT", ("text", "json")),
            access_log=_choice(env, "ACCORD_ACCESS_LOG", ("0", "1")) == "1",
        )


def _choice(env: dict[str, str], name: str, allowed: tuple[str, ...]) -> str:
    """One of `allowed` (the first when unset)."""
    raw = env.get(name) or allowed[0]
    if raw.lower() not in allowed:
        raise ValueError(f"{name} must be {' or '.join(allowed)}, not {raw!r}")
    return raw.lower()


def _positive(env: dict[str, str], name: str, default: _N, kind: type[_N]) -> _N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = kind(0)
    if not 0 < value < 10**9:  # NaN and inf too
        raise ValueError(f"{name} must be a positive {'number' if kind is float else 'integer'}"
                         f", not {raw!r}")
    return value
