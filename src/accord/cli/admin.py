"""Operator commands that work on the database directly: db, token, policy."""

from __future__ import annotations

import json
from collections.abc import Sized
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from accord.cli.state import load_state
from accord.db import make_engine, transaction, utcnow
from accord.durations import DurationError, format_duration, parse_duration
from accord.errors import AccordError, NotFound
from accord.identity import service as identity
from accord.ledger.events import Actor, Via
from accord.people import snapshot
from accord.policy.engine import Policy
from accord.policy.lint import unfillable
from accord.settings import Settings, redact_url
from accord.spec.load import PolicyError, load_policy_file

out = Console()
err = Console(stderr=True)

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (works on the database directly).", no_args_is_help=True)
policy_app = typer.Typer(help="accord.yaml policy files.", no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="accord.yaml (default: $ACCORD_CONFIG).")
]


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the schema of $ACCORD_DATABASE_URL to the latest version."""
    settings = Settings.from_env()
    from accord import migrations  # alembic: only for this command

    engine = make_engine(settings.database_url.get())
    before = migrations.current(engine)
    migrations.upgrade(engine)
    after = migrations.current(engine)
    where = redact_url(settings.database_url.get())
    out.print(f"database {where}: {before or 'empty'} → {after}")


def _many(items: Sized, noun: str) -> str:
    """`1 agent`, `2 agents`."""
    return f"{len(items)} {noun}" + ("" if len(items) == 1 else "s")


@policy_app.command("check")
def policy_check(
    path: Annotated[Path | None, typer.Argument(
        help="The accord.yaml to check (default: $ACCORD_CONFIG, else ./accord.yaml).",
        show_default=False)] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 on warnings too.")] = False,
    warn: Annotated[bool, typer.Option(
        "--warn", help="Print warnings and exit 0 (the default; says so in CI scripts).")
    ] = False,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Do not connect to the gateway's upstream databases.")] = False,
) -> None:
    """Validate a policy file; print every error with its path and exit 1 if any.

    Warns (exit 0, or with --warn; exit 1 with --strict) about every workflow whose steps
    cannot be filled jointly, by distinct people other than the requester, for some
    resource and role it routes, naming who would ask and why (such a request is refused
    when filed). With a gateway, a role the gateway could never serve (a postgres
    provision target that does not provision it, and no shared gateway credentials) is an
    error. It also warns when a resource reached through the gateway with shared upstream
    credentials gives them more than a grant should hold: superuser, CREATEROLE,
    BYPASSRLS, REPLICATION, predefined roles such as pg_read_all_data or the
    pg_*_server_* roles, or membership in several roles. It connects to those databases
    with the configured DSNs, and to the directory when people come from an identity
    provider; --offline skips that.
    """
    if strict and warn:
        raise typer.BadParameter("--strict and --warn contradict each other")
    if path is None:
        path = Settings.from_env().config_path
    if not path.exists():
        err.print(f"error: {path}: no such file (give the PATH, or set ACCORD_CONFIG)",
                  markup=False, soft_wrap=True)
        raise typer.Exit(1)
    try:
        loaded = load_policy_file(path)
    except PolicyError as exc:
        for problem in exc.problems:
            err.print(f"{path}: {problem}", markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(exc.problems)} error(s)", style="red")
        raise typer.Exit(1) from None
    policy = Policy(loaded)
    clashes, warnings, directory = ([], [], None) if offline else _directory_findings(policy)
    clashes += _unserved_gateway_roles(policy)
    for clash in clashes:
        err.print(f"{path}: {clash}", markup=False, highlight=False, soft_wrap=True)
    if clashes:
        err.print(f"{len(clashes)} error(s)", style="red")
        raise typer.Exit(1)
    if directory is not None:
        policy = policy.with_directory(directory)
    if directory is not None or not loaded.spec.identity.from_provider:
        # (Without the provider's people, its groups look empty: nothing worth saying.)
        warnings += [str(u) for u in unfillable(policy, now=utcnow())]
    warnings += [] if offline else _shared_login_warnings(policy)
    for warning in warnings:
        err.print(f"{path}: warning: {warning}", markup=False, highlight=False,
                  soft_wrap=True)
    out.print(
        f"{path}: ok: {_many(policy.users, 'user')}, {_many(policy.groups, 'group')}, "
        f"{_many(policy.resources, 'resource')}, {_many(policy.workflows, 'workflow')}"
        + (f", {_many(policy.agents, 'agent')}" if policy.agents else "") + "; "
        f"version {policy.version}" + (f"; {len(warnings)} warning(s)" if warnings else ""),
        markup=False, highlight=False, soft_wrap=True,  # one line each, however long the path
    )
    if warnings and strict:
        raise typer.Exit(1)


def _directory_findings(policy: Policy
                        ) -> tuple[list[str], list[str], snapshot.Directory | None]:
    """With a directory (identity.scim or oidc_groups): group names both the file and the
    provider define (errors), names the policy refers to that neither defines yet
    (warnings), and the directory itself, when it could be read."""
    spec = policy.loaded.spec
    if not spec.identity.from_provider:
        return [], [], None
    from accord import migrations  # alembic: only when the policy takes people from a provider

    try:
        engine = make_engine(Settings.from_env().database_url.get())
        if migrations.current(engine) != migrations.head():
            return [], ["the database schema is not current, so the directory was not read "
                        "nor workflows' steps checked (accord db upgrade; --offline skips "
                        "this)"], None
        with engine.connect() as conn, Session(bind=conn) as session:
            directory = snapshot.load(session)
        engine.dispose()
    except Exception as exc:  # unreachable, wrong URL: a warning, the file itself is fine
        return [], [f"could not read the directory ({type(exc).__name__}); names the file "
                    "does not define, and whether workflows' steps can be filled, were not "
                    "checked (--offline skips this)"], None
    clashes = [f"groups.{g}: the identity provider's directory also has a group \"{g}\"; a "
               "group has one source: rename one of them"
               for g in sorted(spec.groups.keys() & directory.groups.keys())]
    known = spec.groups.keys() | directory.groups.keys() | spec.user_specs().keys() \
        | directory.users.keys() | {"owners", "manager"}
    missing = sorted(n for n in policy.referenced_groups if n not in known
                     and n.removeprefix("user:") not in known)
    return clashes, [f'"{n}" is neither in accord.yaml nor (yet) in the directory: it '
                     "matches nobody until the provider pushes it" for n in missing], directory


def _unserved_gateway_roles(policy: Policy) -> list[str]:
    """Roles whose every gateway session would be refused: no login may serve them."""
    if policy.loaded.spec.gateway is None:
        return []
    from accord.gateway.postgres.upstream import unserved_role, unserved_roles

    return [unserved_role(spec.name, role) for spec in policy.resources.values()
            for role in unserved_roles(spec)]


def _shared_login_warnings(policy: Policy) -> list[str]:
    """The gateway's shared upstream logins that hold more than a grant should."""
    if policy.loaded.spec.gateway is None:
        return []
    # The gateway's modules load only when accord.yaml has a `gateway:` section.
    from accord.gateway.postgres.upstream import UpstreamError, shared_login_risks

    out: list[str] = []
    for spec in policy.resources.values():
        g = spec.gateway
        if g is None or not (g.dsn_env or g.dsn_file) or spec.gateway_protocol != "postgres":
            continue  # per-role gateway logins (or an unserved role, an error above)
        try:
            out += shared_login_risks(spec)
        except UpstreamError as exc:
            out.append(f"{exc.message} (--offline skips this)")
    return out


