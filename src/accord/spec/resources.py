"""`resources:`: what access is requested to, where it is provisioned, and how the
gateway reaches it."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from accord.spec.base import NAME, Strict, as_duration
from accord.spec.guardrails import DEFAULT_REVIEW_WINDOW, GuardrailSpec
from accord.spec.masking import MaskingSpec


class RolePrivileges(Strict):
    """What an Accord role means on a database target: GRANT statements' privilege part."""

    privileges: list[str] = Field(
        default_factory=list, examples=[["SELECT ON ALL TABLES IN SCHEMA public"]]
    )


class PostgresTarget(Strict):
    type: Literal["postgres"]
    dsn_env: str | None = None  # env var holding the admin DSN (never in this file)
    dsn_file: str | None = None  # or a file holding it
    host: str = "127.0.0.1"  # what grantees are told (connection info)
    port: int = 5432
    database: str = "postgres"
    roles: dict[str, RolePrivileges] = Field(default_factory=dict)


class MariaDBTarget(Strict):
    type: Literal["mariadb", "mysql"]
    dsn_env: str | None = None
    dsn_file: str | None = None
    host: str = "127.0.0.1"
    port: int = 3306
    database: str = ""
    roles: dict[str, RolePrivileges] = Field(default_factory=dict)


class WebhookTarget(Strict):
    type: Literal["webhook"]
    url: str
    secret_env: str  # env var holding the HMAC secret
    timeout: timedelta = timedelta(seconds=10)

    _d = field_validator("timeout", mode="before")(lambda cls, v: as_duration(v))


GATEWAY_CLASSES = ("read", "write", "ddl", "admin", "transaction", "session", "identity",
                   "unknown", "all")


class ResourceGatewaySpec(Strict):
    """How the gateway reaches a resource, and what each Accord role may run there."""

    dsn_env: str | None = None  # upstream DSN (default: the postgres provision target's)
    dsn_file: str | None = None
    database: str | None = None  # default: provision.database, else the DSN's
    set_role: bool | None = None  # SET ROLE accord_<resource>_<role> (default: when provisioned)
    roles: dict[str, list[str]] = Field(default_factory=dict)  # Accord role -> statement classes
    # Rules matched on each parsed statement, in order (docs/gateway.md, Guardrails).
    guardrails: list[GuardrailSpec] = Field(default_factory=list)
    # How long after its approval a reviewed statement may run (once).
    review_window: timedelta = DEFAULT_REVIEW_WINDOW
    # Values rewritten in query results, per role (docs/gateway.md, Masking).
    masking: list[MaskingSpec] = Field(default_factory=list)
    # Accord role -> what its sessions may do beyond statement classes: `local_infile`
    # (MySQL's LOAD DATA LOCAL INFILE: the client sends a file of its machine; each transfer's
    # size and sha256 are on the statement's row). Refused unless listed.
    allow: dict[str, list[Literal["local_infile"]]] = Field(default_factory=dict)

    _w = field_validator("review_window", mode="before")(lambda cls, v: as_duration(v))


class ResourceSSHSpec(Strict):
    """`ssh:` of a resource of kind ssh: the server behind the gateway's SSH front, the
    login the gateway uses there for each Accord role, and what each role may do beyond a
    shell and commands (local port forwarding, `-L`, and SFTP are refused unless listed)."""

    host: str
    port: int = Field(default=22, ge=1, le=65535)
    users: dict[str, str] = Field(min_length=1)  # Accord role -> upstream login
    key_env: str | None = None  # env var holding the upstream private key (OpenSSH or PEM)
    key_file: str | None = None  # or a file holding it
    host_key: str  # the upstream's public host key, pinned ("ssh-ed25519 AAAA...")
    # Accord role -> what it may do beyond shell and exec: `port_forwarding` (local, `-L`,
    # through the upstream server), `remote_forwarding` (`-R`: the upstream server listens),
    # `agent_forwarding` (`-A`: the client's agent, for programs on the server),
    # `x11_forwarding` (`-X`/`-Y`) — each use a `gateway.ssh_forward` event —, `sftp` (each
    # file transfer a `gateway.ssh_file` event with its sha256).
    allow: dict[str, list[Literal["port_forwarding", "remote_forwarding", "agent_forwarding",
                                  "x11_forwarding", "sftp"]]] = Field(default_factory=dict)
    idle_timeout: timedelta | None = None  # a session with no input this long is closed

    _i = field_validator("idle_timeout", mode="before")(
        lambda cls, v: None if v is None else as_duration(v))

    @model_validator(mode="after")
    def _key(self) -> ResourceSSHSpec:
        if (self.key_env is None) == (self.key_file is None):
            raise ValueError("give exactly one of key_env or key_file (the upstream key)")
        return self


