"""SSH recordings read back: the API's listing with the verified badge, `accord session
play`, the web page and its player, and `accord audit verify` catching an edited chunk."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from accord.cli.main import app
from accord.db import transaction
from accord.ledger.upkeep import integrate_all
from tests.gateway.conftest import serve_api
from tests.gateway.ssh.conftest import World
from tests.web.test_pages import login

pytestmark = pytest.mark.ssh
runner = CliRunner()


@pytest.fixture(scope="module")
def url(world: World) -> Iterator[str]:
    with serve_api(world) as u:  # type: ignore[arg-type]
        yield u


def recorded(world: World, user: str = "alice") -> tuple[dict, str]:  # type: ignore[type-arg]
    grant = world.grant(user)
    r = world.ssh(world.token(grant, user), "echo recorded-$((20+1)); exit 4")
    assert r.returncode == 4 and "recorded-21" in r.stdout, r.stderr
    world.flush()
    listed = world.env.get(user, f"/api/v1/grants/{grant['id']}/ssh-sessions").json()
    assert len(listed) == 1
    return grant, listed[0]["session"]


def test_listing_play_and_the_web_page(world: World, url: str) -> None:
    grant, sid = recorded(world)
    listed = world.env.get("alice", f"/api/v1/grants/{grant['id']}/ssh-sessions").json()
    (ch,) = listed[0]["channels"]
    assert ch["command"] == "echo recorded-$((20+1)); exit 4" and ch["exit_status"] == 4
    assert ch["verified"] is True and ch["chunks"] >= 2
    # Not erin's business: an engineer who neither holds, owns nor approved the grant.
    assert world.env.get("erin", f"/api/v1/ssh-sessions/{sid}").status_code == 404
    r = runner.invoke(app, ["session", "play", sid, "--instant"],
                      env={"ACCORD_URL": url, "ACCORD_TOKEN": world.env.tokens["alice"]})
    assert r.exit_code == 0, r.output
    assert "recorded-21" in r.stdout
    assert "(verified)" in r.stderr
    browser = login(world.env, "alice")
    page = browser.get(f"/requests/{grant['request_id']}")
    assert page.status_code == 200 and f"/ssh-sessions/{sid}" in page.text
    player = browser.get(f"/ssh-sessions/{sid}")
    assert player.status_code == 200 and "verified" in player.text
    assert "/static/player.js" in player.text
    cast = browser.get(f"/ssh-sessions/{sid}/channels/1.cast")
    assert cast.headers["x-accord-verified"] == "true" and "recorded-21" in cast.text
    assert browser.get("/static/player.js").status_code == 200


def test_an_edited_chunk_fails_verification(world: World, url: str) -> None:
    grant, sid = recorded(world, "erin")
    integrate_all(world.env.st.sessions)  # the ledger worker's job (no worker here)
    env = {"ACCORD_TOKEN": world.env.tokens["dave"]}
    key = world.env.st.ledger.signer.verifier.encode()
    r = runner.invoke(app, ["audit", "verify", "--url", url, "--key", key,
                            "--allow-unsigned-tail"], env=env)
    assert r.exit_code == 0, r.output
    assert "SSH recording chunks checked" in r.stderr
    assert "recordings: 0 " not in r.stderr
    mine = [e["data"]["sha256"] for e in world.events("gateway.ssh_chunk", grant["id"])]
    with transaction(world.env.st.sessions) as s:  # an edit of the stored bytes
        digest = next(d for d in mine if b"recorded-21" in bytes(s.execute(text(
            "SELECT data FROM gateway_recordings WHERE sha256 = :d"), {"d": d}).scalar_one()))
        s.execute(text("UPDATE gateway_recordings SET data = convert_to(replace("
                       "convert_from(data, 'UTF8'), 'recorded-21', 'recorded-99'), 'UTF8') "
                       "WHERE sha256 = :d"), {"d": digest})
    r = runner.invoke(app, ["audit", "verify", "--url", url, "--key", key,
                            "--allow-unsigned-tail"], env=env)
    assert r.exit_code == 1, r.output
    assert "do not match" in r.stderr and "first bad index" in r.stderr
    listed = world.env.get("erin", f"/api/v1/grants/{grant['id']}/ssh-sessions").json()
    (ch,) = listed[0]["channels"]
    assert ch["verified"] is False
    cast = world.env.get("erin", f"/api/v1/ssh-sessions/{sid}/channels/1/cast")
    assert cast.headers["x-accord-verified"] == "false"
    with transaction(world.env.st.sessions) as s:  # the next tests see a sound store
        s.execute(text("DELETE FROM gateway_recordings WHERE sha256 = :d"), {"d": digest})


def test_accord_connect_prints_a_ready_ssh_command(world: World, url: str) -> None:
    world.grant("alice")
    r = runner.invoke(app, ["connect", world.resource],
                      env={"ACCORD_URL": url, "ACCORD_TOKEN": world.env.tokens["alice"]})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == (f"ssh -p {world.port} -o PreferredAuthentications=password "
                        f"alice+{world.resource}@127.0.0.1")
    password = next(line for line in lines if line.startswith("password: "))
    token = {"user": "alice", "resource": world.resource, "token": password.split(": ")[1]}
    assert world.ssh(token, "true").returncode == 0


def test_a_registered_public_key_logs_in_while_the_grant_is_active(world: World,
                                                                   url: str) -> None:
    import subprocess

    from tests.gateway.ssh.conftest import SSH, keygen

    key = world.tmp / "carol_key"
    keygen(key)
    added = runner.invoke(app, ["ssh-key", "add", f"{key}.pub", "--name", "laptop"],
                          env={"ACCORD_URL": url, "ACCORD_TOKEN": world.env.tokens["carol"]})
    assert added.exit_code == 0 and "registered SHA256:" in added.stdout, added.output
    keys = world.env.get("carol", "/api/v1/ssh-keys").json()
    assert [k["name"] for k in keys] == ["laptop"]
    assert world.events("gateway.ssh_key_added")[-1]["data"]["user"] == "carol"

    def ssh(login: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SSH, "-F", "/dev/null", "-p", str(world.port), "-i", str(key),
             "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
             "-o", "PreferredAuthentications=publickey", f"{login}@127.0.0.1",
             "echo key-login-$((1+6))"], capture_output=True, text=True, timeout=60,
            check=False)

    r = ssh(f"carol+{world.resource}")  # no grant yet
    assert r.returncode == 255 and "no active grant" in r.stderr, r.stderr
    assert ssh(f"alice+{world.resource}").returncode == 255  # not alice's key
    grant = world.grant("carol", "admin")
    r = ssh(f"carol+{world.resource}")
    assert r.returncode == 0 and r.stdout == "key-login-7\n", r.stderr
    r = ssh(f"carol+{world.resource}+admin")
    assert r.returncode == 0, r.stderr
    execs = world.events("gateway.ssh_exec", grant["id"])
    assert len(execs) == 2 and execs[0]["data"]["exit_status"] == 0
    removed = runner.invoke(app, ["ssh-key", "remove", str(keys[0]["id"])],
                            env={"ACCORD_URL": url, "ACCORD_TOKEN": world.env.tokens["carol"]})
    assert removed.exit_code == 0, removed.output
    assert ssh(f"carol+{world.resource}").returncode == 255
    assert world.events("gateway.ssh_key_removed")[-1]["data"]["key_id"] == keys[0]["id"]


def test_the_request_page_hands_out_an_ssh_command_and_password(world: World) -> None:
    import re
    from html import unescape

    grant = world.grant("erin")
    browser = login(world.env, "erin")
    page = browser.get(f"/requests/{grant['request_id']}")
    assert f"erin+{world.resource}" in page.text and "with SSH" in page.text
    r = browser.post(f"/requests/{grant['request_id']}/connect")
    assert r.status_code == 303, r.text
    page = browser.get(r.headers["location"])
    command = re.search(r'id="connect-psql">([^<]*)<', page.text)
    password = re.search(r'id="connect-password">([^<]*)<', page.text)
    assert command and password, page.text
    assert unescape(command.group(1)).startswith(f"ssh -p {world.port} ")
    token = {"user": "erin", "resource": world.resource, "token": password.group(1)}
    assert world.ssh(token, "true").returncode == 0