@token_app.command("issue")
def token_issue(
    user: Annotated[str, typer.Argument(help="A user from accord.yaml (with --agent: the "
                                              "agent's owner or an admin, who issues it).")],
    expires: Annotated[
        str | None, typer.Option(help="Lifetime such as 30d or 12h; default: never expires.")
    ] = None,
    name: Annotated[str, typer.Option(help="A label to recognise the token by.")] = "",
    agent: Annotated[str | None, typer.Option(
        help="Issue the token to this agent (accord.yaml agents:) instead, on USER's "
             "authority: USER must be its owner or an admin.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Issue an API token for USER (or, with --agent, for USER's agent) and print it once;
    only its hash is stored."""
    try:
        lifetime = parse_duration(expires) if expires else None
    except DurationError as exc:
        err.print(f"error: --expires: {exc}")
        raise typer.Exit(1) from None
    st = load_state(config, upgrade="never")
    policy = st.policies.current
    try:
        with transaction(st.sessions) as session:
            if agent is None:
                row, secret = identity.issue(
                    session, policy=policy, user=user, now=st.now(),
                    actor=Actor("system", "accord-cli", Via.CLI), expires_in=lifetime,
                    name=name)
            else:
                if not policy.is_user(user):
                    raise NotFound(f'unknown user "{user}"; users come from accord.yaml')
                row, secret = identity.issue_for_agent(
                    session, policy=policy, agent=agent, issuer=user, now=st.now(),
                    actor=Actor.user(user, Via.CLI), expires_in=lifetime, name=name)
    except AccordError as exc:
        err.print(f"error: {exc.detail}")
        raise typer.Exit(1) from None
    life = f"expires in {format_duration(lifetime)}" if lifetime else "does not expire"
    whom = f"agent {agent} (owner {policy.owner_of(agent)})" if agent else user
    err.print(f"token {row.id} for {whom} ({life}); it is shown only this once:")
    print(secret)


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """List tokens (never their secrets)."""
    st = load_state(config, upgrade="never")
    with st.sessions() as session:
        rows = identity.list_tokens(session, user=user)
    now = st.now()
    if as_json:
        print(json.dumps([
            {"id": t.id, "user": t.user, "kind": t.kind, "name": t.name, "prefix": t.prefix,
             "created_at": t.created_at.isoformat(),
             "expires_at": t.expires_at.isoformat() if t.expires_at else None,
             "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None}
            for t in rows
        ], indent=2))
        return
    table = Table("ID", "USER", "KIND", "NAME", "PREFIX", "CREATED", "STATE")
    for t in rows:
        state = ("revoked" if t.revoked_at else
                 "expired" if t.expires_at and t.expires_at <= now else "live")
        table.add_row(str(t.id), t.user, t.kind, t.name, t.prefix + "…",
                      t.created_at.strftime("%Y-%m-%d %H:%M"), state)
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's ID (see `accord token list`).")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a token; calls made with it fail from now on."""
    st = load_state(config, upgrade="never")
    try:
        with transaction(st.sessions) as session:
            row = identity.revoke(session, token_id=token_id, now=st.now(), admin=True,
                                  actor=Actor("system", "accord-cli", Via.CLI))
    except AccordError as exc:
        err.print(f"error: {exc.detail}")
        raise typer.Exit(1) from None
    out.print(f"token {row.id} of {row.user} revoked")
