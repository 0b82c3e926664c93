"""The one reader of environment variables and `accord.yaml`.

`Settings` comes from the environment; `PolicyFile` is the validated shape of
`accord.yaml`. `load_policy_file` returns every problem at once, each with its
path (`workflows[1].steps[0].approvers: unknown group "lead"`), so an operator
fixes a file in one pass.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import cel
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from accord.durations import DurationError, parse_duration

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
DEFAULT_MAX_DURATION = timedelta(hours=8)
DEFAULT_EXPIRE_AFTER = timedelta(hours=24)
CEL_VARIABLES = frozenset({"request", "resource"})


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
        )


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


# ---------------------------------------------------------------- accord.yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value}s"
    if not isinstance(value, str):
        raise ValueError("must be a duration such as 4h or 30m")
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


class UserSpec(_Strict):
    email: str | None = None
    slack: str | None = None
    name: str | None = None


class AccordRoles(_Strict):
    admins: list[str] = Field(default_factory=list, description="groups holding Accord admin")
    auditors: list[str] = Field(default_factory=list, description="groups holding Accord auditor")


class RolePrivileges(_Strict):
    """What an Accord role means on a database target: GRANT statements' privilege part."""

    privileges: list[str] = Field(
        default_factory=list, examples=[["SELECT ON ALL TABLES IN SCHEMA public"]]
    )


class PostgresTarget(_Strict):
    type: Literal["postgres"]
    dsn_env: str | None = None  # env var holding the admin DSN (never in this file)
    dsn_file: str | None = None  # or a file holding it
    host: str = "127.0.0.1"  # what grantees are told (connection info)
    port: int = 5432
    database: str = "postgres"
    roles: dict[str, RolePrivileges] = Field(default_factory=dict)


class MariaDBTarget(_Strict):
    type: Literal["mariadb", "mysql"]
    dsn_env: str | None = None
    dsn_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 3306
    database: str = ""
    roles: dict[str, RolePrivileges] = Field(default_factory=dict)


class WebhookTarget(_Strict):
    type: Literal["webhook"]
    url: str
    secret_env: str  # env var holding the HMAC secret
    timeout: timedelta = timedelta(seconds=10)

    _d = field_validator("timeout", mode="before")(lambda cls, v: _duration(v))


GATEWAY_CLASSES = ("read", "write", "ddl", "admin", "transaction", "session", "identity",
                   "unknown", "all")


class ResourceGatewaySpec(_Strict):
    """How the gateway reaches a resource, and what each Accord role may run there."""

    dsn_env: str | None = None  # upstream DSN (default: the postgres provision target's)
    dsn_file: str | None = None
    database: str | None = None  # default: provision.database, else the DSN's
    set_role: bool | None = None  # SET ROLE accord_<resource>_<role> (default: when provisioned)
    roles: dict[str, list[str]] = Field(default_factory=dict)  # Accord role -> statement classes


class ResourceSpec(_Strict):
    name: str
    kind: str = "generic"
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    owners: list[str] = Field(default_factory=list)
    roles: list[str] = Field(min_length=1)
    # Where access is really granted; without it a grant exists only in Accord.
    provision: PostgresTarget | MariaDBTarget | WebhookTarget | None = Field(
        default=None, discriminator="type")
    reconcile: Literal["off", "report", "enforce"] = "report"
    gateway: ResourceGatewaySpec | None = None  # reachable through `accord gateway`

    @property
    def gateway_reachable(self) -> bool:
        """Whether the gateway serves it: a `gateway:` block of its own, or a postgres
        provision target (whose admin DSN makes the gateway's logins)."""
        return self.gateway is not None or isinstance(self.provision, PostgresTarget)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits, '.', '_' or '-' (max 63)")
        return v


class StepSpec(_Strict):
    name: str | None = None
    approvers: list[str] = Field(min_length=1)
    min_approvals: int = Field(default=1, ge=1)


class ElevatedSpec(_Strict):
    roles: list[str] = Field(min_length=1)
    steps: list[StepSpec] = Field(min_length=1)


class EscalationSpec(_Strict):
    remind_after: timedelta | None = None
    escalate_after: timedelta | None = None
    to: list[str] = Field(default_factory=list)
    expire_after: timedelta | None = None

    _d = field_validator("remind_after", "escalate_after", "expire_after", mode="before")(
        lambda cls, v: None if v is None else _duration(v)
    )


