"""A small HTTP client for the Accord API, used by the CLI commands.

It reads `ACCORD_URL` and `ACCORD_TOKEN` through `Settings.from_env()`, sends the
token as a bearer token (the server records what it does with `via: api`), and turns
every failure into a `ClientError` with a message meant for the user. The token never
appears in a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Protocol

import httpx

from accord import __version__
from accord.settings import Secret, Settings, redact_url

API_PREFIX = "/api/v1"
TIMEOUT = 30.0
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: what a header value can carry


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class ClientError(Exception):
    """A failed call: `status` is the HTTP status, or None when no response came back."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _bearer(token: Secret | None) -> str:
    """The Authorization header value; raise ClientError without ever echoing the token."""
    if token is None:
        raise ClientError(
            None,
            "ACCORD_TOKEN is not set; issue a token with `accord token issue USER` "
            "and export ACCORD_TOKEN=<token>",
        )
    value = token.get().strip()
    if not _TOKEN_CHARS.match(value):
        raise ClientError(
            None, "ACCORD_TOKEN contains spaces or non-ASCII characters; it cannot be a token"
        )
    return f"Bearer {value}"


def _error_detail(response: httpx.Response) -> str:
    """`detail` of a problem+json body, or a description of an unexpected response."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"]:
        return str(body["detail"])
    if isinstance(body, dict) and isinstance(body.get("title"), str):
        return f"HTTP {response.status_code}: {body['title']}"
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _connect_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower():
        return "connection refused"
    return str(exc) or type(exc).__name__


class AccordClient:
    """Calls the Accord HTTP API. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.url = self.settings.url
        try:
            self._http = httpx.Client(
                base_url=self.url + API_PREFIX,
                transport=transport,
                timeout=timeout,
                # Who is calling is for logs only; the ledger says `via: api` for every
                # bearer token, whatever program sent it.
                headers={"User-Agent": f"accord-cli/{__version__}",
                         "Accept": "application/json"},
                follow_redirects=False,
            )
        except httpx.InvalidURL:
            where = redact_url(self.url)
            raise ClientError(None, f"ACCORD_URL is not a valid URL: {where}") from None

    def __enter__(self) -> AccordClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | None] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one call to `/api/v1{path}`; return the decoded JSON body."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        headers = {"Authorization": _bearer(self.settings.token)}
        where = redact_url(self.url)
        try:
            response = self._http.request(method, path, params=query, json=json, headers=headers)
        except httpx.UnsupportedProtocol:
            raise ClientError(
                None, f"ACCORD_URL must start with http:// or https:// (it is {where})"
            ) from None
        except httpx.TransportError as exc:
            raise ClientError(
                None,
                f"cannot reach Accord at {where}: {_connect_reason(exc)}; "
                "is `accord serve` running? set ACCORD_URL",
            ) from None
        except httpx.InvalidURL:
            raise ClientError(None, f"ACCORD_URL is not a valid URL: {where}") from None
        return self._decode(response, where)

    @staticmethod
    def _decode(response: httpx.Response, where: str) -> Any:
        if not response.is_success:
            raise ClientError(response.status_code, _error_detail(response))
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                response.status_code,
                f"unexpected non-JSON response from {where}; does ACCORD_URL point at Accord?",
            ) from None

    def download(self, path: str, out: Writable, params: Mapping[str, str] | None = None,
                 *, headers_out: dict[str, str] | None = None) -> int:
        """Stream a binary response into `out`; returns the bytes written (and the response's
        headers into `headers_out`, when given)."""
        headers = {"Authorization": _bearer(self.settings.token), "Accept": "*/*"}
        where = redact_url(self.url)
        written = 0
        try:
            with self._http.stream("GET", path, params=params, headers=headers) as response:
                if not response.is_success:
                    response.read()
                    raise ClientError(response.status_code, _error_detail(response))
                if headers_out is not None:
                    headers_out.update(response.headers)
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise ClientError(None, f"cannot reach Accord at {where}: {_connect_reason(exc)}") \
                from None
        return written

    def text(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """A text/plain response (checkpoints, keys)."""
        headers = {"Authorization": _bearer(self.settings.token), "Accept": "text/plain"}
        where = redact_url(self.url)
        try:
            response = self._http.get(path, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise ClientError(None, f"cannot reach Accord at {where}: {_connect_reason(exc)}") \
                from None
        if not response.is_success:
            raise ClientError(response.status_code, _error_detail(response))
        return response.text

    def get(self, path: str, params: Mapping[str, str | int | None] | None = None) -> Any:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, json=body)

    def pages(
        self, path: str, params: Mapping[str, str | int | None] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every page of a paginated list, following `next_cursor` until it is null."""
        query: dict[str, str | int | None] = dict(params or {})
        while True:
            page = self.get(path, query)
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise ClientError(None, f"unexpected response to GET {API_PREFIX}{path}")
            yield page
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = str(cursor)
