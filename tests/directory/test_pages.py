"""/directory and /directory/{name}: what auditors and admins see of the directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import Env, make_env
from tests.directory.test_consequences import DIRECTORY_POLICY, group, person, set_active
from tests.web.test_pages import is_html_page, login


@pytest.fixture
def env(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, DIRECTORY_POLICY + "web: {local_login: true}\n")
    with e.client:
        yield e


def test_the_directory_page_shows_sources_and_a_person_their_groups(env: Env) -> None:
    person(env, "alice")
    person(env, "mia")
    person(env, "sam", manager="mia")
    group(env, "On Call", "alice", "sam")
    set_active(env, "mia", False)
    b = login(env, "dave")  # an auditor
    r = b.get("/directory")
    is_html_page(r, 200)
    assert 'href="/directory/sam"' in r.text and ">file+scim<" in r.text
    assert "deactivated" in r.text and "On Call" in r.text
    only = b.get("/directory?source=file").text
    assert 'href="/directory/sam"' not in only and 'href="/directory/bob"' in only

    r = b.get("/directory/sam")
    is_html_page(r, 200)
    assert "On Call <small>(scim)</small>" in r.text
    assert 'href="/directory/mia"' in r.text  # her manager, though deactivated
    alice = b.get("/directory/alice").text
    assert "engineers <small>(file)</small>" in alice and "On Call <small>(scim)</small>" in alice


def test_only_auditors_and_admins_see_the_directory(env: Env) -> None:
    b = login(env, "alice")
    assert 'href="/directory"' not in b.get("/my").text
    r = b.get("/directory")
    is_html_page(r, 403)
    assert "auditors and admins" in r.text
    r = login(env, "frank").get("/directory/nobody")  # an admin; nobody is nobody
    is_html_page(r, 404)