class WorkflowNotifySpec(_Strict):
    """Which channels carry a workflow's notifications, and who hears of auto-approvals."""

    # People's channels for this workflow's requests; None: every configured one.
    channels: list[Literal["email", "slack"]] | None = None
    # requester: only the requester; none: nobody; all: the requester and resource owners.
    auto_approved: Literal["requester", "none", "all"] = "requester"


class WorkflowMessages(_Strict):
    """What people read when a rule decides, instead of its CEL."""

    auto_deny: str | None = Field(default=None, max_length=300)
    auto_approve: str | None = Field(default=None, max_length=300)


class WorkflowSpec(_Strict):
    name: str
    description: str = ""
    match: str = "true"
    max_duration: timedelta = DEFAULT_MAX_DURATION
    require_reason: bool = True
    auto_approve: str | None = None
    auto_deny: str | None = None
    steps: list[StepSpec] = Field(default_factory=list)
    elevated: ElevatedSpec | None = None
    escalation: EscalationSpec | None = None
    expire_after: timedelta | None = None
    notify: WorkflowNotifySpec = Field(default_factory=WorkflowNotifySpec)
    messages: WorkflowMessages = Field(default_factory=WorkflowMessages)

    _d = field_validator("max_duration", "expire_after", mode="before")(
        lambda cls, v: None if v is None else _duration(v)
    )

    @property
    def pending_timeout(self) -> timedelta:
        """How long a request may wait for a decision before it expires."""
        if self.expire_after is not None:
            return self.expire_after
        if self.escalation is not None and self.escalation.expire_after is not None:
            return self.escalation.expire_after
        return DEFAULT_EXPIRE_AFTER


class SinkSpec(_Strict):
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


class IntegritySpec(_Strict):
    """The worker's integrity monitor: re-hashes new entries every `check_interval` and
    the whole ledger every `full_interval`, within `budget` of one core."""

    enabled: bool = True
    check_interval: timedelta = timedelta(seconds=1)
    full_interval: timedelta = timedelta(hours=1)
    budget: float = Field(default=0.25, gt=0, le=1)

    _d = field_validator("check_interval", "full_interval", mode="before")(
        lambda cls, v: _duration(v))


class LedgerSpec(_Strict):
    origin: str | None = None
    witness_dir: str | None = None
    checkpoint_interval: timedelta = timedelta(seconds=2)
    sinks: list[SinkSpec] = Field(default_factory=list)
    integrity: IntegritySpec = Field(default_factory=IntegritySpec)

    _d = field_validator("checkpoint_interval", mode="before")(lambda cls, v: _duration(v))


class EmailSpec(_Strict):
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


class SlackSpec(_Strict):
    webhook_url_env: str | None = None
    bot_token_env: str | None = None
    # Hosts a button click's response_url may name (the worker posts there); "*.x.com"
    # allows x.com's subdomains. Slack's response URLs are on hooks.slack.com.
    response_hosts: list[Annotated[str, AfterValidator(_host)]] = Field(
        default_factory=lambda: ["hooks.slack.com"], min_length=1)


class HookSpec(_Strict):
    name: str
    url: str
    secret_env: str


class NotifySpec(_Strict):
    base_url: str = "http://127.0.0.1:8000"  # where links in messages point
    expiry_warning: timedelta | None = timedelta(minutes=15)  # tell grantees this long before

    _d = field_validator("expiry_warning", mode="before")(
        lambda cls, v: None if v is None else _duration(v))
    email: EmailSpec | None = None
    slack: SlackSpec | None = None
    webhooks: list[HookSpec] = Field(default_factory=list)


class OidcSpec(_Strict):
    """Single sign-on with any OpenID Connect provider (authorization code + PKCE)."""

    issuer: str  # discovery at {issuer}/.well-known/openid-configuration
    client_id: str
    client_secret_env: str | None = None  # env var holding it; public clients use PKCE alone
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    username_claim: str = "preferred_username"  # matched against the users in this file
    groups_claim: str = "groups"  # recorded at login; see allowed_groups
    allowed_groups: list[str] = Field(default_factory=list)  # if set, one is required
    label: str = "single sign-on"  # the login button's text


class WebSpec(_Strict):
    session_ttl: timedelta = timedelta(hours=12)
    # Pick a user without a password: for the embedded demo only, never in production.
    local_login: bool = False
    token_login: bool = True  # sign in by pasting an API token
    oidc: OidcSpec | None = None

    _d = field_validator("session_ttl", mode="before")(lambda cls, v: _duration(v))


