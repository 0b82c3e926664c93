"""The `accord request` client against a live server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from accord.cli.main import app
from accord.cli.output import compact_span
from tests.conftest import LiveServer

runner = CliRunner()


def run(live: LiveServer, user: str, *args: str) -> tuple[int, str, str]:
    env = {"ACCORD_URL": live.url, "ACCORD_TOKEN": live.env.tokens[user]}
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_create_approve_show_round_trip(live: LiveServer) -> None:
    code, out, _ = run(live, "alice", "request", "create", "orders-db", "read", "-d", "1h30m",
                       "-r", "INC-42 missing orders", "--json")
    assert code == 0, out
    req = json.loads(out)
    assert (req["status"], req["duration_seconds"], req["created_via"]) == ("pending", 5400, "api")

    code, out, _ = run(live, "bob", "request", "list", "--awaiting-me", "--json")
    assert code == 0
    assert [r["id"] for r in json.loads(out)["items"]] == [req["id"]]

    assert run(live, "bob", "request", "approve", str(req["id"]), "-r", "ok")[0] == 0
    code, out, _ = run(live, "carol", "request", "approve", str(req["id"]))
    assert code == 0
    assert "active" in out

    code, out, _ = run(live, "alice", "request", "show", str(req["id"]))
    assert code == 0
    for text in ("orders-db", "bob", "carol", "prod"):
        assert text in out
    decisions = json.loads(run(live, "alice", "request", "show", str(req["id"]), "--json")[1])
    assert [a["via"] for s in decisions["steps"] for a in s["approvals"]] == ["api", "api"]

    code, out, _ = run(live, "alice", "grant", "list", "--json")
    assert code == 0
    assert json.loads(out)["items"][0]["request_id"] == req["id"]


def test_errors_go_to_stderr_with_exit_1(live: LiveServer) -> None:
    code, out, err = run(live, "alice", "request", "create", "orders-db", "read", "-d", "9h",
                         "-r", "INC-42 missing orders")
    assert code == 1
    assert out == ""
    assert "over the maximum of 4h" in err


@pytest.mark.parametrize("command", ["deny", "cancel"])
def test_finishing_commands(live: LiveServer, command: str) -> None:
    rid = live.env.ask("alice")["id"]
    user = "bob" if command == "deny" else "alice"
    code, out, err = run(live, user, "request", command, str(rid), "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == {"deny": "denied", "cancel": "cancelled"}[command]


def test_missing_token_is_explained() -> None:
    result = runner.invoke(app, ["request", "list"],
                           env={"ACCORD_URL": "http://127.0.0.1:9", "ACCORD_TOKEN": ""})
    assert result.exit_code == 1
    assert "ACCORD_TOKEN" in result.stderr


def test_metrics_and_root(live: LiveServer) -> None:
    import httpx

    live.env.ask("alice")
    body = httpx.get(live.url + "/metrics", timeout=5).text
    assert "accord_requests_pending 1.0\n" in body
    assert "accord_ledger_size" in body
    r = httpx.get(live.url + "/", timeout=5)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"


def test_small_truths_of_the_cli(live: LiveServer) -> None:
    # denied at filing: said, recorded, and exit 1 so that a script notices
    code, out, _ = run(live, "alice", "request", "create", "orders-db", "read", "-d", "1h",
                       "-r", "short")
    assert code == 1 and "denied" in out and "a reason of at least 10 characters" in out
    # time left is not rounded up to the hour
    assert [compact_span(s) for s in (5340, 3600, 93784, 59)] == ["1h29m", "1h", "1d2h", "59s"]
    # headers stay whole on an 80-column terminal
    live.env.ask("alice")
    result = runner.invoke(app, ["request", "list"], env={
        "ACCORD_URL": live.url, "ACCORD_TOKEN": live.env.tokens["alice"], "COLUMNS": "80"})
    header = result.stdout.splitlines()[0]
    for name in ("REQUESTER", "RESOURCE", "DURATION", "WORKFLOW"):
        assert name in header, header
    # flags take no value: help does not say "<bool>"
    assert "<bool>" not in runner.invoke(app, ["request", "create", "--help"]).stdout
    # --reason on every command that records why (--comment still works)
    rid = live.env.ask("alice")["id"]
    assert run(live, "bob", "request", "deny", str(rid), "--reason", "not now")[0] == 0


def test_after_a_decision_the_grant_is_said_as_it_stands() -> None:
    from accord.cli.request import _summary

    head = {"id": 7, "requester": "alice", "resource": "orders-db", "role": "read",
            "status": "approved"}
    provisioning = _summary({**head, "grant": {"id": 3, "status": "provisioning"}})
    assert "grant 3 is being provisioned" in provisioning and "ended" not in provisioning
    failed = _summary({**head, "grant": {"id": 3, "status": "provision_failed"}})
    assert "provisioning failed and is retried" in failed
    ended = _summary({**head, "grant": {"id": 3, "status": "revoked",
                                        "ended_at": "2026-12-05T10:00:00Z", "ended_by": "bob"}})
    assert "grant 3 ended" in ended and "by bob" in ended
