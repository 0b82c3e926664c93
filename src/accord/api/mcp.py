"""Accord as an MCP server: the tools an agent (or a person) uses to ask for access.

`list_resources`, `request_access`, `request_status`, `my_grants` and `relinquish`, over
streamable HTTP at `/mcp` (bearer token, stateless: any replica answers any call) and over
stdio (`accord mcp`). Each tool authenticates the token as the API does
(`deps.authenticate`) and calls the same service functions the API's handlers call, so
the permission checks, the routing and the ledger events are the API's; only `via` says
`mcp`. A refusal is the tool's error result (`isError`), its text the problem's detail.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from accord import __version__
from accord.api import problems
from accord.api.deps import Principal, authenticate, bearer_token
from accord.durations import DurationError, parse_duration
from accord.errors import AccordError, Invalid, Unauthorized
from accord.grants.models import Grant, GrantStatus
from accord.ledger.events import Via
from accord.requests import service
from accord.requests.schemas import GrantOut
from accord.requests.views import render
from accord.state import AppState

T = TypeVar("T")

INSTRUCTIONS = (
    "Accord governs access to databases and other resources. Ask for access with "
    "request_access (a reason helps the approver); a request is routed by policy and may "
    "wait for a person's approval: poll request_status. my_grants lists the access you hold; "
    "relinquish gives it up early. You never approve anything yourself.")

# Who is calling: from the call's HTTP headers (`/mcp`), or the token `accord mcp` was
# started with. Runs in a worker thread with the call's database session.
Authenticator = Callable[[Session, Context], Principal]


def http_caller(st: AppState) -> Authenticator:
    """The caller of an HTTP call: its bearer token, checked as the API checks it."""

    def who(session: Session, ctx: Context) -> Principal:
        headers = ctx.headers or {}
        return authenticate(session, st, bearer_token(headers.get("authorization", "")),
                            via=Via.MCP)

    return who


def token_caller(st: AppState, token: str) -> Authenticator:
    """The caller of every call of a stdio session: the token it was started with, checked
    again on each call (revoked or expired: refused from then on)."""

    def who(session: Session, ctx: Context) -> Principal:
        return authenticate(session, st, token, via=Via.MCP)

    return who


def build(st: AppState, caller: Authenticator) -> MCPServer:
    """The MCP server with Accord's tools, for one way of knowing the caller."""
    # The SDK's constructor calls logging.basicConfig (a rich handler at INFO on the root
    # logger) when nothing configured logging yet: an app built without `accord serve`'s
    # logging (a benchmark, an embedding) then printed every httpx request. accord.logs owns
    # the root logger; undo the SDK's setup.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    server: MCPServer = MCPServer("accord", version=__version__, instructions=INSTRUCTIONS,
                                  warn_on_duplicate_tools=False)
    root.handlers[:], root.level = handlers, level

    async def run(ctx: Context, fn: Callable[[Session, Principal], T], *,
                  command: bool = False) -> T:
        def work() -> T:
            with st.sessions() as session:
                who = caller(session, ctx)
                try:
                    out = fn(session, who)
                except AccordError as exc:
                    if command:  # as the API: roll back, record a refusal worth recording
                        service.after_refusal(session, exc=exc, caller=who.caller, now=st.now())
                        session.commit()
                    raise
                session.commit()
                return out

        try:
            return await anyio.to_thread.run_sync(work)
        except AccordError as exc:
            raise ToolError(f"{exc.title}: {exc.detail}" if exc.detail else exc.title) from None

    @server.tool(description="The resources you may ask for access to, with their roles.")
    async def list_resources(ctx: Context) -> list[dict[str, Any]]:
        def catalog(session: Session, who: Principal) -> list[dict[str, Any]]:
            return [{"name": r.name, "kind": r.kind, "description": r.description,
                     "labels": dict(r.labels), "roles": list(r.roles)}
                    for r in who.policy.resources.values()]

        return await run(ctx, catalog)

    @server.tool(description="Ask for access to a resource in a role, for a while (such as "
                             "30m or 2h). The answer says whether it is pending (poll "
                             "request_status), active, or denied and why.")
    async def request_access(
        resource: Annotated[str, Field(description="a resource's name (list_resources)")],
        role: Annotated[str, Field(description="one of the resource's roles")],
        duration: Annotated[str, Field(description="how long, such as 30m or 2h")],
        reason: Annotated[str, Field(description="why: the approver reads it")] = "",
        ctx: Context | None = None,
    ) -> dict[str, Any]:
        try:
            length = parse_duration(duration)
        except DurationError as exc:
            raise ToolError(f"duration: {exc}") from None

        def file(session: Session, who: Principal) -> dict[str, Any]:
            now = st.now()
            req = service.create(session, policy=who.policy, caller=who.caller,
                                 resource=resource, role=role, duration=length,
                                 reason=reason, now=now)
            return render(session, [req], now)[0].model_dump(mode="json")

        assert ctx is not None
        return await run(ctx, file)

    @server.tool(description="A request's status, its steps and who may decide them, and "
                             "its grant once approved.")
    async def request_status(request_id: int, ctx: Context | None = None) -> dict[str, Any]:
        def show(session: Session, who: Principal) -> dict[str, Any]:
            if not 0 < request_id < 2**31:
                raise Invalid(f"request {request_id} does not exist", field="request_id")
            now = st.now()
            req = service.get_request(session, policy=who.policy, user=who.user,
                                      request_id=request_id)
            return render(session, [req], now)[0].model_dump(mode="json")

        assert ctx is not None
        return await run(ctx, show)

    @server.tool(description="The access you hold now (active grants, and those still being "
                             "set up), newest first.")
    async def my_grants(ctx: Context) -> list[dict[str, Any]]:
        def mine(session: Session, who: Principal) -> list[dict[str, Any]]:
            now = st.now()
            rows = session.execute(
                select(Grant).where(Grant.user == who.user, Grant.status.in_(
                    [GrantStatus.ACTIVE, GrantStatus.PROVISIONING]), Grant.ends_at > now)
                .order_by(Grant.id.desc()).limit(500)).scalars()
            return [GrantOut.of(g, now).model_dump(mode="json") for g in rows]

        return await run(ctx, mine)

    @server.tool(description="Give up the access a request granted you, before it ends.")
    async def relinquish(request_id: int, comment: str = "",
                         ctx: Context | None = None) -> dict[str, Any]:
        def give_up(session: Session, who: Principal) -> dict[str, Any]:
            now = st.now()
            req = service.relinquish(session, policy=who.policy, caller=who.caller,
                                     request_id=request_id, comment=comment, now=now)
            return render(session, [req], now)[0].model_dump(mode="json")

        assert ctx is not None
        return await run(ctx, give_up, command=True)

    return server


class Endpoint:
    """`/mcp`: streamable HTTP for the tools, refusing a call without a valid bearer token
    before the MCP layer sees it (401, problem+json), so an unauthenticated client learns
    nothing, not even the tools' names. The session manager runs in the app's lifespan."""

    def __init__(self, st: AppState) -> None:
        self.st = st
        self.server = build(st, http_caller(st))
        # Stateless: any replica behind the load balancer answers any call (nothing of a
        # session is kept between calls); JSON answers, no server-sent event streams. The
        # bearer token is what proves the caller, so DNS rebinding gains an attacker
        # nothing: the Host header is not checked.
        self.manager = StreamableHTTPSessionManager(
            app=self.server._lowlevel_server, json_response=True, stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        try:
            token = bearer_token(headers.get("authorization", ""))
            await anyio.to_thread.run_sync(self._check, token)
        except Unauthorized as exc:
            await problems.problem(401, exc.detail, slug=exc.slug, title=exc.title)(
                scope, receive, send)
            return
        await self.manager.handle_request(scope, receive, send)

    def _check(self, token: str) -> None:
        with self.st.sessions() as session:
            authenticate(session, self.st, token, via=Via.MCP)
