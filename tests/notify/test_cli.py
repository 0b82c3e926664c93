"""`accord notify prefs` against a live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from accord.cli.main import app
from accord.notify.cli import parse_channels
from tests.conftest import Env, LiveServer, make_env
from tests.notify.samples import notify_policy

runner = CliRunner()


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    """The app `live` serves: email configured, Slack not."""
    e = make_env(sessions, tmp_path, notify_policy())
    with e.client:
        yield e


def run(live: LiveServer, user: str, *args: str) -> tuple[int, str, str]:
    env = {"ACCORD_URL": live.url, "ACCORD_TOKEN": live.env.tokens[user]}
    result = runner.invoke(app, ["notify", "prefs", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_show_then_change_keeps_what_the_options_do_not_mention(live: LiveServer) -> None:
    code, out, _ = run(live, "alice")
    assert code == 0, out
    assert "every channel available (email)" in out and "immediate" in out

    code, out, err = run(live, "alice", "--digest", "7", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert (body["channels"], body["mode"], body["digest_hour"]) == (None, "digest", 7)

    code, out, err = run(live, "alice", "--channels", "email", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert (body["channels"], body["mode"], body["digest_hour"]) == (["email"], "digest", 7)
    code, out, _ = run(live, "alice")
    assert "daily digest at 07:00 UTC" in out and "changed:" in out

    code, out, err = run(live, "alice", "--immediate", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert (body["channels"], body["mode"], body["digest_hour"]) == (["email"], "immediate",
                                                                     None)
    changes = [e for e in live.env.events(type="notification.preferences_changed")
               if e["data"]["user"] == "alice"]
    assert len(changes) == 3 and {e["actor"]["via"] for e in changes} == {"api"}


def test_refusals_print_the_servers_reason_and_exit_1(live: LiveServer) -> None:
    code, out, err = run(live, "alice", "--channels", "email,sms")
    assert (code, out) == (1, "")
    assert 'unknown channel "sms"' in err
    code, _, err = run(live, "alice", "--digest", "24")
    assert code == 1 and "24 is not an hour from 0 to 23" in err
    code, _, err = run(live, "bob", "--user", "alice", "--digest", "9")
    assert code == 1 and "only admins" in err
    code, out, err = run(live, "carol", "--user", "alice", "--digest", "9", "--json")
    assert code == 0, err
    assert json.loads(out)["updated_by"] == "carol"
    code, _, err = run(live, "alice", "--digest", "9", "--immediate")
    assert code == 2 and "not both" in err


def test_channel_lists() -> None:
    assert parse_channels("email, slack") == ["email", "slack"]
    assert parse_channels("default") is None
    assert parse_channels("none") == [] and parse_channels("") == []
