"""The MCP gateway: Accord in front of an MCP server (a resource of kind `mcp`).

The upstream is a streamable HTTP URL or a command the gateway starts (stdio). A client
speaks MCP (streamable HTTP, stateless, JSON answers) to
`/gateway/mcp/<resource>` with a connection token (`POST /api/v1/mcp/connect`) as its
bearer. Every HTTP call is checked before the MCP layer reads it: the token, and that the
grant it stands for is active (`live.Sessions`: the first call with a token checks it in
the database and opens a session; later ones check that session in memory, and the grant
watch closes it, stopping its running calls, when the grant ends). A body over the
resource's `max_body` is answered with a JSON-RPC error, unread.

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

A call's event goes through the gateway's spool and shipper (`live`), in the spool before
the answer goes back. Everything but `tools/call` is served by the SDK's server; a
`tools/call` (the one method an agent makes by the thousand) is read and answered here,
and, when the upstream speaks the per-request protocol over HTTP, sent on as it came
(`upstream.HttpUpstream`): the SDK's models both ways cost more CPU than everything else
a call does.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
import orjson
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from sqlalchemy import select
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from accord.asgi import read_body
from accord.db import transaction
from accord.errors import AccordError
from accord.gateway import tokens
from accord.gateway.mcp.live import TOOL_CALL, VIOLATION, Granted, Live, Sessions
from accord.gateway.mcp.upstream import HttpUpstream, UpstreamError, sse_message
from accord.gateway.models import GatewayToken
from accord.grants.models import Grant, GrantStatus
from accord.grants.service import effective_status
from accord.identity.caller import Caller
from accord.ledger.events import Via
from accord.requests import service as requests
from accord.requests.models import AccessRequest, Status
from accord.spec.resources import McpTarget
from accord.state import AppState

log = logging.getLogger("accord.gateway")
PREFIX = "/gateway/mcp/"
PATH = PREFIX + "{resource}"
REFUSED = -32001  # JSON-RPC error code of a call the grant does not allow (server range)
UPSTREAM_FAILED = -32002  # the upstream could not be reached or failed the call
HELD = -32003  # a call waiting for its approval past `approval_wait`
INVALID_REQUEST = -32600
POLL = 0.2  # how often a held call looks at its request
_VIA = str(Via.GATEWAY)
# What the gateway says of itself in a request it sends on (the per-request protocol's
# `_meta`, as the SDK's client sends it).
_CLIENT_META = {types.PROTOCOL_VERSION_META_KEY: MODERN_PROTOCOL_VERSIONS[-1],
                types.CLIENT_INFO_META_KEY: {"name": "accord-gateway", "version": "1"},
                types.CLIENT_CAPABILITIES_META_KEY: {}}
JSON = [(b"content-type", b"application/json")]
# Calls answered as the SDK's server would, straight from the gateway's bytes.
Answer = tuple[Any, bytes, bool]  # (what the caller returns, the result's JSON, is_error)


def _key(target: McpTarget) -> tuple[Any, ...]:
    """Which upstream connection serves `target` (its URL or command, headers and timeout)."""
    return (target.url, tuple(target.command or ()), tuple(target.env),
            tuple(sorted(target.headers_env.items())), target.timeout)


def _headers(target: McpTarget) -> dict[str, str]:
    return {k: os.environ.get(env, "") for k, env in target.headers_env.items()}


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


def _header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable()




async def _send_json(send: Send, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON, (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _error(rid: Any, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "error": error})


def install(app: Any, gateway: McpGateway) -> None:
    """Serve `/gateway/mcp/<resource>` before the app's middleware and routing: an MCP
    client's call needs none of the API's (problem pages, body limit, database intent),
    and they cost more than the call itself (outside them: request metrics and ids, and
    the security headers)."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: _First(build(), gateway)


