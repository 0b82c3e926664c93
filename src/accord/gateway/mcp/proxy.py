"""The MCP gateway: Accord in front of an MCP server (a resource of kind `mcp`).

The upstream is a streamable HTTP URL or a command the gateway starts (stdio). A client
speaks MCP (streamable HTTP, stateless, JSON answers) to
`/gateway/mcp/<resource>` with a connection token (`POST /api/v1/mcp/connect`) as its
bearer. Every HTTP call is checked on its own, before the MCP layer reads it: the token,
and that the grant it stands for is active now (`gateway.tokens.authenticate`, as the
database gateway checks a login). So a grant that expires or is revoked ends the agent's
access at its next call, without a session to find and kill.

What passes:
* `tools/list`: the upstream's tools that a pattern of the grant's role matches; the rest
  are not shown.
* `tools/call`: a tool the role matches is called upstream and recorded as a
  `gateway.tool_call` event bound to the grant (tool, arguments or, with
  `redact_parameters`, only their names and a sha256 of them, the result's size and sha256,
  whether it failed, the duration); any other is refused with a JSON-RPC error and a
  `gateway.violation` event, and never reaches the upstream.
* A tool marked `approval: each_call` is held: its exact call (tool, arguments' sha256)
  becomes a request of kind `tool_call`, routed through the workflows like any request,
  and runs once approved (`request.executed` claims it under a row lock, so it runs once
  however often it is asked for); denied, it is refused; still pending after
  `approval_wait`, the agent gets an error naming the request, and the same call made
  again waits on the same request.
* Resources and prompts alike: `resources/list` and `prompts/list` show what a pattern of
  the role's `resources` (URIs) and `prompts` (names) matches; `resources/read` and
  `prompts/get` of anything else is refused with a `gateway.violation`; what passes is a
  `gateway.tool_call` (its `method` says which).

Each tool call's event is written in a transaction of its own before the answer goes back
(tool calls are few and slow next to SQL statements: a synchronous write costs little, and
nothing waits in memory to be lost).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from sqlalchemy import select
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from accord.db import transaction
from accord.errors import AccordError
from accord.gateway import tokens
from accord.gateway.models import GatewayToken
from accord.grants.models import Grant, GrantStatus
from accord.grants.service import effective_status
from accord.identity.caller import Caller
from accord.ledger import service as ledger
from accord.ledger.events import EventType, Via
from accord.requests import service as requests
from accord.requests.models import AccessRequest, Status
from accord.spec.resources import McpTarget, ResourceSpec
from accord.state import AppState

log = logging.getLogger("accord.gateway")
PATH = "/gateway/mcp/{resource}"
REFUSED = -32001  # JSON-RPC error code of a call the grant does not allow (server range)
UPSTREAM_FAILED = -32002  # the upstream could not be reached or failed the call
HELD = -32003  # a call waiting for its approval past `approval_wait`
POLL = 0.2  # how often a held call looks at its request
WATCH = 0.5  # how often a running call's grant is looked at
_VIA = str(Via.GATEWAY)


@dataclass(frozen=True)
class Granted:
    """The grant an HTTP call was let in on."""

    grant_id: int
    user: str
    resource: str
    role: str


def _key(target: McpTarget) -> tuple[Any, ...]:
    """Which upstream connection serves `target` (its URL or command, headers and timeout)."""
    return (target.url, tuple(target.command or ()), tuple(target.env),
            tuple(sorted(target.headers_env.items())), target.timeout)


def _transport(target: McpTarget, http: httpx2.AsyncClient) -> Any:
    """How to reach the upstream: its streamable HTTP URL, or the command's stdio."""
    if target.command is not None:
        return StdioServerParameters(
            command=target.command[0], args=list(target.command[1:]),
            env={k: os.environ[k] for k in target.env if k in os.environ})
    assert target.url is not None
    return streamable_http_client(target.url, http_client=http)


def allowed(target: McpTarget, role: str, tool: str, kind: str = "tools") -> bool:
    """Does a pattern of `role` match `tool` (`kind` resources: a URI; prompts: a name)?"""
    patterns = {"tools": target.roles, "resources": target.resources,
                "prompts": target.prompts}[kind]
    return any(fnmatch.fnmatchcase(tool, p) for p in patterns.get(role, []))


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


