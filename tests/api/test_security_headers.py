"""Security headers on every response, and /docs served without a CDN.

Every response (API JSON, problems, pages, redirects, static files, the docs page and its
assets) carries a Content-Security-Policy, X-Frame-Options, X-Content-Type-Options and
Referrer-Policy. That the pages really work under the policy is checked in a real browser
(tests/web/test_browser.py).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest

from tests.conftest import Env

HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def csp(r: Any) -> dict[str, list[str]]:
    """The response's Content-Security-Policy as {directive: [values]}."""
    value = r.headers.get("content-security-policy")
    assert value, f"no Content-Security-Policy on {r.request.method} {r.request.url}"
    out: dict[str, list[str]] = {}
    for part in value.split(";"):
        if part.strip():
            name, *values = part.split()
            out[name] = values
    return out


def assert_secured(r: Any) -> dict[str, list[str]]:
    for name, value in HEADERS.items():
        assert r.headers.get(name) == value, (name, r.request.url, r.status_code)
    policy = csp(r)
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy.get("object-src", policy["default-src"]) == ["'none'"]
    assert "'unsafe-eval'" not in str(policy)
    return policy


def test_every_kind_of_response_carries_the_headers(env: Env) -> None:
    token = {"Authorization": f"Bearer {env.tokens['alice']}"}
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/healthz", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/api/v1/requests", {"headers": token}),
        ("GET", "/api/v1/requests", {}),  # 401 problem
        ("GET", "/api/v1/requests/99", {"headers": token}),  # 404 problem
        ("POST", "/api/v1/requests", {"headers": token, "content": b"x" * 70_000}),  # 413
        ("GET", "/login", {}),  # a page
        ("GET", "/", {"follow_redirects": False}),  # 303 to the login page
        ("GET", "/no-such-page", {"headers": {"Accept": "text/html"}}),  # the HTML 404 page
        ("GET", "/static/app.js", {}),
        ("GET", "/static/app.css", {}),
        ("GET", "/docs", {}),
        ("GET", "/metrics", {}),
    ]
    for method, path, kw in calls:
        r = env.client.request(method, path, **kw)
        assert r.status_code < 500, (path, r.status_code)
        policy = assert_secured(r)
        if path != "/docs":  # the one page with an inline script (by hash), below
            assert policy["script-src"] == ["'self'"], path
            assert policy["style-src"] == ["'self'"], path


def test_an_unexpected_error_carries_the_headers_too(env: Env) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    env.client.app.add_api_route("/test-boom", boom)  # type: ignore[attr-defined]
    r = env.client.get("/test-boom")
    assert r.status_code == 500
    assert_secured(r)


def test_docs_load_nothing_from_another_host(env: Env) -> None:
    r = env.client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert re.findall(r"https?://|//[a-z]", html) == [], "an external reference in /docs"
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(ref.endswith(".js") for ref in refs) and any(ref.endswith(".css") for ref in refs)
    for ref in refs:
        assert ref.startswith("/docs/assets/"), ref
        asset = env.client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 1000, ref
        assert_secured(asset)
        kind = asset.headers["content-type"]
        assert ("javascript" in kind if ref.endswith(".js") else
                "text/css" in kind if ref.endswith(".css") else "image/" in kind), (ref, kind)
    # the page's one inline script (Swagger UI's start) is allowed by its hash, nothing else
    policy = assert_secured(r)
    inline = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert policy["script-src"] == ["'self'", f"'sha256-{digest}'"]
    assert "validatorUrl" in inline[0]  # no badge image from validator.swagger.io
    # the schema the page loads is there
    assert env.client.get("/openapi.json").json()["info"]["title"] == "Accord"


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect"])
def test_pages_that_would_need_a_cdn_are_gone(env: Env, path: str) -> None:
    assert env.client.get(path).status_code == 404


def test_an_html_report_is_a_document_without_scripts(env: Env) -> None:
    r = env.get("dave", "/api/v1/reports/access",
                params={"format": "html", "from": "2020-01-01", "to": "2030-01-01"})
    assert r.status_code == 200, r.text
    policy = assert_secured(r)
    # its own <style> works; no script, no fetch, no form can run from it
    assert policy["default-src"] == ["'none'"]
    assert policy["style-src"] == ["'unsafe-inline'"]
    assert "script-src" not in policy
