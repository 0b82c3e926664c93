"""What a page says after a form: the outcome or the refusal, carried across the redirect.

After a post the browser is always redirected (303) to a page it can reload, never left on
the post's URL. What that page should say (who must approve next, or why the server
refused) is only known to the post, so it travels in a short-lived cookie, encrypted and
authenticated with the server's key (nobody can make a page say something by crafting a
link or a cookie) and bound to the browser that posted: its session, or before sign-in
its login form's token. The next page shows it once and deletes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fastapi import Request, Response

from accord.provisioning.secrets import SecretBox

COOKIE = "accord_flash"
TTL = 60  # seconds: the redirect follows at once; a stale message is worse than none


@dataclass(frozen=True)
class Flash:
    text: str
    error: bool = False
    # What the person had typed in the form that was refused, to fill it in again.
    form: dict[str, str] = field(default_factory=dict)
    # The form it belongs to (e.g. "extend"), so only that form takes the values back.
    target: str = ""


def put(response: Response, request: Request, box: SecretBox, *, binding: str,
        flash: Flash) -> None:
    """Attach `flash` to a redirect, for the browser that `binding` names."""
    body = json.dumps({"s": binding, "t": flash.text[:2000], "e": flash.error,
                       "f": {k: v[:2000] for k, v in flash.form.items()},
                       "g": flash.target})
    response.set_cookie(COOKIE, box.seal(body).decode(), max_age=TTL, httponly=True,
                        secure=request.url.scheme == "https", samesite="lax", path="/")


def take(request: Request, box: SecretBox, *, binding: str | None) -> Flash | None:
    """The flash for this browser, if one came with the request (the caller deletes the
    cookie from its response)."""
    raw = request.cookies.get(COOKIE)
    if not raw or not binding:
        return None
    try:
        body = json.loads(box.open(raw.encode(), ttl=TTL))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(body, dict) or body.get("s") != binding:
        return None
    form = body.get("f")
    if not isinstance(form, dict):
        form = {}
    return Flash(text=str(body.get("t", "")), error=bool(body.get("e")),
                 form={str(k): str(v) for k, v in form.items()},
                 target=str(body.get("g", "")))