Sev = Literal["low", "medium", "high", "critical"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class _Rule(_Strict):
    enabled: bool = True


class CountRule(_Rule):
    """N events by one person within a window."""

    count: int = Field(default=3, ge=1)
    window: timedelta = timedelta(minutes=10)
    severity: Sev = "medium"

    _d = field_validator("window", mode="before")(lambda cls, v: _duration(v))


class SimpleRule(_Rule):
    severity: Sev = "medium"


class RubberStampRule(_Rule):
    within: timedelta = timedelta(seconds=30)  # an approval this soon after the request
    share: float = Field(default=0.8, gt=0, le=1)  # one approver deciding this share ...
    min_decisions: int = Field(default=10, ge=2)  # ... of a team's last N decisions
    severity: Sev = "medium"

    _d = field_validator("within", mode="before")(lambda cls, v: _duration(v))


class WorkingHours(_Rule):
    start: int = Field(default=8, ge=0, le=23)  # hour, in `timezone`
    end: int = Field(default=19, ge=1, le=24)
    timezone: str = "UTC"
    weekdays: list[Weekday] = Field(
        default_factory=lambda: list[Weekday](["mon", "tue", "wed", "thu", "fri"]))
    severity: Sev = "low"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class DetectSpec(_Strict):
    """Detectors over the ledger; each raises alerts with its severity."""

    repeated_denials: CountRule = Field(default_factory=CountRule)
    failed_gateway_logins: CountRule = Field(
        default_factory=lambda: CountRule(count=5, window=timedelta(minutes=5), severity="high"))
    self_approval: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    rubber_stamp: RubberStampRule = Field(default_factory=RubberStampRule)
    off_hours: WorkingHours = Field(default_factory=WorkingHours)
    unused_grant: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="low"))
    scope_violation: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    # A refused attempt to leave the grant through the gateway: change the session's role,
    # how the server reads text, or reach the server's files, programs or other sessions.
    gateway_escalation: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    drift: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    break_glass: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="high"))
    policy_change: SimpleRule = Field(default_factory=lambda: SimpleRule(severity="low"))
    notify: list[str] = Field(default_factory=list)  # groups told of alerts (default: admins)
    notify_severity: Sev = "high"  # alerts at least this severe are sent; all are listed


class BreakGlassSpec(_Strict):
    """Emergency access: granted at once, alerted, and reviewed after the fact."""

    groups: list[str] = Field(min_length=1)  # who may break the glass
    reviewers: list[str] = Field(min_length=1)  # groups that review each use
    max_duration: timedelta = timedelta(hours=1)
    remind_every: timedelta = timedelta(hours=4)  # until reviewed

    _d = field_validator("max_duration", "remind_every", mode="before")(
        lambda cls, v: _duration(v))


class ReviewRecurringSpec(_Strict):
    """Access held again and again counts like standing access: this many grants or more."""

    min_grants: int = Field(default=3, ge=1)


class ReviewSpec(_Strict):
    """An access review campaign, started every `every`: reviewers certify or revoke each
    standing or recurring (user, resource, role) of the resources it covers."""

    name: str
    description: str = ""
    every: timedelta = timedelta(days=90)
    resources: list[str] = Field(default_factory=list)  # names, or
    match: str | None = None  # CEL over `resource`
    reviewers: list[str] = Field(default_factory=lambda: ["owners"])
    duration: timedelta = timedelta(days=14)  # open this long; undecided entries expire
    remind_every: timedelta | None = timedelta(days=2)  # null: no reminders
    recurring: ReviewRecurringSpec | None = Field(default_factory=ReviewRecurringSpec)
    # What an entry nobody decided by the deadline means: access stays until its own end
    # (keep), or the access is revoked like a reviewer's revoke (revoke: fail closed).
    on_expiry: Literal["keep", "revoke"] = "keep"

    _d = field_validator("every", "duration", "remind_every", mode="before")(
        lambda cls, v: None if v is None else _duration(v))


class WorkerSpec(_Strict):
    reconcile_every: timedelta = timedelta(minutes=1)  # compare targets with grants this often

    _d = field_validator("reconcile_every", mode="before")(lambda cls, v: _duration(v))


def _short_duration(value: Any) -> timedelta:
    """A duration that may also be milliseconds (`100ms`) or seconds as a number (`0.5`)."""
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        return timedelta(seconds=value)
    if isinstance(value, str) and value.strip().endswith("ms") and value.strip()[:-2].isdigit():
        return timedelta(milliseconds=int(value.strip()[:-2]))
    return _duration(value)


