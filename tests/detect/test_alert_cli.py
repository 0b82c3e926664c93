"""`accord alert` and `accord request create --emergency` / `review` against a live server."""

from __future__ import annotations

import json

from accord.cli.main import app
from accord.worker.job_runner import detect_all
from tests.cli.test_request_cli import run, runner
from tests.conftest import LiveServer
from tests.detect.test_detectors import WEDNESDAY_10


def test_alert_list_show_ack_resolve(live: LiveServer) -> None:
    env = live.env
    env.clock.value = WEDNESDAY_10
    for _ in range(3):
        env.ask("alice", reason="short")
    detect_all(env.st.sessions, env.st.policies.current, env.st.now)

    code, out, _ = run(live, "dave", "alert", "list", "--json")
    assert code == 0
    (alert,) = json.loads(out)["items"]
    aid = str(alert["id"])
    code, out, _ = run(live, "dave", "alert", "list", "--status", "open")
    assert code == 0 and "medium" in out and "alice" in out
    code, out, _ = run(live, "dave", "alert", "show", aid)
    assert code == 0 and "evidence" in out and "#" in out

    code, _, err = run(live, "alice", "alert", "list")
    assert code == 1 and "auditor or admin" in err
    code, _, err = run(live, "frank", "alert", "resolve", aid, "--note", "")
    assert code == 1 and "note" in err
    assert run(live, "frank", "alert", "ack", aid, "--note", "looking")[0] == 0
    code, out, _ = run(live, "frank", "alert", "resolve", aid, "--note", "a test of auto-deny")
    assert code == 0 and "resolved" in out
    code, out, _ = run(live, "dave", "alert", "show", aid, "--json")
    assert json.loads(out)["resolved_by"] == "frank"


def test_emergency_flag_needs_break_glass(live: LiveServer) -> None:
    code, _, err = run(live, "erin", "request", "create", "orders-db", "read", "-d", "30m",
                       "-r", "SEV1: orders table locked", "--emergency")
    assert code == 1 and "break-glass is not configured" in err
    code, _, err = run(live, "frank", "request", "review", "1", "--verdict", "justified",
                       "--note", "n/a")
    assert code == 1


def test_an_admin_cannot_ack_or_resolve_an_alert_about_themselves(live: LiveServer) -> None:
    env = live.env
    env.clock.value = WEDNESDAY_10
    rid = env.ask("frank")["id"]
    assert env.act("frank", rid, "approve").status_code == 403  # frank's own request
    detect_all(env.st.sessions, env.st.policies.current, env.st.now)
    code, out, _ = run(live, "dave", "alert", "list", "--rule", "self_approval", "--json")
    (alert,) = json.loads(out)["items"]
    aid = str(alert["id"])
    code, out, err = run(live, "frank", "alert", "ack", aid, "--note", "mine")
    assert (code, out) == (1, "") and "is about you (frank)" in err
    code, out, err = run(live, "frank", "alert", "resolve", aid, "--note", "only me")
    assert (code, out) == (1, "") and "another admin must resolve it" in err
    code, out, _ = run(live, "carol", "alert", "resolve", aid, "--note", "frank testing")
    assert code == 0 and "resolved" in out


def test_alert_groups_count_per_rule_and_per_subject(live: LiveServer) -> None:
    env = live.env
    env.clock.value = WEDNESDAY_10
    for user in ("alice", "alice", "alice", "bob", "bob", "bob"):
        env.ask(user, reason="short")  # three auto-denials each: one alert each
    detect_all(env.st.sessions, env.st.policies.current, env.st.now)
    code, out, _ = run(live, "dave", "alert", "groups", "--json")
    assert code == 0, out
    (group,) = json.loads(out)["items"]
    assert (group["rule"], group["count"], group["user"]) == ("repeated_denials", 2, None)
    code, out, _ = run(live, "dave", "alert", "groups", "--by", "user", "--json")
    groups = json.loads(out)["items"]
    assert sorted((g["user"], g["count"]) for g in groups) == [("alice", 1), ("bob", 1)]
    code, out, _ = run(live, "dave", "alert", "groups", "--by", "subject", "--json")
    # these alerts are about users, not a subject: one group without one
    assert [(g["subject"], g["count"]) for g in json.loads(out)["items"]] == [(None, 2)]
    result = runner.invoke(app, ["alert", "groups", "--by", "user"], env={
        "ACCORD_URL": live.url, "ACCORD_TOKEN": env.tokens["dave"], "COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "repeated_denials" in result.stdout and "alice" in result.stdout
    code, _, err = run(live, "alice", "alert", "groups")
    assert code == 1 and "auditor or admin" in err
