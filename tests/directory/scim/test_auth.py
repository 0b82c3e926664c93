"""Who may push to /scim/v2: a live token from `accord scim token issue`, and only while
accord.yaml says `identity: {scim: true}`. SCIM and API tokens each open one door."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from accord.cli.main import app
from accord.db import make_engine, transaction
from accord.directory import tokens
from accord.identity.service import hash_token
from accord.ledger.events import Actor
from accord.ledger.models import LedgerEntry
from accord.people.models import ScimClient
from tests.conftest import POLICY, make_env
from tests.directory.scim.conftest import ERROR, SCIM_POLICY, Scim, U, issue_token


def refused(r: Any, status: int = 401) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/scim+json"
    body = r.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    detail: str = body["detail"]
    return detail


def test_a_call_needs_a_live_scim_token(scim: Scim) -> None:
    client = scim.env.client
    assert "missing bearer token" in refused(client.get("/scim/v2/Users"))
    assert "malformed" in refused(client.get("/scim/v2/Users",
                                             headers={"Authorization": "Basic b2t0YTpwdw=="}))
    assert "invalid token" in refused(scim.get("/Users", token="accscim_guessed"))
    # discovery too: nothing about the service is told to a stranger
    refused(client.get("/scim/v2/ServiceProviderConfig"))
    r = scim.post("/Users", {"schemas": [U], "userName": "x"}, token="nope")
    refused(r)
    assert scim.get("/Users", params={"filter": 'userName eq "x"'}).json()["totalResults"] == 0


def test_api_tokens_and_scim_tokens_open_one_door_each(scim: Scim) -> None:
    api_token = scim.env.tokens["frank"]  # an Accord admin's API token
    detail = refused(scim.get("/Users", token=api_token))
    assert "not an API token" in detail
    r = scim.env.client.get("/api/v1/me", headers={"Authorization": f"Bearer {scim.token}"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    assert scim.env.get("frank", "/api/v1/me").status_code == 200
    assert scim.get("/Users").status_code == 200


def test_a_revoked_token_is_refused_at_once(scim: Scim) -> None:
    assert scim.get("/Users").status_code == 200
    other_id, other = issue_token(scim.env, "entra")
    with transaction(scim.env.st.sessions) as session:
        tokens.revoke(session, client_id=scim.client_id, actor=Actor.system("cli"),
                      now=scim.env.clock())
    assert "revoked" in refused(scim.get("/Users"))
    assert scim.get("/Users", token=other).status_code == 200
    r = scim.post("/Users", {"schemas": [U], "userName": "pushed"}, token=other)
    assert r.status_code == 201
    created = scim.events()[-1]
    assert created["actor"] == {"kind": "scim", "id": "entra", "via": "scim"}

    issued = scim.events("scim.")
    assert [e["type"] for e in issued] == [
        "scim.token_issued", "scim.token_issued", "scim.token_revoked"]
    assert issued[2]["data"]["client_id"] == scim.client_id
    assert issued[1]["data"]["name"] == "entra"
    assert issued[1]["subject"] == f"scim_client:{other_id}"
    assert scim.token not in json.dumps(issued) and other not in json.dumps(issued)


def test_scim_is_off_unless_the_policy_turns_it_on(sessions: sessionmaker[Session],
                                                  tmp_path: Path) -> None:
    env = make_env(sessions, tmp_path, policy_text=POLICY)
    _id, secret = issue_token(env)
    with env.client:
        for path in ("/scim/v2/Users", "/scim/v2/ServiceProviderConfig", "/scim/v2"):
            r = env.client.get(path, headers={"Authorization": f"Bearer {secret}"})
            assert "identity: {scim: true}" in refused(r, 404)
        assert "identity" in refused(env.client.get("/scim/v2/Users"), 404)
        r = env.client.post("/scim/v2/Users", json={"schemas": [U], "userName": "x"},
                            headers={"Authorization": f"Bearer {secret}"})
        refused(r, 404)
        # turned on by a policy reload, without a restart
        env.write_policy(SCIM_POLICY)
        assert env.post("frank", "/api/v1/admin/reload").status_code == 200
        r = env.client.get("/scim/v2/Users", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200, r.text


def test_tokens_are_stored_hashed(scim: Scim) -> None:
    with scim.env.st.sessions() as session:
        row = session.get(ScimClient, scim.client_id)
        assert row is not None
        assert row.token_hash == hash_token(scim.token) and scim.token not in row.token_hash
        assert scim.token.startswith(tokens.PREFIX) and row.prefix == scim.token[:14]


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\there"])
def test_a_token_needs_a_name(scim: Scim, name: str) -> None:
    with pytest.raises(Exception, match="printable"), \
            transaction(scim.env.st.sessions) as session:
        tokens.issue(session, name=name, actor=Actor.system("cli"), now=scim.env.clock())


# ---------------------------------------------------------------- the CLI

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "accord.yaml"
    config.write_text(SCIM_POLICY, encoding="utf-8")
    env = {"ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
           "ACCORD_CONFIG": str(config), "ACCORD_DATA_DIR": str(tmp_path / "data")}
    assert runner.invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    return env


def cli(cli_env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, ["scim", "token", *args], env=cli_env)


def stored(cli_env: dict[str, str]) -> tuple[list[ScimClient], list[str]]:
    engine = make_engine(cli_env["ACCORD_DATABASE_URL"])
    try:
        with Session(engine) as session:
            rows = list(session.execute(select(ScimClient).order_by(ScimClient.id)).scalars())
            events = list(session.execute(select(LedgerEntry.type).where(
                LedgerEntry.type.like("scim.%")).order_by(LedgerEntry.id)).scalars())
            return rows, events
    finally:
        engine.dispose()


def test_cli_issue_list_revoke(cli_env: dict[str, str]) -> None:
    issued = cli(cli_env, "issue", "okta")
    assert issued.exit_code == 0, issued.output
    secret = issued.stdout.strip()
    assert issued.stdout == secret + "\n" and secret.startswith(tokens.PREFIX)
    assert "shown only this once" in issued.stderr and secret not in issued.stderr
    [row], events = stored(cli_env)
    assert row.name == "okta" and row.token_hash == hash_token(secret)
    assert row.created_by == "accord-cli" and events == ["scim.token_issued"]

    listed = cli(cli_env, "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [(t["id"], t["name"], t["revoked_at"]) for t in json.loads(listed.stdout)] == [
        (row.id, "okta", None)]
    table = cli(cli_env, "list")
    assert "okta" in table.stdout and "live" in table.stdout
    assert secret not in listed.output + table.output

    revoked = cli(cli_env, "revoke", str(row.id))
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    [row], events = stored(cli_env)
    assert row.revoked_at is not None and row.revoked_by == "accord-cli"
    assert events == ["scim.token_issued", "scim.token_revoked"]
    assert "revoked" in cli(cli_env, "list").stdout
    assert cli(cli_env, "revoke", str(row.id)).exit_code == 0  # again: nothing new
    assert stored(cli_env)[1] == ["scim.token_issued", "scim.token_revoked"]


def test_cli_refusals(cli_env: dict[str, str], tmp_path: Path) -> None:
    missing = cli(cli_env, "revoke", "987654")
    assert missing.exit_code == 1 and "987654" in missing.stderr
    unnamed = cli(cli_env, "issue", " ")
    assert unnamed.exit_code == 1 and unnamed.stdout == ""
    assert "no SCIM tokens" in cli(cli_env, "list").stderr
    assert stored(cli_env) == ([], [])
    # SCIM off: the token is issued, and the operator told
    Path(cli_env["ACCORD_CONFIG"]).write_text(POLICY, encoding="utf-8")
    off = cli(cli_env, "issue", "entra")
    assert off.exit_code == 0 and "identity: {scim: true}" in " ".join(off.stderr.split())
