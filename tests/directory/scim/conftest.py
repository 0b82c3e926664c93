"""An app with SCIM on (`identity: {scim: true}`), a SCIM token, and a client for /scim/v2."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from accord.db import transaction
from accord.directory import tokens
from accord.ledger.events import Actor
from tests.conftest import POLICY, Env, make_env

SCIM_POLICY = POLICY + "identity: {scim: true}\n"
U = "urn:ietf:params:scim:schemas:core:2.0:User"
E = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
G = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_JSON = "application/scim+json"


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(operations)}


@dataclass
class Scim:
    """Calls to /scim/v2 with the identity provider's token."""

    env: Env
    token: str
    client_id: int

    def call(self, method: str, path: str, *, token: str | None = None,
             **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}",
                   **kw.pop("headers", {})}
        if "json" in kw:
            headers.setdefault("Content-Type", SCIM_JSON)
        return self.env.client.request(method, "/scim/v2" + path, headers=headers, **kw)

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: dict[str, Any], **kw: Any) -> Any:
        return self.call("POST", path, json=body, **kw)

    def put(self, path: str, body: dict[str, Any], **kw: Any) -> Any:
        return self.call("PUT", path, json=body, **kw)

    def patch(self, path: str, *operations: dict[str, Any], **kw: Any) -> Any:
        return self.call("PATCH", path, json=patch(*operations), **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.call("DELETE", path, **kw)

    def user(self, user_name: str, **attrs: Any) -> dict[str, Any]:
        r = self.post("/Users", {"schemas": [U], "userName": user_name, **attrs})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def group(self, name: str, members: tuple[str, ...] | list[str] = (),
              **attrs: Any) -> dict[str, Any]:
        r = self.post("/Groups", {"schemas": [G], "displayName": name,
                                  "members": [{"value": m} for m in members], **attrs})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def find(self, endpoint: str, flt: str, **params: Any) -> dict[str, Any]:
        r = self.get(endpoint, params={"filter": flt, **params})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def events(self, prefix: str = "directory.") -> list[dict[str, Any]]:
        return [e for e in self.env.events() if e["type"].startswith(prefix)]


def issue_token(env: Env, name: str = "okta") -> tuple[int, str]:
    with transaction(env.st.sessions) as session:
        row, secret = tokens.issue(session, name=name, actor=Actor.system("cli"),
                                   now=env.clock())
        return row.id, secret


@pytest.fixture
def scim(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Scim]:
    env = make_env(sessions, tmp_path, policy_text=SCIM_POLICY)
    client_id, secret = issue_token(env)
    with env.client:
        yield Scim(env=env, token=secret, client_id=client_id)
