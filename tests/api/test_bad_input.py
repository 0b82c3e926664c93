"""Bad input gets an RFC 9457 problem and changes nothing; nothing a client sends is a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from accord.db import transaction
from accord.identity import service as identity
from accord.ledger.events import Actor
from tests.conftest import POLICY, Env

REQUESTS = "/api/v1/requests"
PROBLEM = "application/problem+json"
GOOD = {"resource": "orders-db", "role": "read", "duration": "1h",
        "reason": "INC-1 investigate orders"}


def snapshot(env: Env) -> tuple[int, list[int]]:
    r = env.get("carol", REQUESTS, params={"limit": 500})
    assert r.status_code == 200, r.text
    return len(env.events()), [item["id"] for item in r.json()["items"]]


def assert_problem(r: Any, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["title"]
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


def refused(env: Env, status: int, *words: str, user: str = "alice", **kw: Any) -> dict[str, Any]:
    """POST a new request, expect a problem, and check that nothing changed."""
    before = snapshot(env)
    body = assert_problem(env.post(user, REQUESTS, **kw), status, *words)
    assert snapshot(env) == before
    return body


# ---------------------------------------------------------------- creating a request


def test_unknown_resource_is_422_naming_the_resource(env: Env) -> None:
    body = refused(env, 422, "resource", "no-such-db", json={**GOOD, "resource": "no-such-db"})
    assert body["errors"][0]["loc"] == "resource"


def test_unknown_role_for_resource_is_422_naming_the_role(env: Env) -> None:
    body = refused(env, 422, "role", "superuser", json={**GOOD, "role": "superuser"})
    assert body["errors"][0]["loc"] == "role"


def test_role_of_another_resource_is_422(env: Env) -> None:
    refused(env, 422, "role", json={**GOOD, "resource": "staging-db", "role": "admin"})


def test_missing_duration_is_422(env: Env) -> None:
    body = refused(env, 422, "duration", json={k: v for k, v in GOOD.items() if k != "duration"})
    assert body["errors"][0]["loc"] == "duration"


@pytest.mark.parametrize(
    ("duration", "why"),
    [("0m", "zero"), ("0s", "zero"), ("PT0S", "zero"), ("-1h", "negative"),
     ("soon", "not a duration"), ("", "empty"), ("   ", "empty"), ("1h-30m", "not a duration"),
     ("1.5h", "not a duration"), ("h", "not a duration"), ("P", "not a duration")],
)
def test_bad_duration_is_422_and_says_why(env: Env, duration: str, why: str) -> None:
    refused(env, 422, "duration", why, json={**GOOD, "duration": duration})


def test_duration_over_the_workflow_maximum_is_422_not_clipped(env: Env) -> None:
    refused(env, 422, "duration", "4h", "prod", json={**GOOD, "duration": "5h"})


def test_duration_just_over_the_workflow_maximum_is_422(env: Env) -> None:
    refused(env, 422, "duration", json={**GOOD, "duration": "4h1s"})


def test_duration_over_the_global_maximum_is_422(env: Env) -> None:
    refused(env, 422, "duration", json={**GOOD, "duration": "99999999999999999999d"})


def test_duration_of_exactly_the_workflow_maximum_is_accepted(env: Env) -> None:
    assert env.ask("alice", duration="4h")["duration_seconds"] == 4 * 3600


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("PT1H30M", 5400), ("pt1h30m", 5400), ("45m", 2700), ("1h30m", 5400), ("90s", 90),
     ("PT2H", 7200), ("PT0.5H", 1800), (" 1h ", 3600)],
)
def test_duration_forms_are_accepted(env: Env, duration: str, seconds: int) -> None:
    req = env.ask("alice", duration=duration)
    assert req["duration_seconds"] == seconds
    assert env.get("alice", f"{REQUESTS}/{req['id']}").json()["duration_seconds"] == seconds


def test_sub_second_duration_is_refused_not_stored_as_zero(env: Env) -> None:
    refused(env, 422, "duration", json={**GOOD, "duration": "PT0.5S"})


@pytest.mark.parametrize("reason", [None, "", "    "])
def test_missing_reason_where_the_workflow_requires_it_is_422(env: Env, reason: str | None) -> None:
    body = {k: v for k, v in GOOD.items() if k != "reason"}
    if reason is not None:
        body["reason"] = reason
    refused(env, 422, "reason", "prod", json=body)


def test_reason_is_optional_where_the_workflow_does_not_require_one(env: Env) -> None:
    req = env.ask("alice", resource="staging-db", role="write", reason="")
    assert req["status"] == "pending"


# ---------------------------------------------------------------- decisions


def test_approving_twice_is_409_and_records_nothing(env: Env) -> None:
    req = env.ask("alice")
    assert env.act("bob", req["id"], "approve").status_code == 200
    before = snapshot(env)
    assert_problem(env.act("bob", req["id"], "approve"), 409, "already")
    assert snapshot(env) == before
    after = env.get("alice", f"{REQUESTS}/{req['id']}").json()
    assert after["current_step"] == 1
    assert [a["approver"] for a in after["steps"][0]["approvals"]] == ["bob"]


def _only_the_attempt_recorded(env: Env, before: tuple[int, list[int]], rid: int) -> None:
    """Nothing changed but one `approval.refused` event (the detectors alert on it)."""
    count, ids = snapshot(env)
    assert (count, ids) == (before[0] + 1, before[1])
    last = env.events()[-1]
    assert last["type"] == "approval.refused" and last["subject"] == f"request:{rid}"
    assert last["actor"]["id"] == "gina" and last["data"]["reason"] == "self_decision"
    assert env.get("gina", f"{REQUESTS}/{rid}").json()["status"] == "pending"


def test_approving_ones_own_request_is_403(env: Env) -> None:
    req = env.ask("gina")  # gina is a lead: an approver of step 1, but not of her own request
    before = snapshot(env)
    assert_problem(env.act("gina", req["id"], "approve"), 403, "own request")
    _only_the_attempt_recorded(env, before, req["id"])


def test_denying_ones_own_request_is_403(env: Env) -> None:
    req = env.ask("gina")
    before = snapshot(env)
    assert_problem(env.act("gina", req["id"], "deny"), 403, "own request")
    _only_the_attempt_recorded(env, before, req["id"])


def test_approver_of_a_later_step_cannot_approve_the_current_step(env: Env) -> None:
    req = env.ask("alice")  # step 1: leads (bob, gina); step 2: owners (dba: carol, erin)
    before = snapshot(env)
    assert_problem(env.act("erin", req["id"], "approve"), 403, "step 1")
    assert_problem(env.act("erin", req["id"], "deny"), 403, "step 1")
    assert snapshot(env) == before
    assert env.get("alice", f"{REQUESTS}/{req['id']}").json()["status"] == "pending"


def test_one_person_cannot_approve_two_steps(env: Env) -> None:
    env.write_policy(POLICY.replace("dba: [carol, erin]", "dba: [carol, erin, gina]"))
    assert env.post("carol", "/api/v1/admin/reload").status_code == 200
    req = env.ask("alice")
    assert [s["eligible"] for s in req["steps"]] == [["bob", "gina"], ["carol", "erin", "gina"]]
    assert env.act("gina", req["id"], "approve").json()["current_step"] == 1
    before = snapshot(env)
    assert_problem(env.act("gina", req["id"], "approve"), 409, "once")
    assert snapshot(env) == before
    after = env.get("alice", f"{REQUESTS}/{req['id']}").json()
    assert after["status"] == "pending"
    assert after["steps"][1]["approvals"] == []


def test_one_person_cannot_approve_two_elevated_steps(env: Env) -> None:
    req = env.ask("alice", role="admin")  # lead, owner (carol, erin), admins (carol, frank; 2)
    assert env.act("bob", req["id"], "approve").status_code == 200
    assert env.act("erin", req["id"], "approve").json()["current_step"] == 2
    assert env.act("carol", req["id"], "approve").json()["current_step"] == 2
    before = snapshot(env)
    assert_problem(env.act("carol", req["id"], "approve"), 409, "once")
    assert snapshot(env) == before


def _finish(env: Env, how: str) -> int:
    req = env.ask("alice")
    r = env.act("bob", req["id"], "deny") if how == "denied" else env.act("alice", req["id"],
                                                                             "cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == how
    rid: int = req["id"]
    return rid


@pytest.mark.parametrize("how", ["denied", "cancelled"])
@pytest.mark.parametrize(("user", "command"),
                         [("gina", "approve"), ("gina", "deny"), ("alice", "cancel")])
def test_acting_on_a_finished_request_is_409(env: Env, how: str, user: str, command: str) -> None:
    rid = _finish(env, how)
    before = snapshot(env)
    assert_problem(env.act(user, rid, command), 409, how)
    assert snapshot(env) == before
    assert env.get("alice", f"{REQUESTS}/{rid}").json()["status"] == how


def test_approving_an_auto_denied_request_is_409(env: Env) -> None:
    req = env.ask("alice", reason="short")  # prod auto-denies reasons under 10 characters
    assert req["status"] == "denied"
    before = snapshot(env)
    assert_problem(env.act("erin", req["id"], "approve"), 409, "denied")  # erin: an owner
    assert snapshot(env) == before


def test_approving_an_expired_request_is_409(env: Env) -> None:
    req = env.ask("alice")
    env.clock.advance(hours=2, seconds=1)  # prod: expire_after 2h
    before = snapshot(env)
    assert_problem(env.act("bob", req["id"], "approve"), 409, "expired")
    assert snapshot(env) == before


def test_command_on_a_missing_request_is_404(env: Env) -> None:
    before = snapshot(env)
    assert_problem(env.act("bob", 987654, "approve"), 404, "987654")
    assert snapshot(env) == before


# ---------------------------------------------------------------- malformed bodies


def test_malformed_json_is_400(env: Env) -> None:
    refused(env, 400, "JSON", content=b'{"resource": "orders-db",',
            headers={"Content-Type": "application/json"})


def test_malformed_json_on_a_command_is_400(env: Env) -> None:
    req = env.ask("alice")
    before = snapshot(env)
    r = env.post("bob", f"{REQUESTS}/{req['id']}/approve", content=b"{comment: 'x'}",
                 headers={"Content-Type": "application/json"})
    assert_problem(r, 400, "JSON")
    assert snapshot(env) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [("duration", 3600), ("duration", None), ("reason", ["INC-1", "investigate"]),
     ("reason", {"text": "INC-1 investigate"}), ("resource", 7), ("role", True),
     ("resource", None)],
)
def test_wrong_type_is_422_naming_the_field(env: Env, field: str, value: Any) -> None:
    body = refused(env, 422, field, json={**GOOD, field: value})
    assert [e["loc"] for e in body["errors"]] == [field]


def test_unknown_field_is_422_naming_it(env: Env) -> None:
    body = refused(env, 422, "grant_now", "unknown field", json={**GOOD, "grant_now": True})
    assert body["errors"] == [{"loc": "grant_now", "msg": "unknown field"}]


def test_unknown_field_on_a_command_is_422(env: Env) -> None:
    req = env.ask("alice")
    before = snapshot(env)
    assert_problem(env.act("bob", req["id"], "approve", force=True), 422, "force")
    assert snapshot(env) == before


@pytest.mark.parametrize("body", [b"", b"null", b"[]", b"{}", b'"orders-db"'])
def test_empty_or_non_object_body_is_422(env: Env, body: bytes) -> None:
    refused(env, 422, content=body, headers={"Content-Type": "application/json"})


def test_no_body_at_all_is_422(env: Env) -> None:
    refused(env, 422)


def test_body_over_64_kib_is_413(env: Env) -> None:
    refused(env, 413, "64 KiB", json={**GOOD, "reason": "x" * (64 * 1024)})


def test_body_of_exactly_64_kib_is_not_refused_for_size(env: Env) -> None:
    raw = json.dumps({**GOOD, "reason": ""}).encode()
    raw = raw[:-1] + b" " * (64 * 1024 - len(raw)) + b"}"
    assert len(raw) == 64 * 1024
    r = env.post("alice", REQUESTS, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text  # prod requires a reason, so: read, parsed, refused
    assert "reason" in r.json()["detail"]


def test_chunked_body_over_64_kib_is_413(env: Env) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"resource": "orders-db", "role": "read", "duration": "1h", "reason": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}'

    before = snapshot(env)
    r = env.post("alice", REQUESTS, content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert_problem(r, 413, "64 KiB")
    assert snapshot(env) == before


def test_lying_content_length_header_is_not_trusted(env: Env) -> None:
    raw = json.dumps({**GOOD, "reason": "x" * (70 * 1024)}).encode()

    def chunks() -> Iterator[bytes]:
        yield raw

    before = snapshot(env)
    r = env.post("alice", REQUESTS, content=chunks(),
                 headers={"Content-Type": "application/json", "Content-Length": "10"})
    assert r.status_code in (400, 413), r.text
    assert snapshot(env) == before


# ---------------------------------------------------------------- authentication


def assert_401(r: Any, *words: str) -> None:
    assert_problem(r, 401, *words)
    assert r.headers["www-authenticate"].lower().startswith("bearer")


def test_missing_token_is_401(env: Env) -> None:
    before = snapshot(env)
    assert_401(env.post(None, REQUESTS, json=GOOD), "missing")
    assert_401(env.get(None, REQUESTS), "missing")
    assert snapshot(env) == before


def test_invalid_token_is_401(env: Env) -> None:
    before = snapshot(env)
    r = env.post(None, REQUESTS, json=GOOD, headers={"Authorization": "Bearer acc_not-a-token"})
    assert_401(r, "invalid")
    assert snapshot(env) == before


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer    ", "Basic YWxpY2U6cHc=", "Token {t}", "{t}", "Bearer: {t}",
     "Bearer {t} {t}", "bearer\t{t}"],
)
def test_malformed_authorization_header_is_401(env: Env, header: str) -> None:
    before = snapshot(env)
    value = header.format(t=env.tokens["alice"])
    assert_401(env.post(None, REQUESTS, json=GOOD, headers={"Authorization": value}))
    assert snapshot(env) == before


def test_bearer_scheme_is_case_insensitive(env: Env) -> None:
    r = env.get(None, "/api/v1/me", headers={"Authorization": f"bearer {env.tokens['alice']}"})
    assert r.status_code == 200, r.text


def test_expired_token_is_401(env: Env) -> None:
    with transaction(env.st.sessions) as session:
        _row, secret = identity.issue(session, policy=env.st.policies.current, user="alice",
                                      actor=Actor.system("cli"), now=env.clock(),
                                      expires_in=timedelta(hours=1))
    auth = {"Authorization": f"Bearer {secret}"}
    assert env.get(None, "/api/v1/me", headers=auth).status_code == 200
    env.clock.advance(minutes=59, seconds=59)
    assert env.get(None, "/api/v1/me", headers=auth).status_code == 200
    env.clock.advance(seconds=1)
    before = snapshot(env)
    assert_401(env.post(None, REQUESTS, json=GOOD, headers=auth), "expired")
    assert snapshot(env) == before


def test_revoked_token_is_401(env: Env) -> None:
    mine = env.get("alice", "/api/v1/tokens").json()
    assert len(mine) == 1
    assert env.call("DELETE", "alice", f"/api/v1/tokens/{mine[0]['id']}").status_code == 200
    before = snapshot(env)
    assert_401(env.post("alice", REQUESTS, json=GOOD), "revoked")
    assert_401(env.get("alice", "/api/v1/me"), "revoked")
    assert snapshot(env) == before


def test_token_of_a_user_removed_from_the_policy_is_401(env: Env) -> None:
    env.write_policy(POLICY.replace(", gina]", "]"))
    r = env.post("carol", "/api/v1/admin/reload")
    assert r.status_code == 200, r.text
    assert r.json()["changed"] is True
    before = snapshot(env)
    assert_401(env.post("gina", REQUESTS, json=GOOD), "gina")
    assert_401(env.get("gina", "/api/v1/me"), "gina")
    assert snapshot(env) == before
    assert env.get("alice", "/api/v1/me").status_code == 200


# ---------------------------------------------------------------- permissions


def test_non_admin_reload_is_403(env: Env) -> None:
    env.write_policy(POLICY.replace(", gina]", "]"))
    before = snapshot(env)
    for user in ("alice", "bob", "dave"):
        assert_problem(env.post(user, "/api/v1/admin/reload"), 403, "admin")
    assert snapshot(env) == before
    assert env.get("gina", "/api/v1/me").status_code == 200  # the running policy stayed


def test_non_auditor_reading_audit_events_is_403(env: Env) -> None:
    for user in ("alice", "bob", "erin"):
        assert_problem(env.get(user, "/api/v1/audit/events"), 403, "auditor")


def test_request_invisible_to_a_bystander_is_404_like_a_missing_one(env: Env) -> None:
    req = env.ask("bob")  # orders-db: alice is neither its requester, an approver nor an auditor
    hidden = assert_problem(env.get("alice", f"{REQUESTS}/{req['id']}"), 404)
    missing = assert_problem(env.get("alice", f"{REQUESTS}/987654"), 404)
    assert hidden["detail"].replace(str(req["id"]), "N") == missing["detail"].replace("987654", "N")
    assert req["id"] not in [i["id"] for i in env.get("alice", REQUESTS).json()["items"]]
    for user in ("gina", "erin", "carol", "dave"):  # lead, owner, admin, auditor
        assert env.get(user, f"{REQUESTS}/{req['id']}").status_code == 200


def test_commands_on_an_invisible_request_are_404(env: Env) -> None:
    req = env.ask("bob")
    before = snapshot(env)
    for command in ("approve", "deny", "cancel", "revoke", "relinquish"):
        assert_problem(env.act("alice", req["id"], command), 404)
    assert_problem(env.post("alice", f"{REQUESTS}/{req['id']}/extend",
                            json={"duration": "1h", "reason": "INC-1 need more"}), 404)
    assert snapshot(env) == before


def test_cancelling_someone_elses_request_is_403(env: Env) -> None:
    req = env.ask("alice")
    before = snapshot(env)
    assert_problem(env.act("bob", req["id"], "cancel"), 403, "requester")
    assert snapshot(env) == before


def test_nul_character_in_reason_is_refused_cleanly(env: Env) -> None:
    refused(env, 422, "reason", json={**GOOD, "reason": "INC-1 investigate \u0000 orders"})


def test_nul_character_in_comment_is_refused_cleanly(env: Env) -> None:
    req = env.ask("alice")
    before = snapshot(env)
    assert_problem(env.act("bob", req["id"], "approve", comment="ok \u0000"), 422, "comment")
    assert snapshot(env) == before


@pytest.mark.parametrize("rid", ["2147483648", "9223372036854775808", "99999999999999999999",
                                 "1" * 40])
def test_request_id_beyond_the_integer_range_is_404(env: Env, rid: str) -> None:
    assert_problem(env.get("alice", f"{REQUESTS}/{rid}"), 404)


@pytest.mark.parametrize("cursor", ["\u00b2", "9223372036854775808", "1" * 40])
def test_cursor_that_is_not_a_plain_id_is_422(env: Env, cursor: str) -> None:
    assert_problem(env.get("alice", REQUESTS, params={"cursor": cursor}), 422, "cursor")


# ---------------------------------------------------------------- never a 500

NUL = "\u0000"
SURROGATE = "\ud800"
JUNK: dict[str, Any] = {
    "null": None, "zero": 0, "huge int": 10**30, "huge negative": -(10**30), "float": 1.5e308,
    "true": True, "empty string": "", "emoji": "💥", "empty array": [], "array of null": [None],
    "array of a good body": [GOOD],
    "all null": {"resource": None, "role": None, "duration": None, "reason": None},
    "all wrong types": {"resource": 10**30, "role": [], "duration": {}, "reason": 1.5},
    "nested reason": {**GOOD, "reason": {"nested": [GOOD]}},
    "unicode lookalikes": {"resource": "ördérs-db 💥", "role": "réad", "duration": "\uff11h",
                           "reason": "ÿ" * 50},
    "over-long fields": {"resource": "x" * 5000, "role": "y" * 5000, "duration": "9" * 5000},
    "overflowing duration": {**GOOD, "duration": "P99999999999W"},
    "overflowing short duration": {**GOOD, "duration": "99999999999999999999w"},
    "NUL in reason": {**GOOD, "reason": f"INC-1 investigate {NUL} orders"},
    "NUL in resource": {**GOOD, "resource": f"orders-db{NUL}"},
    "surrogate in reason": {**GOOD, "reason": f"INC-1 investigate {SURROGATE} orders"},
    "surrogate in resource": {**GOOD, "resource": SURROGATE},
    "null comment": {"comment": None}, "huge int comment": {"comment": 10**30},
    "array comment": {"comment": ["a"]}, "NUL comment": {"comment": NUL},
    "surrogate comment": {"comment": SURROGATE}, "emoji comment": {"comment": "💥" * 100},
    "over-long comment": {"comment": "c" * 3000},
    "NUL in extension reason": {"duration": "1h", "reason": f"INC-1 more time {NUL}"},
    "numeric duration": {"duration": 3600, "reason": None},
    "negative duration": {"duration": "-1h"},
    "deep unknown field": {"duration": "PT1H", "reason": "INC-1 extend please",
                           "x": {"y": {"z": [1, {"w": None}]}}},
}
RAW_JUNK: dict[str, bytes] = {
    "not utf-8": b"\xff\xfe\x00garbage", "deeply nested arrays": b"[" * 5000 + b"]" * 5000,
    "deeply nested objects": b'{"a":' * 3000 + b"1" + b"}" * 3000,
    "5000-digit number": b'{"comment": 1' + b"0" * 5000 + b"}", "NaN": b"NaN",
    "NaN field": b'{"resource": NaN}', "NUL byte": b"\x00", "two objects": b"{}{}",
    "duplicate keys": b'{"comment": "a", "comment": 1}', "BOM": b"\xef\xbb\xbf{}",
}
COMMANDS = ["approve", "deny", "cancel", "relinquish", "revoke", "extend"]
ENDPOINTS = ["create", "reload", *COMMANDS]


def _endpoint(env: Env, name: str) -> tuple[str, str]:
    """(caller, path) of a POST endpoint, with a fresh request in the state its command needs."""
    if name == "create":
        return "alice", REQUESTS
    if name == "reload":
        return "carol", "/api/v1/admin/reload"
    if name in ("relinquish", "revoke", "extend"):
        rid = env.ask("alice", resource="staging-db", reason="")["id"]  # auto-approved: active
    else:
        rid = env.ask("alice")["id"]
    user = "bob" if name in ("approve", "deny", "revoke") else "alice"
    return user, f"{REQUESTS}/{rid}/{name}"


def _server_errors(r: Any) -> str | None:
    """Why `r` breaks the contract (a 5xx, or an error that is not problem+json), else None."""
    if r.status_code >= 500:
        return str(r.status_code)
    if r.status_code >= 400:
        if not r.headers.get("content-type", "").startswith(PROBLEM):
            return f"{r.status_code} as {r.headers.get('content-type')}"
        if not {"type", "title", "status", "detail"} <= r.json().keys():
            return f"{r.status_code} without the problem keys"
    return None


def _post_raw(env: Env, endpoint: str, raw: bytes, content_type: str = "application/json") -> Any:
    user, path = _endpoint(env, endpoint)
    return env.post(user, path, content=raw, headers={"Content-Type": content_type})


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_junk_json_is_never_a_500(env: Env, endpoint: str) -> None:
    # json.dumps escapes to ASCII, so NULs and lone surrogates travel as \u escapes.
    broken = {name: why for name, junk in JUNK.items()
              if (why := _server_errors(_post_raw(env, endpoint, json.dumps(junk).encode())))}
    assert not broken, "; ".join(f"{k} -> {v}" for k, v in broken.items())


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_junk_bytes_are_never_a_500(env: Env, endpoint: str) -> None:
    broken = {name: why for name, raw in RAW_JUNK.items()
              if (why := _server_errors(_post_raw(env, endpoint, raw)))}
    assert not broken, "; ".join(f"{k} -> {v}" for k, v in broken.items())


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_odd_content_types_are_never_a_500(env: Env, endpoint: str) -> None:
    types = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
             "application/json; charset=latin1", ""]
    raw = json.dumps(GOOD).encode()
    broken = {t: why for t in types if (why := _server_errors(_post_raw(env, endpoint, raw, t)))}
    assert not broken, "; ".join(f"{k} -> {v}" for k, v in broken.items())


ODD_IDS = ["0", "-1", "2147483648", "9223372036854775808", "1" * 40, "abc", "1.5", "%F0%9F%92%A5"]
ID_CALLS = {
    "get request": ("GET", "alice", REQUESTS + "/{}"),
    **{c: ("POST", "bob", REQUESTS + "/{}/" + c) for c in COMMANDS},
    "get grant": ("GET", "carol", "/api/v1/grants/{}"),
    "delete token": ("DELETE", "carol", "/api/v1/tokens/{}"),
}


@pytest.mark.parametrize("call", ID_CALLS)
def test_odd_ids_are_never_a_500(env: Env, call: str) -> None:
    method, user, path = ID_CALLS[call]
    broken = {rid: why for rid in ODD_IDS
              if (why := _server_errors(env.call(method, user, path.format(rid), json={})))}
    assert not broken, "; ".join(f"{k} -> {v}" for k, v in broken.items())


def test_no_path_id_overflows_the_database(env: Env) -> None:
    """Every API route with a path parameter (from the OpenAPI schema), given ids past the
    32-bit id columns: a problem the caller can read, never a 500 (on PostgreSQL the
    database would refuse such an id with "integer out of range")."""
    import re

    paths = env.get(None, "/openapi.json").json()["paths"]
    calls = [(method.upper(), path) for path, ops in paths.items() if "{" in path
             for method in ops]
    assert len(calls) > 15  # the sweep sees the app's routes, not an empty list
    broken: dict[str, str] = {}
    for method, template in calls:
        for rid in ("2147483648", "99999999999999999999"):
            path = re.sub(r"\{[a-z_]*id\}", rid, template)
            path = re.sub(r"\{[a-z_]+\}", "read", path)  # names (users, resources)
            why = _server_errors(env.call(method, "carol", path, json={}))
            if why:
                broken[f"{method} {path}"] = why
    assert not broken, broken


LISTS = {"requests": ("alice", REQUESTS), "grants": ("carol", "/api/v1/grants"),
         "audit": ("dave", "/api/v1/audit/events"), "tokens": ("carol", "/api/v1/tokens")}
ODD_PARAMS: list[dict[str, str]] = [
    {"cursor": "\u00b2"}, {"cursor": "\u0661"}, {"cursor": "9223372036854775808"},
    {"cursor": "1" * 40}, {"cursor": "x"}, {"cursor": "-1"}, {"limit": "0"}, {"limit": "10" * 20},
    {"status": "nope"}, {"awaiting": "you"}, {"resource": NUL}, {"user": NUL}, {"subject": NUL},
    {"type": NUL}, {"actor": NUL}, {"requester": "💥"}, {"since": "yesterday"},
    {"since": "2026-01-01T00:00:00"}, {"until": "9999-12-31T23:59:59+00:00"},
]


@pytest.mark.parametrize("listing", LISTS)
def test_odd_list_parameters_are_never_a_500(env: Env, listing: str) -> None:
    user, path = LISTS[listing]
    broken = {json.dumps(p): why for p in ODD_PARAMS
              if (why := _server_errors(env.get(user, path, params=p)))}
    assert not broken, "; ".join(f"{k} -> {v}" for k, v in broken.items())


@pytest.mark.parametrize("listing", ["requests", "grants", "audit"])
def test_bad_cursor_detail_names_the_field_once(env: Env, listing: str) -> None:
    user, path = LISTS[listing]
    body = assert_problem(env.get(user, path, params={"cursor": "x"}), 422, "cursor")
    assert body["detail"] == "cursor: not a cursor returned by this API"


def test_bad_awaiting_detail_names_the_field_once(env: Env) -> None:
    body = assert_problem(env.get("alice", REQUESTS, params={"awaiting": "you"}), 422)
    assert body["detail"] == "awaiting: only 'me' is supported"


def test_unknown_endpoint_and_wrong_method_are_problems(env: Env) -> None:
    assert_problem(env.get("alice", "/api/v1/nope"), 404, "/api/v1/nope")
    assert_problem(env.call("PUT", "alice", REQUESTS, json=GOOD), 405)
