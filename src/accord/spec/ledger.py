"""`ledger:`: checkpoints, the sinks events are streamed to, the integrity monitor."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator

from accord.spec.base import Strict, as_duration


class SinkSpec(Strict):
    """Where ledger events are also streamed: a JSONL file, syslog, or an HTTP webhook."""

    name: str
    type: Literal["jsonl", "syslog", "webhook"]
    path: str | None = None  # jsonl
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # jsonl rotation
    keep: int = Field(default=10, ge=1)  # jsonl rotated files kept
    host: str | None = None  # syslog
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "udp"
    url: str | None = None  # webhook
    secret_env: str | None = None  # webhook: env var holding the HMAC secret
    batch: int = Field(default=100, ge=1, le=10000)


class IntegritySpec(Strict):
    """The worker's integrity monitor: re-hashes new entries every `check_interval` and
    the whole ledger every `full_interval`, within `budget` of one core."""

    enabled: bool = True
    check_interval: timedelta = timedelta(seconds=1)
    full_interval: timedelta = timedelta(hours=1)
    budget: float = Field(default=0.25, gt=0, le=1)

    _d = field_validator("check_interval", "full_interval", mode="before")(
        lambda cls, v: as_duration(v))


class LedgerSpec(Strict):
    origin: str | None = None
    witness_dir: str | None = None
    checkpoint_interval: timedelta = timedelta(seconds=2)
    sinks: list[SinkSpec] = Field(default_factory=list)
    integrity: IntegritySpec = Field(default_factory=IntegritySpec)

    _d = field_validator("checkpoint_interval", mode="before")(lambda cls, v: as_duration(v))
