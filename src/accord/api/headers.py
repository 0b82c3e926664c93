"""Security headers on every response, and the interactive API docs without a CDN.

`SecurityHeaders` adds, to every HTTP response that does not set its own:
- `Content-Security-Policy: POLICY`: scripts, styles, images and fetches from this origin
  only (the pages have no inline script or style: `web/static/app.js` and `app.css`), no
  plugins, no `<base>`, forms post here only, and no framing by anyone;
- `X-Frame-Options: DENY` (framing, for browsers that predate frame-ancestors);
- `X-Content-Type-Options: nosniff` (a download is never run as a script or page);
- `Referrer-Policy: same-origin`: other sites learn nothing of our URLs. Not `no-referrer`:
  under it browsers send `Origin: null` on our own form posts, which the CSRF check
  (`web.auth.same_origin`) rightly refuses.

A response may carry its own policy: `/docs` allows its one inline script by hash, and
standalone HTML reports get `DOCUMENT_POLICY` (their inline `<style>`, no script at all).

`/docs` is Swagger UI from the `fastapi-offline` package's files, served at
`/docs/assets/`; its validator badge (an image from validator.swagger.io) is off. ReDoc
and Swagger's OAuth2 redirect page are not served: both would need more than this policy.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
          "form-action 'self'; frame-ancestors 'none'")
# A self-contained HTML document (a report): its own inline styles, nothing else.
DOCUMENT_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                   "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = (
    (b"content-security-policy", POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)
ASSETS = "/docs/assets"


class SecurityHeaders:
    """Pure ASGI (no BaseHTTPMiddleware), so streamed responses (/live) pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS:
                    headers.setdefault(name.decode(), value.decode())
            await send(message)

        await self.app(scope, receive, send_secured)


def secure_everything(app: FastAPI) -> None:
    """Add the headers outside Starlette's ServerErrorMiddleware too, so that the 500
    page of an unexpected error carries them like every other response."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeaders(build())  # type: ignore[method-assign]


def swagger_assets() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from installed files (build the app with docs_url=None)."""
    app.mount(ASSETS, StaticFiles(directory=swagger_assets()), name="docs-assets")
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.png",
        swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None})
    body = bytes(page.body)
    # The page starts Swagger UI with one inline script: allow exactly that script.
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in re.findall(rb"<script>(.*?)</script>", body, re.S))
    policy = POLICY.replace("script-src 'self'", f"script-src 'self' {hashes}")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(body, headers={"Content-Security-Policy": policy})