class _First:
    def __init__(self, app: ASGIApp, gateway: McpGateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(PREFIX) and "/" not in path[len(PREFIX):] and path != PREFIX:
            scope["path_params"] = {"resource": path[len(PREFIX):]}
            await self.gateway(scope, receive, send)
            return
        await self.app(scope, receive, send)


class McpGateway:
    """`/gateway/mcp/<resource>`: an ASGI app. Its session manager, upstream connections
    and live sessions run in the app's lifespan (`running`)."""

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
        self._http: dict[tuple[Any, ...], HttpUpstream] = {}  # tools/call sent as it came
        self._ids = 0  # JSON-RPC ids of the requests sent on
        self._tg: anyio.abc.TaskGroup | None = None
        self.live = Sessions(st)
        self.manager = StreamableHTTPSessionManager(
            app=self.server, json_response=True, stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.manager.run(), self.live.running(), \
                anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield
            finally:
                self._tg = None
                tg.cancel_scope.cancel()  # the upstream connections' tasks
                for http in self._http.values():
                    http.close()

    # ------------------------------------------------------------ the door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        resource = str(scope.get("path_params", {}).get("resource", ""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        token = token.strip()
        client = scope.get("client") or ("?", 0)
        try:
            if scheme.lower() != "bearer" or not token:
                raise tokens.Refusal("28000", "send the connection token as "
                                              "'Authorization: Bearer acg_...' (POST "
                                              "/api/v1/mcp/connect gives one)")
            token_hash = tokens.hash_token(token)
            live = self.live.find(token_hash, resource)
            if live is None:
                granted, until = await anyio.to_thread.run_sync(
                    self._admit, resource, token, f"{client[0]}")
                live = await self.live.open(token_hash, granted, until, f"{client[0]}")
        except tokens.Refusal as refusal:
            status = 403 if refusal.authenticated else 401
            problem = {"type": f"https://accord.dev/problems/{status}",
                       "title": "Forbidden" if status == 403 else "Unauthorized",
                       "status": status, "detail": refusal.message}
            await JSONResponse(problem, status_code=status, media_type="application/problem+json",
                               headers={"WWW-Authenticate": 'Bearer realm="accord-gateway"'}
                               )(scope, receive, send)
            return
        if scope.get("method") == "POST":
            spec = self.st.policies.current.resources.get(resource)
            limit = spec.mcp.max_body if spec is not None and spec.mcp is not None \
                else 64 << 10
            body = await read_body(receive, limit)
            if body is None:
                await _send_json(send, _error(None, INVALID_REQUEST, f"the message is over "
                                              f"the {limit // 1024} KiB limit"), 413)
                return
            if await self._fast(live, headers, body, send):
                return
            receive = _replay(body, receive)
        scope.setdefault("state", {})["accord_granted"] = live
        await self.manager.handle_request(scope, receive, send)

    def _admit(self, resource: str, token: str, client: str) -> tuple[Granted, Any]:
        """Check a token the process has no live session for (a database thread)."""
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
                assert row is not None
                return (Granted(grant.id, grant.user, grant.resource, grant.role),
                        min(row.expires_at, grant.ends_at))
        except tokens.Refusal as refusal:
            self.live.refused(user=user, resource=resource, refusal=refusal, client=client)
            raise

    # ------------------------------------------------------------ tools/call, read here

    async def _fast(self, live: Live, headers: dict[str, str], body: bytes,
                    send: Send) -> bool:
        """Answer a `tools/call` here; False for anything else (the SDK's server answers
        it, errors included)."""
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if type(msg) is not dict or msg.get("method") != "tools/call" \
                or msg.get("jsonrpc") != "2.0":
            return False
        rid = msg.get("id")
        params = msg.get("params")
        if type(rid) not in (int, str) or type(params) is not dict:
            return False
        name = params.get("name")
        arguments = params.get("arguments")
        if type(name) is not str or not (arguments is None or type(arguments) is dict) \
                or headers.get("mcp-method", "tools/call") != "tools/call" \
                or headers.get("mcp-name", name) != name \
                or not headers.get("content-type", "").startswith("application/json") \
                or "application/json" not in headers.get("accept", "application/json"):
            return False  # the SDK's server says what is wrong
        forwarded = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()
                             if k.startswith("mcp-param-"))

        async def call(target: McpTarget) -> Answer:
            return await self._send_tool_call(target, name, arguments or {}, params,
                                              forwarded, raw=True)

        try:
            result = await self._govern(live, "tools", "tools/call", name, arguments or {},
                                        call)
            out = b'{"jsonrpc":"2.0","id":%b,"result":%b}' % (orjson.dumps(rid), result)
        except MCPError as exc:
            out = _error(rid, exc.error.code, exc.error.message, exc.error.data)
        await _send_json(send, out)
        return True

    async def _send_tool_call(self, target: McpTarget, name: str, arguments: dict[str, Any],
                              params: dict[str, Any], headers: bytes, *, raw: bool) -> Answer:
        """Call a tool upstream: sent as it came when the upstream speaks the per-request
        protocol over HTTP, else through the SDK's client. `raw`: answer the result's JSON
        (else the SDK's model of it)."""
        async with self._upstream(target) as upstream:
            if target.url is None or upstream.protocol_version not in MODERN_PROTOCOL_VERSIONS \
                    or not _header_safe(name):
                result = await upstream.call_tool(name, arguments)
                body = result.model_dump_json(by_alias=True, exclude_none=True).encode()
                return (body if raw else result), body, bool(result.is_error)
            self._ids += 1
            rid = self._ids
            request = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                                    "params": {**params, "arguments": arguments,
                                               "_meta": _CLIENT_META}})
            head = (f"mcp-protocol-version: {upstream.protocol_version}\r\n"
                    f"mcp-method: tools/call\r\nmcp-name: {name}\r\n").encode() + headers
            status, kind, answer = await self._http_upstream(target).post(request, head)
            if kind == b"text/event-stream":
                answer = sse_message(answer) or b""
            try:
                reply = orjson.loads(answer)
            except orjson.JSONDecodeError:
                raise UpstreamError(f"HTTP {status}, not a JSON-RPC answer") from None
            if type(reply) is not dict or reply.get("id") != rid:
                raise UpstreamError(f"HTTP {status}, not the answer to its request")
            if "error" in reply:
                error = reply["error"] if type(reply["error"]) is dict else {}
                raise MCPError(int(error.get("code", UPSTREAM_FAILED)),
                               str(error.get("message", "error")), error.get("data"))
            value = reply.get("result")
            if type(value) is not dict:
                raise UpstreamError("an answer without a result")
            body = orjson.dumps(value)
            is_error = value.get("isError") is True
            if raw:
                return body, body, is_error
            return types.CallToolResult.model_validate(value), body, is_error

    def _http_upstream(self, target: McpTarget) -> HttpUpstream:
        key = _key(target)
        http = self._http.get(key)
        if http is None:
            assert target.url is not None
            http = self._http[key] = HttpUpstream(target.url, _headers(target),
                                                  target.timeout.total_seconds())
        return http

    # ------------------------------------------------------------ governing a call

    async def _govern(self, live: Live, kind: str, method: str, name: str,
                      arguments: dict[str, Any],
                      call: Callable[[McpTarget], Awaitable[Answer]]) -> Any:
        """A tool call, resource read or prompt get: refused (a violation) unless a pattern
        of the role matches, held for approval when its tool says so, else passed on and
        recorded; what `call` answered, or an MCPError."""
        granted = live.granted
        target = self._target(granted)
        facts = {"grant_id": granted.grant_id, "method": method, "tool": name,
                 **arguments_record(arguments, redact=self.live.spec.redact_parameters)}
        if not allowed(target, granted.role, name, kind):
            why = (f"{kind[:-1]} {name!r} is not allowed for role {granted.role} on "
                   f"{granted.resource}")
            self.live.fact(live, VIOLATION, {**facts, "reason": why}, self.st.now())
            raise MCPError(REFUSED, f"Accord gateway: {why}")
        if kind == "tools" and target.held(name):  # file (or find) its request, and wait
            facts["request_id"] = await self._approved(granted, target, name, arguments,
                                                       facts)
        t0 = time.perf_counter_ns()
        error: str | None = None
        stopped: MCPError | None = None  # the grant ended while the call ran (or before)
        answer: Answer | None = None
        try:
            # A call that was let in before its session ended (the watch closed it while
            # the call was read or waited for approval) does not go upstream.
            cut = live.ended is not None
            if not cut:
                with self.live.call(live) as scope:
                    answer = await call(target)
                # Also when the answer was in before the close's cancellation reached the
                # call: the session's close (and its count of calls) is spooled already, so
                # the answer is withheld and the call recorded as stopped, as one cut off.
                cut = scope.cancelled_caught or live.ended is not None
            if cut:
                ended = (live.ended or "ended").removeprefix("grant ")
                stopped = MCPError(REFUSED, f"Accord gateway: grant {granted.grant_id} is "
                                            f"{ended}; the call was stopped")
                error = stopped.error.message
        except MCPError as exc:
            error = exc.error.message
        except (UpstreamError, TimeoutError, OSError) as exc:
            self._clients.pop(_key(target), None)
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        body = answer[1] if answer is not None else b""
        self.live.fact(live, TOOL_CALL, {
            **facts, "result_bytes": len(body),
            "result_sha256": hashlib.sha256(body).hexdigest() if answer is not None else None,
            "is_error": answer[2] if answer is not None else True,
            "error": error, "duration_us": (time.perf_counter_ns() - t0) // 1000},
            self.st.now())
        if stopped is not None:
            raise stopped
        if answer is None:
            raise MCPError(UPSTREAM_FAILED, f"the upstream MCP server failed: {error}")
        return answer[0]

    def _target(self, granted: Granted) -> McpTarget:
        spec = self.st.policies.current.resources.get(granted.resource)
        if spec is None or spec.mcp is None:
            raise MCPError(REFUSED, f"resource {granted.resource} is no longer an MCP "
                                    "resource in accord.yaml")
        return spec.mcp

    # ------------------------------------------------------------ MCP (the SDK's server)

    def _context(self, ctx: ServerRequestContext[Any]) -> tuple[Live, McpTarget]:
        live: Live = ctx.request.state.accord_granted  # type: ignore[union-attr]
        return live, self._target(live.granted)

    @contextlib.asynccontextmanager
    async def _upstream(self, target: McpTarget) -> AsyncIterator[Client]:
        """The upstream's shared client; a call that fails in transport drops it (the next
        call connects again)."""
        try:
            client = await self._client(target)
            yield client
        except (MCPError, UpstreamError):
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
        timeout = target.timeout.total_seconds()
        key = _key(target)
        started = False
        try:
            async with httpx2.AsyncClient(headers=_headers(target), timeout=timeout) as http, \
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
        live, target = self._context(ctx)
        async with self._upstream(target) as upstream:
            listed = await upstream.list_tools()
        return types.ListToolsResult(
            tools=[t for t in listed.tools if allowed(target, live.granted.role, t.name)])

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        """A `tools/call` the gateway did not read itself (`_fast`)."""
        live, _ = self._context(ctx)
        arguments = dict(params.arguments or {})

        async def call(target: McpTarget) -> Answer:
            return await self._send_tool_call(target, params.name, arguments, {
                "name": params.name}, b"", raw=False)

        out: types.CallToolResult = await self._govern(live, "tools", "tools/call",
                                                       params.name, arguments, call)
        return out

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
        live, target = self._context(ctx)
        async with self._upstream(target) as upstream:
            listed = await upstream.list_resources()
        return types.ListResourcesResult(resources=[
            r for r in listed.resources
            if allowed(target, live.granted.role, str(r.uri), "resources")])

    async def _list_prompts(self, ctx: ServerRequestContext[Any],
                            params: types.PaginatedRequestParams | None
                            ) -> types.ListPromptsResult:
        live, target = self._context(ctx)
        async with self._upstream(target) as upstream:
            listed = await upstream.list_prompts()
        return types.ListPromptsResult(prompts=[
            p for p in listed.prompts if allowed(target, live.granted.role, p.name, "prompts")])

    async def _read_resource(self, ctx: ServerRequestContext[Any],
                             params: types.ReadResourceRequestParams
                             ) -> types.ReadResourceResult:
        uri = str(params.uri)

        async def read(target: McpTarget) -> Answer:
            async with self._upstream(target) as upstream:
                return _answer(await upstream.read_resource(uri))

        live, _ = self._context(ctx)
        out: types.ReadResourceResult = await self._govern(
            live, "resources", "resources/read", uri, {}, read)
        return out

    async def _get_prompt(self, ctx: ServerRequestContext[Any],
                          params: types.GetPromptRequestParams) -> types.GetPromptResult:
        arguments = dict(params.arguments or {})

        async def get(target: McpTarget) -> Answer:
            async with self._upstream(target) as upstream:
                return _answer(await upstream.get_prompt(params.name, arguments))

        live, _ = self._context(ctx)
        out: types.GetPromptResult = await self._govern(
            live, "prompts", "prompts/get", params.name, arguments, get)
        return out


def _answer(result: Any) -> Answer:
    """An SDK model's answer: itself, its JSON (what the agent gets), and no error."""
    return result, result.model_dump_json(by_alias=True, exclude_none=True).encode(), False


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` with the body already read given again first."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
