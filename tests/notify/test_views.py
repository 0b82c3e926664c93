"""Notification preferences over the API: own, someone else's, bad input, the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from accord.notify.models import NotificationPreference
from tests.conftest import Env, make_env
from tests.notify.samples import notify_policy

ME = "/api/v1/me/notifications"
CHANGED = "notification.preferences_changed"


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    """Email configured (nothing is sent here), Slack not."""
    e = make_env(sessions, tmp_path, notify_policy())
    with e.client:
        yield e


def _put(env: Env, user: str, body: dict[str, Any], path: str = ME) -> Any:
    return env.call("PUT", user, path, json=body)


def _stored(env: Env, user: str) -> NotificationPreference | None:
    with env.st.sessions() as s:
        return s.execute(select(NotificationPreference)
                         .where(NotificationPreference.user == user)).scalar_one_or_none()


def test_nothing_chosen_means_every_available_channel_immediately(env: Env) -> None:
    r = env.get("alice", ME)
    assert r.status_code == 200, r.text
    assert r.json() == {"user": "alice", "channels": None, "effective_channels": ["email"],
                        "available_channels": ["email"], "mode": "immediate",
                        "digest_hour": None, "updated_at": None, "updated_by": None}
    # dave has no address at all: nothing is available to him
    assert env.get("dave", ME).json()["available_channels"] == []


def test_changing_your_own_preference_is_recorded_in_the_ledger(env: Env) -> None:
    before = len(env.events(type=CHANGED))
    r = _put(env, "alice", {"channels": ["email"], "mode": "digest", "digest_hour": 9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["channels"], body["mode"], body["digest_hour"]) == (["email"], "digest", 9)
    assert body["updated_by"] == "alice" and body["updated_at"]
    assert env.get("alice", ME).json() == body
    [event] = env.events(type=CHANGED)[before:]
    assert event["subject"] == "user:alice"
    assert event["actor"] == {"kind": "user", "id": "alice", "via": "api"}
    assert event["data"] == {
        "user": "alice", "channels": ["email"], "mode": "digest", "digest_hour": 9,
        "previous": {"channels": None, "mode": "immediate", "digest_hour": None}}
    # the same preference again changes nothing and records nothing
    assert _put(env, "alice", {"channels": ["email"], "mode": "digest",
                               "digest_hour": 9}).status_code == 200
    assert len(env.events(type=CHANGED)) == before + 1
    # back to immediate, and to every available channel (PUT replaces the whole choice)
    r = _put(env, "alice", {})
    assert (r.json()["channels"], r.json()["mode"], r.json()["digest_hour"]) == (
        None, "immediate", None)
    assert env.events(type=CHANGED)[-1]["data"]["previous"] == {
        "channels": ["email"], "mode": "digest", "digest_hour": 9}
    # an empty list is a choice too: no personal messages
    r = _put(env, "alice", {"channels": []})
    assert (r.json()["channels"], r.json()["effective_channels"]) == ([], [])


def test_other_users_preferences_need_admin_to_change_and_reader_to_see(env: Env) -> None:
    path = "/api/v1/users/alice/notifications"
    digest = {"mode": "digest", "digest_hour": 7}
    for method in ("GET", "PUT"):
        r = env.call(method, "bob", path, json=digest if method == "PUT" else None)
        assert r.status_code == 403, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 403
    assert _stored(env, "alice") is None
    # an auditor reads, but does not change
    assert env.get("dave", path).status_code == 200
    assert _put(env, "dave", digest, path).status_code == 403
    # an admin changes it, and the ledger names the admin
    r = _put(env, "carol", digest, path)
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "alice" and r.json()["updated_by"] == "carol"
    event = env.events(type=CHANGED)[-1]
    assert event["actor"]["id"] == "carol" and event["data"]["user"] == "alice"
    # the owner sees it too, and may use the same path for themselves
    assert env.get("alice", ME).json()["mode"] == "digest"
    assert env.get("alice", path).status_code == 200
    assert env.get("carol", "/api/v1/users/nobody/notifications").status_code == 404


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"channels": ["sms"]}, 422, 'channels[0]: unknown channel "sms"; choose from email, slack'),
    ({"channels": ["email", "slack"]}, 422, "channels[1]: slack is not configured"),
    ({"channels": ["email", "email"]}, 422, "channels[1]: email is listed twice"),
    ({"mode": "digest", "digest_hour": 24}, 422,
     "digest_hour: 24 is not an hour from 0 to 23"),
    ({"mode": "digest", "digest_hour": -1}, 422,
     "digest_hour: -1 is not an hour from 0 to 23"),
    ({"mode": "digest"}, 422, "digest_hour: required when mode is digest"),
    ({"mode": "immediate", "digest_hour": 9}, 422,
     "digest_hour: only applies when mode is digest"),
    ({"mode": "weekly"}, 422, "mode: Input should be 'immediate' or 'digest'"),
    ({"channels": "email"}, 422, "channels: Input should be a valid list"),
    ({"colour": "blue"}, 422, "colour: unknown field"),
])
def test_bad_input_is_a_problem_and_changes_nothing(env: Env, body: dict[str, Any],
                                                    status: int, detail: str) -> None:
    before = len(env.events(type=CHANGED))
    r = _put(env, "alice", body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == status and problem["instance"] == ME
    assert problem["detail"].startswith(detail), problem["detail"]
    assert _stored(env, "alice") is None
    assert len(env.events(type=CHANGED)) == before


def test_a_channel_without_your_address_and_malformed_json_are_refused(env: Env) -> None:
    r = _put(env, "dave", {"channels": ["email"]})
    assert r.status_code == 422
    assert r.json()["detail"] == ("channels[0]: dave has no email address "
                                  "(users.dave.email in accord.yaml)")
    r = env.call("PUT", "alice", ME, content=b'{"mode": ',
                 headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert env.call("PUT", None, ME, json={}).status_code == 401