class GatewayTLSSpec(_Strict):
    cert: str | None = None  # PEM certificate chain
    key: str | None = None  # PEM private key
    required: bool = False  # refuse clients that do not ask for TLS


class GatewaySpec(_Strict):
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

    _d = field_validator("token_ttl", "flush_interval", "startup_timeout", "message_timeout",
                         "watch_interval", mode="before")(lambda cls, v: _short_duration(v))

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, v: Any) -> Any:
        if isinstance(v, str) and v.isascii() and v.isdigit():
            v = int(v)
        if v == "auto" or (type(v) is int and 1 <= v <= 64):
            return v
        raise ValueError("must be auto or a number of processes from 1 to 64")


class PolicyFile(_Strict):
    accord: AccordRoles = Field(default_factory=AccordRoles)
    gateway: GatewaySpec | None = None
    worker: WorkerSpec = Field(default_factory=WorkerSpec)
    notify: NotifySpec = Field(default_factory=NotifySpec)
    web: WebSpec = Field(default_factory=WebSpec)
    detect: DetectSpec = Field(default_factory=DetectSpec)
    break_glass: BreakGlassSpec | None = None
    reviews: list[ReviewSpec] = Field(default_factory=list)
    ledger: LedgerSpec = Field(default_factory=LedgerSpec)
    users: dict[str, UserSpec | None] | list[str] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    resources: list[ResourceSpec] = Field(default_factory=list)
    workflows: list[WorkflowSpec] = Field(default_factory=list)

    def user_specs(self) -> dict[str, UserSpec]:
        """Every known user: those listed under `users` and every group member."""
        out: dict[str, UserSpec] = {}
        if isinstance(self.users, list):
            out.update({u: UserSpec() for u in self.users})
        else:
            out.update({u: (s or UserSpec()) for u, s in self.users.items()})
        for members in self.groups.values():
            for m in members:
                out.setdefault(m, UserSpec())
        return out


