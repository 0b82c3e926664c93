"""What pydantic cannot check in `accord.yaml`: references between sections (groups,
users, resources, roles), uniqueness, CEL, and the gateway's settings. Each problem
carries its path in the file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cel

from accord.spec.base import NAME
from accord.spec.file import PolicyFile
from accord.spec.gateway import GatewaySpec
from accord.spec.guardrails import FUNCTION, STATEMENT_KINDS, TABLE
from accord.spec.masking import COLUMN, PATTERN
from accord.spec.resources import GATEWAY_CLASSES, ResourceSpec

CEL_VARIABLES = frozenset({"request", "resource"})
# Names a step's approvers may use for someone relative to the request: the resource's
# owners, the requester's manager, the requesting agent's owner.
RELATIVE = ("owners", "manager", "owner")
RESERVED = RELATIVE


@dataclass(frozen=True)
class PolicyProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


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

    for name, u in users.items():
        if not NAME.match(name):
            problems.append(PolicyProblem(f"users.{name}", "invalid user name"))
        if u.manager is not None and u.manager not in users and not spec.identity.from_provider:
            problems.append(PolicyProblem(f"users.{name}.manager",
                                          f'unknown user "{u.manager}"'))
    for g, members in groups.items():
        if not NAME.match(g):
            problems.append(PolicyProblem(f"groups.{g}", "invalid group name"))
        if g in users:
            problems.append(PolicyProblem(f"groups.{g}", f'"{g}" is both a user and a group'))
        if g in RESERVED:
            problems.append(PolicyProblem(f"groups.{g}", f'"{g}" is reserved'))
        if isinstance(spec.users, dict | list) and spec.users:
            listed = set(spec.users)
            for i, m in enumerate(members):
                if m not in listed:
                    problems.append(PolicyProblem(f"groups.{g}[{i}]", f'unknown user "{m}"'))

    # With a directory, names the file does not define may be the provider's (checked
    # against the directory by `accord policy check` when it can reach the database).
    provided = spec.identity.from_provider
    for field_name in ("admins", "auditors"):
        for i, g in enumerate(getattr(spec.accord, field_name)):
            if g not in groups and not provided:
                problems.append(PolicyProblem(f"accord.{field_name}[{i}]", f'unknown group "{g}"'))

    agents = {a.name for a in spec.agents}

    def principal(path: str, ref: str, *, allow_owners: bool) -> None:
        name = ref.split(":", 1)[1] if ref.startswith(("group:", "user:")) else ref
        if name in agents and not ref.startswith("group:"):
            problems.append(PolicyProblem(path, f'"{name}" is an agent, and an agent never '
                                                "approves, reviews or administers"))
        elif ref in RELATIVE:
            if not allow_owners:
                problems.append(PolicyProblem(path, f'"{ref}" is only meaningful in steps'))
        elif provided:
            return
        elif ref.startswith("group:"):
            if name not in groups:
                problems.append(PolicyProblem(path, f'unknown group "{name}"'))
        elif ref.startswith("user:"):
            if name not in users:
                problems.append(PolicyProblem(path, f'unknown user "{name}"'))
        elif name not in groups and name not in users:
            problems.append(PolicyProblem(path, f'unknown group "{name}"'))

    problems += _check_agents(spec)
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
        if (r.kind == "mcp") != (r.mcp is not None):
            problems.append(PolicyProblem(
                f"resources[{i}]", "a resource of kind mcp needs an mcp: block (its upstream "
                "and each role's tools), and only those have one"))
        if r.mcp is not None:
            if (r.mcp.url is None) == (r.mcp.command is None):
                problems.append(PolicyProblem(f"resources[{i}].mcp",
                                              "give either url or command"))
            elif r.mcp.url is not None and not r.mcp.url.startswith(("http://", "https://")):
                problems.append(PolicyProblem(f"resources[{i}].mcp.url",
                                              "must be an http:// or https:// URL"))
            for key in ("roles", "resources", "prompts"):
                for role in getattr(r.mcp, key):
                    if role not in r.roles:
                        problems.append(PolicyProblem(f"resources[{i}].mcp.{key}.{role}",
                                                      f'unknown role "{role}"'))

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


def _check_agents(spec: PolicyFile) -> list[PolicyProblem]:
    """`agents`: unique names that are nobody's user or group name, an owner who is a user
    (not another agent), known groups."""
    problems: list[PolicyProblem] = []
    users = spec.user_specs()
    provided = spec.identity.from_provider
    seen: set[str] = set()
    for i, a in enumerate(spec.agents):
        base = f"agents[{i}]"
        if a.name in seen:
            problems.append(PolicyProblem(f"{base}.name", f'duplicate agent "{a.name}"'))
        seen.add(a.name)
        if a.name in users:
            problems.append(PolicyProblem(f"{base}.name", f'"{a.name}" is both a user and an '
                                                          "agent"))
        if a.name in spec.groups or a.name in RESERVED:
            problems.append(PolicyProblem(f"{base}.name", f'"{a.name}" is a group name'
                                          if a.name in spec.groups else f'"{a.name}" is reserved'))
        if a.owner in {b.name for b in spec.agents}:
            problems.append(PolicyProblem(f"{base}.owner", f'"{a.owner}" is an agent; an '
                                                           "agent's owner is a person"))
        elif a.owner not in users and not provided:
            problems.append(PolicyProblem(f"{base}.owner", f'unknown user "{a.owner}"'))
        for j, g in enumerate(a.groups):
            if g not in spec.groups and not provided:
                problems.append(PolicyProblem(f"{base}.groups[{j}]", f'unknown group "{g}"'))
            if g in spec.accord.admins or g in spec.accord.auditors:
                problems.append(PolicyProblem(
                    f"{base}.groups[{j}]", f'group "{g}" holds an Accord role (accord.admins '
                    "or accord.auditors); an agent only ever requests"))
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
                                         and r.provision.type in ("postgres", "mariadb"))):
        problems.append(PolicyProblem(path, "needs dsn_env or dsn_file (or a postgres or "
                                            "mariadb provision target whose DSN it uses)"))
    problems += _check_guardrails(path, r)
    problems += _check_masking(path, r)
    for role, allowed in g.allow.items():
        if role not in r.roles:
            problems.append(PolicyProblem(f"{path}.allow.{role}", f'unknown role "{role}"'))
        if "local_infile" in allowed and r.gateway_protocol != "mysql":
            problems.append(PolicyProblem(
                f"{path}.allow.{role}", "local_infile (LOAD DATA LOCAL INFILE) is MySQL's; "
                                        f"this resource is served over {r.gateway_protocol}"))
    for role, classes in g.roles.items():
        if role not in r.roles:
            problems.append(PolicyProblem(f"{path}.roles.{role}", f'unknown role "{role}"'))
        for k, name in enumerate(classes):
            if name not in GATEWAY_CLASSES:
                problems.append(PolicyProblem(
                    f"{path}.roles.{role}[{k}]",
                    f'unknown statement class "{name}" (one of {", ".join(GATEWAY_CLASSES)})'))
    return problems


def _check_guardrails(path: str, r: ResourceSpec) -> list[PolicyProblem]:
    """`gateway.guardrails`: unique names, known roles and statement kinds, names that
    parse, at least one condition (a rule without any would match every statement), and
    the PostgreSQL gateway (the one that matches them, on pglast's tree)."""
    problems: list[PolicyProblem] = []
    assert r.gateway is not None
    if r.gateway.guardrails and r.gateway_protocol != "postgres":
        problems.append(PolicyProblem(f"{path}.guardrails", "guardrails are applied by the "
                                      "PostgreSQL gateway only; this resource is served "
                                      f"over {r.gateway_protocol}"))
    seen: set[str] = set()
    for i, rule in enumerate(r.gateway.guardrails):
        base = f"{path}.guardrails[{i}]"
        if rule.name in seen:
            problems.append(PolicyProblem(f"{base}.name", f'duplicate guardrail "{rule.name}"'))
        seen.add(rule.name)
        if not rule.conditions:
            problems.append(PolicyProblem(base, "give at least one condition (statements, "
                                                "tables, schemas, functions, without_where, "
                                                "without_limit)"))
        for k, role in enumerate(rule.roles):
            if role not in r.roles:
                problems.append(PolicyProblem(f"{base}.roles[{k}]", f'unknown role "{role}"'))
        for k, kind in enumerate(rule.statements):
            if kind.lower() not in STATEMENT_KINDS:
                problems.append(PolicyProblem(
                    f"{base}.statements[{k}]",
                    f'unknown statement kind "{kind}" (one of {", ".join(STATEMENT_KINDS)})'))
        for field, pattern, names in (("tables", TABLE, rule.tables),
                                      ("schemas", TABLE, rule.schemas),
                                      ("functions", FUNCTION, rule.functions)):
            for k, name in enumerate(names):
                if not pattern.match(name) or (field == "schemas" and "." in name):
                    problems.append(PolicyProblem(f"{base}.{field}[{k}]",
                                                  f'"{name}" is not a valid name'))
        if rule.without_where and rule.statements and not {
                k.lower() for k in rule.statements} & {"update", "delete"}:
            problems.append(PolicyProblem(f"{base}.without_where",
                                          "only UPDATE and DELETE have a WHERE here"))
        if rule.without_limit and rule.statements and "select" not in {
                k.lower() for k in rule.statements}:
            problems.append(PolicyProblem(f"{base}.without_limit",
                                          "only queries (select) have a LIMIT"))
    return problems


def _check_masking(path: str, r: ResourceSpec) -> list[PolicyProblem]:
    """`gateway.masking`: unique names, known roles, column names and patterns that parse,
    something to mask, and a protocol whose gateway masks (PostgreSQL's, so far: a rule
    the data path would not apply must not pass for one it does)."""
    problems: list[PolicyProblem] = []
    assert r.gateway is not None
    if r.gateway.masking and r.gateway_protocol != "postgres":
        problems.append(PolicyProblem(f"{path}.masking", "masking is applied by the "
                                      "PostgreSQL gateway only; this resource is served "
                                      f"over {r.gateway_protocol}"))
    seen: set[str] = set()
    for i, rule in enumerate(r.gateway.masking):
        base = f"{path}.masking[{i}]"
        if rule.name in seen:
            problems.append(PolicyProblem(f"{base}.name", f'duplicate masking rule "{rule.name}"'))
        seen.add(rule.name)
        if not rule.conditions:
            problems.append(PolicyProblem(base, "give at least one of columns, "
                                                "column_patterns, detectors"))
        if not rule.replacement:
            problems.append(PolicyProblem(f"{base}.replacement", "must not be empty (a masked "
                                                                 "value never looks unmasked)"))
        for k, role in enumerate(rule.roles):
            if role not in r.roles:
                problems.append(PolicyProblem(f"{base}.roles[{k}]", f'unknown role "{role}"'))
        for k, column in enumerate(rule.columns):
            if not COLUMN.match(column):
                problems.append(PolicyProblem(f"{base}.columns[{k}]",
                                              f'"{column}" is not schema.table.column'))
        for k, pattern in enumerate(rule.column_patterns):
            if not PATTERN.match(pattern) or pattern.strip("*?") == "":
                problems.append(PolicyProblem(
                    f"{base}.column_patterns[{k}]",
                    f'"{pattern}" is not a column-name pattern (letters, digits, _, $, '
                    f'* and ?, with at least one letter or digit)'))
    return problems