def arguments_record(arguments: dict[str, Any], *, redact: bool) -> dict[str, Any]:
    """How a call's arguments go in the ledger: whole, or (redacted, as SQL parameters are)
    only their names; their sha256 either way (what an approval of this exact call binds)."""
    out: dict[str, Any] = {"arguments_sha256": hashlib.sha256(_canonical(arguments)).hexdigest()}
    if redact:
        out["argument_names"] = sorted(arguments)
    else:
        out["arguments"] = arguments
    return out


class McpGateway:
    """`/gateway/mcp/<resource>`: an ASGI app. Its session manager runs in the app's
    lifespan (`running`)."""

    def __init__(self, st: AppState) -> None:
        self.st = st
        self.server: Server[Any] = Server(
            "accord-gateway", on_list_tools=self._list_tools, on_call_tool=self._call_tool,
            on_list_resources=self._list_resources, on_read_resource=self._read_resource,
            on_list_prompts=self._list_prompts, on_get_prompt=self._get_prompt)
        # One connection to each upstream, shared by the calls (JSON-RPC ids keep them
        # apart), held open by a task of `running`'s: a new one costs a handshake (~70 ms).
        self._clients: dict[tuple[Any, ...], Client] = {}
        self._connecting: dict[tuple[Any, ...], anyio.Event] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.manager = StreamableHTTPSessionManager(
            app=self.server, json_response=True, stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run(), anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield
            finally:
                self._tg = None
                tg.cancel_scope.cancel()  # the upstream connections' tasks

    # ------------------------------------------------------------ the door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        resource = str(scope.get("path_params", {}).get("resource", ""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        client = scope.get("client") or ("?", 0)
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise tokens.Refusal("28000", "send the connection token as "
                                              "'Authorization: Bearer acg_...' (POST "
                                              "/api/v1/mcp/connect gives one)")
            granted = await anyio.to_thread.run_sync(
                self._admit, resource, token.strip(), f"{client[0]}")
        except tokens.Refusal as refusal:
            status = 403 if refusal.authenticated else 401
            body = {"type": f"https://accord.dev/problems/{status}",
                    "title": "Forbidden" if status == 403 else "Unauthorized",
                    "status": status, "detail": refusal.message}
            await JSONResponse(body, status_code=status, media_type="application/problem+json",
                               headers={"WWW-Authenticate": 'Bearer realm="accord-gateway"'}
                               )(scope, receive, send)
            return
        scope.setdefault("state", {})["accord_granted"] = granted
        await self.manager.handle_request(scope, receive, send)

    def _admit(self, resource: str, token: str, client: str) -> Granted:
        policy = self.st.policies.current
        now = self.st.now()
        user = "unknown"
        try:
            with self.st.sessions() as session:
                row = session.execute(select(GatewayToken).where(
                    GatewayToken.token_hash == tokens.hash_token(token))).scalar_one_or_none() \
                    if token.startswith(tokens.TOKEN_PREFIX) and len(token) < 200 else None
                user = row.user if row is not None else user
                grant = tokens.authenticate(session, policy=policy, user=user,
                                            resource=resource, token=token, now=now, mcp=True)
                return Granted(grant.id, grant.user, grant.resource, grant.role)
        except tokens.Refusal as refusal:
            with transaction(self.st.sessions) as session:
                tokens.record_refusal(session, policy=policy, user=user, resource=resource[:64],
                                      refusal=refusal, client=client, now=now)
            raise

    # ------------------------------------------------------------ MCP

    def _context(self, ctx: ServerRequestContext[Any]) -> tuple[Granted, ResourceSpec]:
        granted: Granted = ctx.request.state.accord_granted  # type: ignore[union-attr]
        spec = self.st.policies.current.resources.get(granted.resource)
        if spec is None or spec.mcp is None:
            raise MCPError(REFUSED, f"resource {granted.resource} is no longer an MCP "
                                    "resource in accord.yaml")
        return granted, spec

    @contextlib.asynccontextmanager
    async def _upstream(self, target: McpTarget) -> AsyncIterator[Client]:
        """The upstream's shared client; a call that fails in transport drops it (the next
        call connects again)."""
        try:
            client = await self._client(target)
            yield client
        except MCPError:
            raise
        except Exception as exc:  # whatever the transport raised: the agent gets an error
            self._clients.pop(_key(target), None)
            raise MCPError(UPSTREAM_FAILED, f"the upstream MCP server failed: "
                                            f"{type(exc).__name__}") from None

    async def _client(self, target: McpTarget) -> Client:
        key = _key(target)
        while (client := self._clients.get(key)) is None:
            pending = self._connecting.get(key)
            if pending is not None:  # another call is connecting: wait for it
                await pending.wait()
                if key not in self._clients:
                    raise ConnectionError("the upstream did not answer")
                continue
            if self._tg is None:
                raise RuntimeError("the MCP gateway is not running")
            self._connecting[key] = done = anyio.Event()
            try:
                await self._tg.start(self._hold, target)
            finally:
                del self._connecting[key]
                done.set()
        return client

    async def _hold(self, target: McpTarget, *,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        """Connect to the upstream and keep the connection until the gateway stops or a
        call drops it."""
        headers = {k: os.environ.get(env, "") for k, env in target.headers_env.items()}
        timeout = target.timeout.total_seconds()
        key = _key(target)
        started = False
        try:
            async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http, \
                    Client(_transport(target, http), read_timeout_seconds=timeout) as client:
                self._clients[key] = client
                started = True
                task_status.started()
                while self._clients.get(key) is client:
                    await anyio.sleep(1)
        except Exception:
            if not started:
                raise  # the call that asked for it fails
            # A connection that broke later takes nothing else down: the next call connects.
            log.warning("gateway: the connection to MCP upstream %s broke",
                        target.url or target.command, exc_info=True)
        finally:
            if started and self._clients.get(key) is not None \
                    and self._clients.get(key) is client:
                del self._clients[key]

    async def _list_tools(self, ctx: ServerRequestContext[Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        granted, spec = self._context(ctx)
        assert spec.mcp is not None
        async with self._upstream(spec.mcp) as upstream:
            listed = await upstream.list_tools()
        return types.ListToolsResult(
            tools=[t for t in listed.tools if allowed(spec.mcp, granted.role, t.name)])

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        granted, spec = self._context(ctx)
        target = spec.mcp
        assert target is not None
        arguments = dict(params.arguments or {})
        gw = self.st.policies.current.loaded.spec.gateway
        redact = gw.redact_parameters if gw is not None else True
        facts = {"grant_id": granted.grant_id, "method": "tools/call", "tool": params.name,
                 **arguments_record(arguments, redact=redact)}
        if not allowed(target, granted.role, params.name):
            why = (f"tool {params.name!r} is not allowed for role {granted.role} on "
                   f"{granted.resource}")
            await anyio.to_thread.run_sync(lambda: self._record(
                granted, EventType.GATEWAY_VIOLATION, {**facts, "reason": why}))
            raise MCPError(REFUSED, f"Accord gateway: {why}")
        if target.held(params.name):  # file (or find) its request, wait for the decision
            facts["request_id"] = await self._approved(granted, target, params.name,
                                                       arguments, facts)
        t0 = time.perf_counter_ns()
        error: str | None = None
        stopped: MCPError | None = None  # the grant ended while the call ran
        result: types.CallToolResult | None = None
        try:
            async with self._upstream(target) as upstream:
                result = await self._while_granted(
                    granted, lambda: upstream.call_tool(params.name, arguments))
        except MCPError as exc:
            error = exc.error.message
            stopped = exc if exc.error.code == REFUSED else None
        duration_us = (time.perf_counter_ns() - t0) // 1000
        body = result.model_dump_json(by_alias=True, exclude_none=True).encode() \
            if result is not None else b""
        await anyio.to_thread.run_sync(lambda: self._record(
            granted, EventType.GATEWAY_TOOL_CALL,
            {**facts, "result_bytes": len(body),
             "result_sha256": hashlib.sha256(body).hexdigest() if result is not None else None,
             "is_error": bool(result.is_error) if result is not None else True,
             "error": error, "duration_us": duration_us}))
        if stopped is not None:
            raise stopped
        if result is None:
            raise MCPError(UPSTREAM_FAILED, f"the upstream MCP server failed: {error}")
        return result

    async def _while_granted(self, granted: Granted, call: Any) -> Any:
        """Run an upstream call, stopping it when its grant ends (expiry, revocation)
        while it runs: looked at every WATCH seconds, so within 2 s."""
        result: Any = None
        ended: str | None = None

        async def run() -> None:
            nonlocal result
            result = await call()
            tg.cancel_scope.cancel()

        async def watch() -> None:
            nonlocal ended
            while True:
                await anyio.sleep(WATCH)
                status = await anyio.to_thread.run_sync(self._grant_status, granted.grant_id)
                if status != GrantStatus.ACTIVE:
                    ended = status
                    tg.cancel_scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            tg.start_soon(watch)
        if ended is not None:
            raise MCPError(REFUSED, f"Accord gateway: grant {granted.grant_id} is {ended}; "
                                    "the call was stopped")
        return result

    def _grant_status(self, grant_id: int) -> str:
        with self.st.sessions() as session:
            grant = session.get(Grant, grant_id)
            return effective_status(grant, self.st.now()) if grant is not None else "gone"

    # ------------------------------------------------------------ per-call approval

    async def _approved(self, granted: Granted, target: McpTarget, tool: str,
                        arguments: dict[str, Any], facts: dict[str, Any]) -> int:
        """Hold a call of an `each_call` tool until a request for exactly it is approved and
        claimed for this run; its id. Refused (a JSON-RPC error naming the request) when it
        is denied, or when it is still pending after `approval_wait` (the same call made
        again later waits on the same request)."""
        rid = await anyio.to_thread.run_sync(self._file, granted, target, tool, arguments,
                                             facts)
        deadline = time.monotonic() + target.approval_wait.total_seconds()
        while True:
            status, claimed = await anyio.to_thread.run_sync(
                self._claim, granted, rid, facts["arguments_sha256"])
            if claimed:
                return rid
            if status not in (Status.PENDING, Status.APPROVED):
                raise MCPError(REFUSED, f"Accord gateway: request {rid} to call {tool!r} was "
                                        f"{status}; the call was not made")
            if time.monotonic() >= deadline:
                raise MCPError(HELD, f"Accord gateway: calling {tool!r} needs approval: "
                                     f"request {rid} is waiting for it; make the same call "
                                     "again once it is approved", data={"request_id": rid})
            await anyio.sleep(POLL)

    def _file(self, granted: Granted, target: McpTarget, tool: str,
              arguments: dict[str, Any], facts: dict[str, Any]) -> int:
        policy = self.st.policies.current
        now = self.st.now()
        caller = Caller(granted.user, _VIA, policy.owner_of(granted.user))
        with transaction(self.st.sessions) as session:
            found = requests.find_tool_call(session, requester=granted.user,
                                            grant_id=granted.grant_id, tool=tool,
                                            sha256=facts["arguments_sha256"])
            if found is not None:
                return found.id
            details = {"tool": tool, "grant_id": granted.grant_id,
                       **{k: v for k, v in facts.items() if k not in ("grant_id", "tool")}}
            try:
                req = requests.create(
                    session, policy=policy, caller=caller, resource=granted.resource,
                    role=granted.role, duration=target.approval_wait,
                    reason=f"call {tool} through the MCP gateway (grant {granted.grant_id})",
                    now=now, tool_call=details)
            except AccordError as exc:
                raise MCPError(REFUSED, f"Accord gateway: calling {tool!r} needs approval, "
                                        f"but no request could be filed: {exc.detail}"
                               ) from None
            return req.id

    def _claim(self, granted: Granted, rid: int, sha256: str) -> tuple[str, bool]:
        policy = self.st.policies.current
        now = self.st.now()
        with transaction(self.st.sessions) as session:
            grant = session.get(Grant, granted.grant_id)
            held = effective_status(grant, now) if grant is not None else "gone"
            if held != GrantStatus.ACTIVE:  # the grant ended while the call waited
                raise MCPError(REFUSED, f"Accord gateway: grant {granted.grant_id} is {held}; "
                                        f"the call waiting on request {rid} was not made")
            req = session.get(AccessRequest, rid)
            status = requests.effective_status(req, None, now) if req is not None else "gone"
            if status != Status.APPROVED:
                return status, False
            claimed = requests.claim_tool_call(
                session, request_id=rid, sha256=sha256, now=now,
                actor=policy.actor(granted.user, _VIA))
            return (status, True) if claimed is not None else ("already run", False)

    # ------------------------------------------------------------ resources and prompts

    async def _list_resources(self, ctx: ServerRequestContext[Any],
                              params: types.PaginatedRequestParams | None
                              ) -> types.ListResourcesResult:
        granted, spec = self._context(ctx)
        assert spec.mcp is not None
        async with self._upstream(spec.mcp) as upstream:
            listed = await upstream.list_resources()
        return types.ListResourcesResult(resources=[
            r for r in listed.resources
            if allowed(spec.mcp, granted.role, str(r.uri), "resources")])

    async def _list_prompts(self, ctx: ServerRequestContext[Any],
                            params: types.PaginatedRequestParams | None
                            ) -> types.ListPromptsResult:
        granted, spec = self._context(ctx)
        assert spec.mcp is not None
        async with self._upstream(spec.mcp) as upstream:
            listed = await upstream.list_prompts()
        return types.ListPromptsResult(prompts=[
            p for p in listed.prompts if allowed(spec.mcp, granted.role, p.name, "prompts")])

    async def _read_resource(self, ctx: ServerRequestContext[Any],
                             params: types.ReadResourceRequestParams
                             ) -> types.ReadResourceResult:
        uri = str(params.uri)

        async def read(upstream: Client) -> Any:
            return await upstream.read_resource(uri)

        out: types.ReadResourceResult = await self._governed(
            ctx, "resources", "resources/read", uri, {}, read)
        return out

    async def _get_prompt(self, ctx: ServerRequestContext[Any],
                          params: types.GetPromptRequestParams) -> types.GetPromptResult:
        arguments = dict(params.arguments or {})

        async def get(upstream: Client) -> Any:
            return await upstream.get_prompt(params.name, arguments)

        out: types.GetPromptResult = await self._governed(
            ctx, "prompts", "prompts/get", params.name, arguments, get)
        return out

    async def _governed(self, ctx: ServerRequestContext[Any], kind: str, method: str,
                        name: str, arguments: dict[str, Any], call: Any) -> Any:
        """A resource read or prompt get, governed as a tool call: refused (a violation)
        unless a pattern of the role matches, else passed on and recorded."""
        granted, spec = self._context(ctx)
        target = spec.mcp
        assert target is not None
        gw = self.st.policies.current.loaded.spec.gateway
        facts = {"grant_id": granted.grant_id, "method": method, "tool": name,
                 **arguments_record(arguments, redact=gw.redact_parameters if gw else True)}
        if not allowed(target, granted.role, name, kind):
            why = (f"{kind[:-1]} {name!r} is not allowed for role {granted.role} on "
                   f"{granted.resource}")
            await anyio.to_thread.run_sync(lambda: self._record(
                granted, EventType.GATEWAY_VIOLATION, {**facts, "reason": why}))
            raise MCPError(REFUSED, f"Accord gateway: {why}")
        t0 = time.perf_counter_ns()
        error: str | None = None
        stopped: MCPError | None = None
        result: Any = None
        try:
            async with self._upstream(target) as upstream:
                result = await self._while_granted(granted, lambda: call(upstream))
        except MCPError as exc:
            error = exc.error.message
            stopped = exc if exc.error.code == REFUSED else None
        body = result.model_dump_json(by_alias=True, exclude_none=True).encode() \
            if result is not None else b""
        await anyio.to_thread.run_sync(lambda: self._record(
            granted, EventType.GATEWAY_TOOL_CALL,
            {**facts, "result_bytes": len(body),
             "result_sha256": hashlib.sha256(body).hexdigest() if result is not None else None,
             "is_error": result is None, "error": error,
             "duration_us": (time.perf_counter_ns() - t0) // 1000}))
        if stopped is not None:
            raise stopped
        if result is None:
            raise MCPError(UPSTREAM_FAILED, f"the upstream MCP server failed: {error}")
        return result

    def _record(self, granted: Granted, etype: EventType, data: dict[str, Any]) -> None:
        policy = self.st.policies.current
        with transaction(self.st.sessions) as session:
            ledger.record(session, type=etype, actor=policy.actor(granted.user, _VIA),
                          subject=f"grant:{granted.grant_id}",
                          resource={"name": granted.resource, "role": granted.role},
                          data=data, time=self.st.now())
