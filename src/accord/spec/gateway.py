"""`gateway:`: the database gateway's listeners (PostgreSQL's, and MySQL's under
`mysql:`), TLS, limits and processes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator

from accord.spec.base import Strict, as_duration


def _short_duration(value: Any) -> timedelta:
    """A duration that may also be milliseconds (`100ms`) or seconds as a number (`0.5`)."""
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        return timedelta(seconds=value)
    if isinstance(value, str) and value.strip().endswith("ms") and value.strip()[:-2].isdigit():
        return timedelta(milliseconds=int(value.strip()[:-2]))
    return as_duration(value)


class GatewayTLSSpec(Strict):
    cert: str | None = None  # PEM certificate chain
    key: str | None = None  # PEM private key
    required: bool = False  # refuse clients that do not ask for TLS


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class GatewayMySQLSpec(Strict):
    """`gateway.mysql`: the listener for MySQL-protocol clients (resources of kind mysql or
    mariadb, or with a mariadb provision target). TLS, limits and processes are the
    gateway's."""

    listen: str = "127.0.0.1:3307"
    public_port: int | None = Field(default=None, ge=1, le=65535)
    # What the handshake says before the upstream server is known (clients print it; the
    # real one is `SELECT VERSION()`).
    server_version: str = Field(default="5.7.0-accord-gateway", min_length=1, max_length=60)

    @property
    def host_port(self) -> tuple[str, int]:
        return _host_port(self.listen)


SSHCipher = Literal["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                   "chacha20-poly1305@openssh.com", "aes128-ctr", "aes192-ctr", "aes256-ctr"]

SSH_CIPHERS: tuple[SSHCipher, ...] = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                                      "aes128-ctr", "aes192-ctr", "aes256-ctr")


class GatewaySSHSpec(Strict):
    """`gateway.ssh`: the listener for SSH clients (resources of kind ssh), the gateway's own
    host key, and how recordings are cut into chunks."""

    listen: str = "127.0.0.1:2222"
    public_port: int | None = Field(default=None, ge=1, le=65535)
    host_key_file: str | None = None  # default: $ACCORD_DATA_DIR/gateway-ssh-host-key (made)
    # A recording chunk's size, at most. Each chunk is a ledger event and a stored row: at
    # 64 KiB those were a third of the shipper's CPU for bulk output (an interactive
    # session's chunks are cut by `chunk_interval` long before).
    chunk_bytes: int = Field(default=256 << 10, ge=1024, le=8 << 20)
    chunk_interval: timedelta = timedelta(seconds=5)  # and its age, at most
    # The ciphers offered to clients. The client's first choice that is offered wins, and
    # OpenSSH's is chacha20-poly1305, which costs the gateway (asyncssh) 13 times what
    # AES-GCM does per packet, for every byte of every session: not offered unless listed.
    ciphers: list[SSHCipher] = Field(default_factory=lambda: list(SSH_CIPHERS), min_length=1)
    # Where recordings' bytes are kept: in the database (null), or in pack files under this
    # directory (relative: to $ACCORD_DATA_DIR), which every process that ships, shows or
    # verifies recordings must see (`accord.gateway.packs`).
    recordings_dir: str | None = Field(default=None, min_length=1)

    _d = field_validator("chunk_interval", mode="before")(lambda cls, v: _short_duration(v))

    @property
    def host_port(self) -> tuple[str, int]:
        return _host_port(self.listen)


class GatewaySpec(Strict):
    """`accord gateway`: the PostgreSQL proxy that checks grants and audits statements."""

    listen: str = "127.0.0.1:6432"
    public_host: str | None = None  # in the DSNs handed out (default: the listen host)
    public_port: int | None = Field(default=None, ge=1, le=65535)
    tls: GatewayTLSSpec = Field(default_factory=GatewayTLSSpec)
    redact_parameters: bool = True
    token_ttl: timedelta = timedelta(minutes=5)
    # Each shipper round has a fixed cost (a spool fdatasync, a database commit): under a
    # steady stream, rounds every 500 ms instead of 100 gave 7 % more throughput. It is
    # also what a machine crash can take (docs/gateway.md).
    flush_interval: timedelta = timedelta(milliseconds=500)
    # Facts per ledger transaction: a round's facts go in one when they fit, so that the
    # round's fixed cost is paid once (10,000 is 20,000 statements a second per process).
    flush_batch: int = Field(default=10_000, ge=1, le=1_000_000)
    max_backlog: int = Field(default=200_000, ge=1000)  # statements queued before refusing
    # Spooled bytes not yet in the ledger (an SSH recording's output: its bytes are not
    # statements) before recorded sessions pause their output until the shipper catches up.
    max_spool_bytes: int = Field(default=1 << 30, ge=64 << 20)
    max_message: int = Field(default=8 << 20, ge=64 << 10, le=1 << 30)
    max_statement_bytes: int = Field(default=16384, ge=256)  # statement text kept per event
    statements_per_event: int = Field(default=1000, ge=1, le=10_000)  # 1: an event each
    # Prepare a session's unnamed statement upstream once it was parsed this many times
    # (as pgjdbc's prepareThreshold; below 2 acts as 2); 0: never. docs/gateway.md says more.
    auto_prepare: int = Field(default=5, ge=0, le=1000)
    startup_timeout: timedelta = timedelta(seconds=10)
    message_timeout: timedelta = timedelta(seconds=60)  # to finish a started message
    watch_interval: timedelta = timedelta(milliseconds=500)
    # Refused logins recorded one by one per client address and minute; past it, counted
    # into one `gateway.logins_suppressed` event (an unauthenticated flood cannot grow the
    # ledger).
    max_refused_logins: int = Field(default=20, ge=1, le=100_000)
    spool_dir: str | None = None  # default: $ACCORD_DATA_DIR/gateway-spool
    # `accord gateway` runs this many gateway processes behind one listening socket (a
    # Python process uses one core); `auto`: gateway.prefork.auto_count says how many.
    # `accord serve` always runs one, in a thread.
    processes: int | Literal["auto"] = "auto"
    # The nice value of the data path (as nginx's worker_priority, HAProxy's nice): one
    # process relays every session, so each time a woken backend preempts it, every
    # session waits. Below 0 needs CAP_SYS_NICE. Unset: left as started.
    priority: int | None = Field(default=None, ge=-20, le=19)
    mysql: GatewayMySQLSpec | None = None  # also serve MySQL-protocol clients
    ssh: GatewaySSHSpec | None = None  # also serve SSH clients

    _d = field_validator("token_ttl", "flush_interval", "startup_timeout", "message_timeout",
                         "watch_interval", mode="before")(lambda cls, v: _short_duration(v))

    @property
    def host_port(self) -> tuple[str, int]:
        return _host_port(self.listen)

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, v: Any) -> Any:
        if isinstance(v, str) and v.isascii() and v.isdigit():
            v = int(v)
        if v == "auto" or (type(v) is int and 1 <= v <= 64):
            return v
        raise ValueError("must be auto or a number of processes from 1 to 64")