@dataclass(frozen=True)
class PolicyProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyError(Exception):
    """accord.yaml could not be loaded; `problems` lists every reason."""

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy file with the sha256 of its exact bytes."""

    spec: PolicyFile
    version: str
    text: str
    source: str


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def parse_policy_text(text: str, source: str = "<string>") -> LoadedPolicy:
    """Validate policy text; raise PolicyError listing every problem with its path."""
    version = hashlib.sha256(text.encode()).hexdigest()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError([PolicyProblem(where, f"not valid YAML: {problem}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError([PolicyProblem("", "the file must be a mapping at the top level")])
    structural: list[PolicyProblem] = []
    spec = None
    # Validate; on errors drop the offending optional keys and retry, so cross-reference
    # problems elsewhere in the file are reported in the same pass. List items are never
    # dropped: their indices must stay true in the paths we print.
    for _attempt in range(20):
        try:
            spec = PolicyFile.model_validate(raw)
            break
        except ValidationError as exc:
            removed = False
            for err in exc.errors():
                problem = PolicyProblem(_loc(tuple(err["loc"])), _pydantic_message(err))
                if problem not in structural:
                    structural.append(problem)
                removed |= _drop(raw, err["loc"])
            if not removed:
                break
    problems = structural + (check_references(spec) if spec is not None else [])
    if problems or spec is None:
        raise PolicyError(problems)
    return LoadedPolicy(spec=spec, version=version, text=text, source=source)


def _pydantic_message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["type"] == "missing":
        return "is required"
    return str(err["msg"]).removeprefix("Value error, ")


def _drop(raw: Any, loc: tuple[int | str, ...]) -> bool:
    """Delete the mapping key at `loc` if it is not required; True if something went."""
    node = raw
    for part in loc[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    key = loc[-1] if loc else None
    required = {"name", "roles", "approvers"}
    if isinstance(node, dict) and key in node and key not in required:
        del node[key]
        return True
    return False


def load_policy_file(path: Path) -> LoadedPolicy:
    """Read and validate `accord.yaml`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([PolicyProblem("", f"{path}: no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyProblem("", f"{path}: cannot read: {exc}")]) from None
    return parse_policy_text(text, source=str(path))


def check_cel(expr: str) -> str | None:
    """Return why a CEL expression is unusable, or None."""
    try:
        program = cel.compile(expr)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).split("\n")[0]
        return f"invalid CEL: {first}"
    unknown = set(program.variables()) - CEL_VARIABLES
    if unknown:
        names = ", ".join(sorted(unknown))
        return f"invalid CEL: unknown variable {names} (use request or resource)"
    return None


def check_references(spec: PolicyFile) -> list[PolicyProblem]:
    """Cross-reference checks pydantic cannot express: names, uniqueness, CEL syntax."""
    problems: list[PolicyProblem] = []
    users = spec.user_specs()
    groups = spec.groups

    for name in list(users):
        if not NAME.match(name):
            problems.append(PolicyProblem(f"users.{name}", "invalid user name"))
    for g, members in groups.items():
        if not NAME.match(g):
            problems.append(PolicyProblem(f"groups.{g}", "invalid group name"))
        if g in users:
            problems.append(PolicyProblem(f"groups.{g}", f'"{g}" is both a user and a group'))
        if g == "owners":
            problems.append(PolicyProblem(f"groups.{g}", '"owners" is reserved'))
        if isinstance(spec.users, dict | list) and spec.users:
            listed = set(spec.users)
            for i, m in enumerate(members):
                if m not in listed:
                    problems.append(PolicyProblem(f"groups.{g}[{i}]", f'unknown user "{m}"'))

    for field_name in ("admins", "auditors"):
        for i, g in enumerate(getattr(spec.accord, field_name)):
            if g not in groups:
                problems.append(PolicyProblem(f"accord.{field_name}[{i}]", f'unknown group "{g}"'))

    def principal(path: str, ref: str, *, allow_owners: bool) -> None:
        name = ref.split(":", 1)[1] if ref.startswith(("group:", "user:")) else ref
        if ref == "owners":
            if not allow_owners:
                problems.append(PolicyProblem(path, '"owners" is only meaningful in steps'))
        elif ref.startswith("group:"):
            if name not in groups:
                problems.append(PolicyProblem(path, f'unknown group "{name}"'))
        elif ref.startswith("user:"):
            if name not in users:
                problems.append(PolicyProblem(path, f'unknown user "{name}"'))
        elif name not in groups and name not in users:
            problems.append(PolicyProblem(path, f'unknown group "{name}"'))

    if spec.break_glass is not None:
        for key in ("groups", "reviewers"):
            for i, g in enumerate(getattr(spec.break_glass, key)):
                principal(f"break_glass.{key}[{i}]", g, allow_owners=False)
    for i, g in enumerate(spec.detect.notify):
        principal(f"detect.notify[{i}]", g, allow_owners=False)
    hours = spec.detect.off_hours
    if hours.start >= hours.end:
        problems.append(PolicyProblem("detect.off_hours.end", "must be after start"))

    needs = {"jsonl": ("path",), "syslog": ("host", "port"), "webhook": ("url", "secret_env")}
    sink_names: set[str] = set()
    for i, sink in enumerate(spec.ledger.sinks):
        if sink.name in sink_names:
            problems.append(PolicyProblem(f"ledger.sinks[{i}].name",
                                          f'duplicate sink "{sink.name}"'))
        sink_names.add(sink.name)
        for key in needs[sink.type]:
            if getattr(sink, key) in (None, ""):
                problems.append(PolicyProblem(f"ledger.sinks[{i}].{key}",
                                              f"required for a {sink.type} sink"))

    seen: set[str] = set()
    for i, r in enumerate(spec.resources):
        if r.name in seen:
            problems.append(PolicyProblem(f"resources[{i}].name", f'duplicate resource "{r.name}"'))
        seen.add(r.name)
        if len(set(r.roles)) != len(r.roles):
            problems.append(PolicyProblem(f"resources[{i}].roles", "duplicate role"))
        for j, role in enumerate(r.roles):
            if not NAME.match(role):
                problems.append(PolicyProblem(f"resources[{i}].roles[{j}]", "invalid role name"))
        for j, o in enumerate(r.owners):
            principal(f"resources[{i}].owners[{j}]", o, allow_owners=False)
        if r.gateway is not None:
            problems += _check_resource_gateway(f"resources[{i}].gateway", r)

    if spec.gateway is not None:
        problems += _check_gateway(spec.gateway)
    problems += _check_reviews(spec, principal)

    seen = set()
    for i, w in enumerate(spec.workflows):
        base = f"workflows[{i}]"
        if w.name in seen:
            problems.append(PolicyProblem(f"{base}.name", f'duplicate workflow "{w.name}"'))
        seen.add(w.name)
        for key in ("match", "auto_approve", "auto_deny"):
            expr = getattr(w, key)
            if expr is not None and (why := check_cel(expr)):
                problems.append(PolicyProblem(f"{base}.{key}", why))
        if not w.steps and w.auto_approve is None:
            problems.append(
                PolicyProblem(f"{base}.steps", "a workflow needs approval steps or auto_approve")
            )
        for j, s in enumerate(w.steps):
            for k, a in enumerate(s.approvers):
                principal(f"{base}.steps[{j}].approvers[{k}]", a, allow_owners=True)
        if w.elevated:
            for j, s in enumerate(w.elevated.steps):
                for k, a in enumerate(s.approvers):
                    principal(f"{base}.elevated.steps[{j}].approvers[{k}]", a, allow_owners=True)
        if w.escalation:
            for k, a in enumerate(w.escalation.to):
                principal(f"{base}.escalation.to[{k}]", a, allow_owners=True)
        for k, channel in enumerate(w.notify.channels or []):
            where = f"{base}.notify.channels[{k}]"
            if channel in (w.notify.channels or [])[:k]:
                problems.append(PolicyProblem(where, f"duplicate channel {channel}"))
            elif getattr(spec.notify, channel) is None:
                problems.append(PolicyProblem(
                    where, f"{channel} is not configured (add notify.{channel})"))
    return problems


def _check_reviews(spec: PolicyFile, principal: Any) -> list[PolicyProblem]:
    """`reviews`: unique names, known resources, a CEL `match` over `resource`, reviewers."""
    problems: list[PolicyProblem] = []
    names: set[str] = set()
    resources = {r.name for r in spec.resources}
    for i, r in enumerate(spec.reviews):
        base = f"reviews[{i}]"
        if not NAME.match(r.name):
            problems.append(PolicyProblem(f"{base}.name", "invalid review name"))
        if r.name in names:
            problems.append(PolicyProblem(f"{base}.name", f'duplicate review "{r.name}"'))
        names.add(r.name)
        if bool(r.resources) == (r.match is not None):
            problems.append(PolicyProblem(base, "give either resources or match"))
        for j, name in enumerate(r.resources):
            if name not in resources:
                problems.append(PolicyProblem(f"{base}.resources[{j}]",
                                              f'unknown resource "{name}"'))
        if r.match is not None and (why := check_cel(r.match)):
            problems.append(PolicyProblem(f"{base}.match", why))
        elif r.match is not None and "request" in cel.compile(r.match).variables():
            problems.append(PolicyProblem(f"{base}.match",
                                          "invalid CEL: only resource is known here"))
        if not r.reviewers:
            problems.append(PolicyProblem(f"{base}.reviewers", "name at least one reviewer"))
        for k, ref in enumerate(r.reviewers):
            principal(f"{base}.reviewers[{k}]", ref, allow_owners=True)
        if r.duration > r.every:
            problems.append(PolicyProblem(f"{base}.duration",
                                          "must not be longer than every (campaigns of one "
                                          "review never overlap)"))
        if r.remind_every is not None and r.remind_every >= r.duration:
            problems.append(PolicyProblem(f"{base}.remind_every", "must be shorter than "
                                          "duration (or null for no reminders)"))
    return problems


def _check_gateway(g: GatewaySpec) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    host, sep, port = g.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        problems.append(PolicyProblem("gateway.listen", "must be HOST:PORT"))
    if bool(g.tls.cert) != bool(g.tls.key):
        problems.append(PolicyProblem("gateway.tls", "cert and key go together"))
    if g.tls.required and not g.tls.cert:
        problems.append(PolicyProblem("gateway.tls.required", "needs cert and key"))
    if g.token_ttl.total_seconds() < 10:
        problems.append(PolicyProblem("gateway.token_ttl", "must be at least 10s"))
    return problems


def _check_resource_gateway(path: str, r: ResourceSpec) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    g = r.gateway
    assert g is not None
    if not (g.dsn_env or g.dsn_file or (r.provision is not None
                                         and r.provision.type == "postgres")):
        problems.append(PolicyProblem(path, "needs dsn_env or dsn_file (or a postgres "
                                            "provision target whose DSN it uses)"))
    for role, classes in g.roles.items():
        if role not in r.roles:
            problems.append(PolicyProblem(f"{path}.roles.{role}", f'unknown role "{role}"'))
        for k, name in enumerate(classes):
            if name not in GATEWAY_CLASSES:
                problems.append(PolicyProblem(
                    f"{path}.roles.{role}[{k}]",
                    f'unknown statement class "{name}" (one of {", ".join(GATEWAY_CLASSES)})'))
    return problems
