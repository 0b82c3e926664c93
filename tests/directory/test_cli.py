"""`accord directory users|groups|show` against a live server."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from accord.cli.main import app
from tests.conftest import LiveServer
from tests.directory.test_consequences import env, group, person  # noqa: F401 (env: a fixture)

runner = CliRunner()


def run(live: LiveServer, user: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["directory", *args],
                           env={"ACCORD_URL": live.url, "ACCORD_TOKEN": live.env.tokens[user]})
    return result.exit_code, " ".join(result.stdout.split()), result.stderr


def test_users_groups_and_one_person(live: LiveServer) -> None:
    person(live.env, "mia")
    person(live.env, "sam", manager="mia")
    group(live.env, "oncall", "sam")
    code, out, err = run(live, "dave", "users", "--source", "scim")
    assert code == 0, err
    assert "mia scim active mia@example.com -" in out
    assert "sam scim active sam@example.com mia" in out
    code, out, _ = run(live, "dave", "users", "--json", "--all")
    names = [p["name"] for p in json.loads(out)["items"]]
    assert names[:2] == ["alice", "bob"] and names[-2:] == ["mia", "sam"]
    code, out, _ = run(live, "dave", "groups")
    assert code == 0 and "oncall scim 1" in out and "leads file 2" in out
    code, out, _ = run(live, "dave", "show", "sam")
    assert code == 0
    assert "groups oncall (scim)" in out and "manager mia" in out
    code, out, err = run(live, "alice", "users")
    assert code == 1 and "auditor or admin" in err
    code, _, err = run(live, "dave", "show", "nobody")
    assert code == 1 and 'nobody is called "nobody"' in err