MYSQL_KINDS = ("mysql", "mariadb")  # resource kinds the gateway serves over MySQL's protocol


def _short(value: object) -> timedelta:
    """A duration, or seconds as a number (`0.5`)."""
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        return timedelta(seconds=value)
    return as_duration(value)


class McpToolSpec(Strict):
    """One upstream tool's rules beyond the role patterns."""

    # each_call: every call is held and filed as a request of kind tool_call with its exact
    # arguments, routed through the workflows; it runs once approved, never when denied.
    approval: Literal["none", "each_call"] = "none"


class McpTarget(Strict):
    """An upstream MCP server behind the gateway (resource `kind: mcp`), and the tools each
    Accord role may see and call there: name patterns (`*` and `?` as in a shell; `*` for
    every tool). A tool no pattern of the grant's role matches is hidden from `tools/list`
    and refused on `tools/call`."""

    url: str | None = Field(default=None, description="the upstream's streamable HTTP "
                            "endpoint", examples=["http://127.0.0.1:9000/mcp"])
    # Or a program the gateway starts and speaks to over stdio (one per gateway process,
    # started at the first call), with its arguments; `env` names variables passed on.
    command: list[str] | None = Field(default=None, min_length=1,
                                      examples=[["npx", "-y", "@acme/tools-mcp"]])
    env: list[str] = Field(default_factory=list, description="variables the command gets "
                           "from the gateway's environment (besides the SDK's safe defaults: "
                           "HOME, PATH, ...; nothing else is passed)")
    headers_env: dict[str, str] = Field(
        default_factory=dict, description="headers sent upstream, each from an env var "
        "(a credential the agents never see)", examples=[{"Authorization": "TOOLS_AUTH"}])
    timeout: timedelta = timedelta(seconds=60)  # for one upstream call
    # The largest message (HTTP body) an MCP client may send the gateway for this resource;
    # a larger one is answered with a JSON-RPC error, unread.
    max_body: int = Field(default=64 << 10, ge=1 << 10, le=64 << 20)
    roles: dict[str, list[str]] = Field(default_factory=dict)  # Accord role -> tool patterns
    # The same for the upstream's resources (URI patterns) and prompts (name patterns);
    # a role with none sees and reads none.
    resources: dict[str, list[str]] = Field(default_factory=dict)
    prompts: dict[str, list[str]] = Field(default_factory=dict)
    tools: dict[str, McpToolSpec] = Field(default_factory=dict)  # by tool name
    # How long a held call waits for its approval before the agent gets an error naming the
    # request (calling again with the same arguments picks the approval up).
    approval_wait: timedelta = timedelta(minutes=2)

    _d = field_validator("timeout", "approval_wait", mode="before")(
        lambda cls, v: _short(v))

    def held(self, tool: str) -> bool:
        spec = self.tools.get(tool)
        return spec is not None and spec.approval == "each_call"


class ResourceSpec(Strict):
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
    mcp: McpTarget | None = None  # kind mcp: the MCP server the gateway stands in front of
    ssh: ResourceSSHSpec | None = None  # kind ssh: the server behind the gateway's SSH front

    @property
    def gateway_reachable(self) -> bool:
        """Whether the (database or SSH) gateway serves it: a `gateway:` block of its own,
        an `ssh:` server, or a postgres or mariadb provision target (whose admin DSN makes
        the gateway's logins). An MCP server (`mcp:`) is reached through the MCP gateway
        instead."""
        return self.mcp is None and (
            self.gateway is not None or self.ssh is not None
            or isinstance(self.provision, PostgresTarget | MariaDBTarget))

    @property
    def gateway_protocol(self) -> str:
        """The wire protocol its gateway sessions speak: `ssh` for a resource of kind ssh,
        `mysql` for a mariadb/mysql provision target or a resource of kind mysql or mariadb,
        else `postgres`."""
        if self.kind == "ssh" or self.ssh is not None:
            return "ssh"
        if isinstance(self.provision, MariaDBTarget) or self.kind in MYSQL_KINDS:
            return "mysql"
        return "postgres"

    @model_validator(mode="after")
    def _ssh(self) -> ResourceSpec:
        if (self.kind == "ssh") != (self.ssh is not None):
            raise ValueError("a resource of kind ssh needs an `ssh:` block, and only it has one")
        if self.ssh is not None:
            unknown = sorted(set(self.ssh.users) - set(self.roles))
            if unknown:
                raise ValueError(f"ssh.users names roles the resource does not have: "
                                 f"{', '.join(unknown)}")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits, '.', '_' or '-' (max 63)")
        return v
