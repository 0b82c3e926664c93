"""The directory pages (auditors and admins): people and groups from accord.yaml and the
identity provider, each membership with where it came from; one person's groups, manager
and live access. The same queries as GET /api/v1/directory."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from accord.api.deps import db, state
from accord.db import end_read
from accord.directory import queries
from accord.errors import Forbidden, Invalid
from accord.state import AppState
from accord.web.auth import Viewer, require_viewer
from accord.web.render import page

router = APIRouter(include_in_schema=False)
PAGE = 50
SOURCES = ("all", "file", "scim", "oidc")


def _reader(request: Request, session: Session, st: AppState) -> Viewer:
    viewer = require_viewer(request, session, st)
    if not viewer.principal.can_read_all:
        raise Forbidden("the directory is for Accord auditors and admins")
    return viewer


@router.get("/directory", response_class=HTMLResponse)
def directory_page(request: Request, session: Session = Depends(db),
                   st: AppState = Depends(state)) -> HTMLResponse:
    viewer = _reader(request, session, st)
    policy = viewer.principal.policy
    source = request.query_params.get("source", "all")
    if source not in SOURCES:
        raise Invalid(f"source must be one of {', '.join(SOURCES)}", field="source")
    after = request.query_params.get("after") or None
    people = queries.list_people(session, policy=policy, after=after, limit=PAGE + 1,
                                 source=None if source == "all" else source)
    more = people[PAGE - 1].name if len(people) > PAGE else None
    people = people[:PAGE]
    groups = queries.list_groups(session, policy=policy)
    end_read(session)
    spec = policy.loaded.spec.identity
    return page(request, "directory.html", viewer, people=people, groups=groups,
                current=source, sources=SOURCES, scim=spec.scim, oidc=spec.oidc_groups,
                more_url=f"/directory?source={source}&after={more}" if more else None)


@router.get("/directory/{name}", response_class=HTMLResponse)
def person_page(name: str, request: Request, session: Session = Depends(db),
                st: AppState = Depends(state)) -> HTMLResponse:
    viewer = _reader(request, session, st)
    person = queries.person(session, policy=viewer.principal.policy, name=name, now=st.now())
    end_read(session)
    return page(request, "person.html", viewer, person=person)
