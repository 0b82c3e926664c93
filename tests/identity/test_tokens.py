"""API tokens: stored hashed, never shown again, revocable by their owner or an admin."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from accord.cli.main import app
from accord.db import make_engine, transaction
from accord.identity import service as identity
from accord.identity.models import ApiToken
from accord.ledger.events import Actor
from tests.conftest import POLICY, Env

TOKENS = "/api/v1/tokens"
PROBLEM = "application/problem+json"


def issue(env: Env, user: str = "alice", **kw: Any) -> tuple[int, str]:
    with transaction(env.st.sessions) as session:
        row, secret = identity.issue(session, policy=env.st.policies.current, user=user,
                                     actor=Actor.system("cli"), now=env.clock(), **kw)
    return row.id, secret


def token_id(env: Env, user: str) -> int:
    mine = env.get(user, TOKENS).json()
    assert len(mine) == 1, mine
    tid: int = mine[0]["id"]
    return tid


def works(env: Env, secret: str) -> bool:
    r = env.get(None, "/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code in (200, 401), r.text
    return bool(r.status_code == 200)


def assert_404(r: Any) -> None:
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert {"type", "title", "status", "detail"} <= r.json().keys()


# ---------------------------------------------------------------- storage


def test_token_is_stored_as_its_sha256_hash(env: Env) -> None:
    tid, secret = issue(env)
    with env.st.sessions() as session:
        row = session.get(ApiToken, tid)
        assert row is not None
        assert row.token_hash != secret
        assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret.startswith(row.prefix)
        assert len(row.prefix) < len(secret) // 2


def test_secret_is_in_no_column_of_the_token_row(env: Env) -> None:
    tid, secret = issue(env, name="laptop", expires_in=timedelta(days=30))
    with env.st.sessions() as session:
        row = session.execute(text("SELECT * FROM api_tokens WHERE id = :id"),
                              {"id": tid}).mappings().one()
    assert row["id"] == tid
    assert not [k for k, v in row.items() if v is not None and secret in str(v)]
    assert not [k for k, v in row.items() if v is not None and secret[4:20] in str(v)]


def test_secrets_are_in_no_token_row_at_all(env: Env) -> None:
    with env.st.sessions() as session:
        rows = session.execute(select(ApiToken)).scalars().all()
        dump = json.dumps([{c.name: str(getattr(r, c.key)) for c in ApiToken.__table__.columns}
                           for r in rows])
    assert len(rows) >= len(env.tokens)
    assert not [u for u, secret in env.tokens.items() if secret in dump]


def test_issued_token_works_and_unknown_user_gets_none(env: Env) -> None:
    _tid, secret = issue(env, user="erin")
    assert works(env, secret)
    with pytest.raises(Exception, match="unknown user"), transaction(env.st.sessions) as session:
        identity.issue(session, policy=env.st.policies.current, user="mallory",
                       actor=Actor.system("cli"), now=env.clock())


# ---------------------------------------------------------------- listing


def test_listing_own_tokens_never_shows_secrets(env: Env) -> None:
    _tid, second = issue(env, name="ci")
    r = env.get("alice", TOKENS)
    assert r.status_code == 200, r.text
    assert [t["user"] for t in r.json()] == ["alice", "alice"]
    assert env.tokens["alice"] not in r.text
    assert second not in r.text
    for t in r.json():
        assert not {"secret", "token", "token_hash", "hash"} & t.keys()
        assert second.startswith(t["prefix"]) or env.tokens["alice"].startswith(t["prefix"])


def test_admin_lists_everyones_tokens_without_secrets(env: Env) -> None:
    r = env.get("carol", TOKENS)
    assert r.status_code == 200, r.text
    assert sorted({t["user"] for t in r.json()}) == sorted(env.tokens)
    assert not [u for u, secret in env.tokens.items() if secret in r.text]
    assert all("token_hash" not in t for t in r.json())


def test_admin_lists_one_users_tokens(env: Env) -> None:
    r = env.get("carol", TOKENS, params={"user": "bob"})
    assert r.status_code == 200, r.text
    assert [t["user"] for t in r.json()] == ["bob"]


def test_user_cannot_list_someone_elses_tokens(env: Env) -> None:
    r = env.get("alice", TOKENS, params={"user": "bob"})
    assert r.status_code == 403, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    assert env.tokens["bob"] not in r.text


def test_plain_user_listing_sees_only_their_own(env: Env) -> None:
    assert {t["user"] for t in env.get("bob", TOKENS).json()} == {"bob"}


# ---------------------------------------------------------------- revoking


def test_user_revokes_their_own_token(env: Env) -> None:
    tid, second = issue(env, name="old laptop")
    r = env.call("DELETE", "alice", f"{TOKENS}/{tid}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == tid
    assert r.json()["revoked_at"] is not None
    assert second not in r.text
    assert not works(env, second)
    assert works(env, env.tokens["alice"])


def test_user_cannot_revoke_someone_elses_token(env: Env) -> None:
    bobs = token_id(env, "bob")
    before = len(env.events(type="token.revoked"))
    r = env.call("DELETE", "alice", f"{TOKENS}/{bobs}")
    assert_404(r)
    missing = env.call("DELETE", "alice", f"{TOKENS}/987654")
    assert_404(missing)
    assert r.json()["detail"].replace(str(bobs), "N") == missing.json()["detail"].replace(
        "987654", "N")
    assert works(env, env.tokens["bob"])
    assert len(env.events(type="token.revoked")) == before


def test_auditor_cannot_revoke_someone_elses_token(env: Env) -> None:
    assert_404(env.call("DELETE", "dave", f"{TOKENS}/{token_id(env, 'bob')}"))
    assert works(env, env.tokens["bob"])


def test_admin_revokes_anyones_token(env: Env) -> None:
    bobs = token_id(env, "bob")
    r = env.call("DELETE", "carol", f"{TOKENS}/{bobs}")
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "bob"
    assert not works(env, env.tokens["bob"])
    assert works(env, env.tokens["carol"])
    assert env.get("carol", TOKENS, params={"user": "bob"}).json()[0]["revoked_at"] is not None


def test_revoking_a_missing_token_is_404(env: Env) -> None:
    assert_404(env.call("DELETE", "carol", f"{TOKENS}/987654"))


def test_revoking_twice_records_one_event(env: Env) -> None:
    tid, _secret = issue(env)
    first = env.call("DELETE", "alice", f"{TOKENS}/{tid}")
    second = env.call("DELETE", "alice", f"{TOKENS}/{tid}")
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["revoked_at"] == second.json()["revoked_at"]
    assert len(env.events(type="token.revoked", subject=f"token:{tid}")) == 1


# ---------------------------------------------------------------- audit


def test_issuing_records_token_issued_without_the_secret(env: Env) -> None:
    tid, secret = issue(env, user="erin", name="ci", expires_in=timedelta(days=30))
    events = env.events(type="token.issued", subject=f"token:{tid}")
    assert len(events) == 1
    data = events[0]["data"]
    assert (data["token_id"], data["user"], data["name"]) == (tid, "erin", "ci")
    assert secret.startswith(data["prefix"])
    assert data["expires_at"] is not None
    assert events[0]["actor"]["kind"] == "system"
    assert secret not in json.dumps(events)


def test_every_setup_token_has_a_token_issued_event(env: Env) -> None:
    users = sorted(e["data"]["user"] for e in env.events(type="token.issued"))
    assert users == sorted(env.tokens)


def test_revoking_records_token_revoked_with_the_actor(env: Env) -> None:
    bobs = token_id(env, "bob")
    assert env.call("DELETE", "carol", f"{TOKENS}/{bobs}").status_code == 200
    events = env.events(type="token.revoked", subject=f"token:{bobs}")
    assert len(events) == 1
    assert events[0]["actor"]["id"] == "carol"
    assert events[0]["data"]["user"] == "bob"
    assert env.tokens["bob"] not in json.dumps(events)


def test_secrets_never_reach_the_audit_log(env: Env) -> None:
    issue(env)
    r = env.get("dave", "/api/v1/audit/events", params={"limit": 1000})
    assert r.status_code == 200
    assert not [u for u, secret in env.tokens.items() if secret in r.text]


# ---------------------------------------------------------------- CLI

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    env = {"ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
           "ACCORD_CONFIG": str(config), "ACCORD_DATA_DIR": str(tmp_path / "data")}
    assert runner.invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    return env


def test_operator_commands_create_nothing_where_they_find_nothing(tmp_path: Path) -> None:
    config = tmp_path / "accord.yaml"
    env = {"ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'missing.db'}",
           "ACCORD_CONFIG": str(config), "ACCORD_DATA_DIR": str(tmp_path / "data")}
    for args in (["token", "list"], ["audit", "key"], ["token", "issue", "alice"],
                 ["report", "user", "alice", "--out", str(tmp_path / "r.pdf")]):
        r = runner.invoke(app, args, env={**env, "ACCORD_TOKEN": ""})
        assert r.exit_code == 1 and "accord.yaml: no such file" in " ".join(r.stderr.split()), \
            (args, r.output)
    config.write_text(POLICY, encoding="utf-8")
    for args in (["token", "list"], ["audit", "key"]):
        r = runner.invoke(app, args, env=env)
        said = " ".join(r.stderr.split())
        assert r.exit_code == 1 and "no Accord database at" in said and "db upgrade" in said
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "data").exists()


def cli(cli_env: dict[str, str], *args: str) -> Any:
    return runner.invoke(app, list(args), env=cli_env)


def rows(cli_env: dict[str, str]) -> list[ApiToken]:
    engine = make_engine(cli_env["ACCORD_DATABASE_URL"])
    try:
        with Session(engine) as session:
            return list(session.execute(select(ApiToken).order_by(ApiToken.id)).scalars())
    finally:
        engine.dispose()


def test_cli_issue_prints_the_token_once(cli_env: dict[str, str]) -> None:
    result = cli(cli_env, "token", "issue", "alice", "--expires", "30d", "--name", "laptop")
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith(identity.TOKEN_PREFIX)
    assert result.stdout == secret + "\n"
    assert (result.stdout + result.stderr).count(secret) == 1
    assert "30d" in result.stderr
    [row] = rows(cli_env)
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert row.user == "alice"
    assert row.expires_at - row.created_at == timedelta(days=30)


def test_cli_issue_for_an_unknown_user_fails(cli_env: dict[str, str]) -> None:
    result = cli(cli_env, "token", "issue", "mallory")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "mallory" in result.stderr
    assert rows(cli_env) == []


def test_cli_issue_with_a_bad_expiry_fails(cli_env: dict[str, str]) -> None:
    result = cli(cli_env, "token", "issue", "alice", "--expires", "soon")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "--expires" in result.stderr


def test_cli_list_never_shows_secrets(cli_env: dict[str, str]) -> None:
    secrets = [cli(cli_env, "token", "issue", u).stdout.strip() for u in ("alice", "bob")]
    result = cli(cli_env, "token", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [t["user"] for t in listed] == ["alice", "bob"]
    assert [t["revoked_at"] for t in listed] == [None, None]
    table = cli(cli_env, "token", "list")
    assert table.exit_code == 0, table.output
    assert "alice" in table.stdout and "live" in table.stdout
    for secret in secrets:
        assert secret not in result.output + table.output
    only_bob = json.loads(cli(cli_env, "token", "list", "--user", "bob", "--json").stdout)
    assert [t["user"] for t in only_bob] == ["bob"]


def test_cli_revoke_revokes(cli_env: dict[str, str]) -> None:
    secret = cli(cli_env, "token", "issue", "alice").stdout.strip()
    tid = json.loads(cli(cli_env, "token", "list", "--json").stdout)[0]["id"]
    result = cli(cli_env, "token", "revoke", str(tid))
    assert result.exit_code == 0, result.output
    assert "revoked" in result.stdout
    assert json.loads(cli(cli_env, "token", "list", "--json").stdout)[0]["revoked_at"]
    assert "revoked" in cli(cli_env, "token", "list").stdout
    assert secret not in result.output


def test_cli_revoke_of_a_missing_token_fails(cli_env: dict[str, str]) -> None:
    result = cli(cli_env, "token", "revoke", "987654")
    assert result.exit_code == 1
    assert "987654" in result.stderr


def test_a_command_run_beside_the_demos_data_says_where_it_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = tmp_path / ".accord" / "demo"
    demo.mkdir(parents=True)
    (demo / "accord.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)  # the repository root after ./scripts/demo
    for name in ("ACCORD_DATABASE_URL", "ACCORD_CONFIG", "ACCORD_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    r = runner.invoke(app, ["token", "list"])
    said = " ".join(r.stderr.split())
    assert r.exit_code == 1 and "the demo's data is in .accord/demo" in said, r.output
    assert f"export ACCORD_DATA_DIR={demo.resolve()}" in said
    assert not (tmp_path / ".accord" / "accord.db").exists()
