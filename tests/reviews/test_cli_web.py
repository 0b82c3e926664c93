"""`accord review ...` against a live server, and the dashboard's review pages."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.test_request_cli import run
from tests.conftest import Env, LiveServer
from tests.reviews.conftest import entry, scenario

HTML = {"Accept": "text/html"}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def test_review_commands(live: LiveServer, tmp_path: Path) -> None:
    env = live.env
    scenario(env)
    code, _, err = run(live, "alice", "review", "start", "prod-quarterly")
    assert code == 1 and "admin" in err
    code, out, _ = run(live, "frank", "review", "start", "prod-quarterly", "--json")
    assert code == 0, out
    review = json.loads(out)
    rid = str(review["id"])
    code, out, _ = run(live, "erin", "review", "list")
    assert code == 0 and "prod-quarterly" in out and "open" in out
    code, out, _ = run(live, "erin", "review", "show", rid, "--mine")
    assert code == 0 and "gina" in out and "recurring" in out and "yours to decide" in out
    code, out, _ = run(live, "dave", "review", "definitions")
    assert code == 0 and "lab-monthly" in out and "90d" in out

    alice, carol = entry(review, "alice"), entry(review, "carol")
    gina = entry(review, "gina")
    code, out, _ = run(live, "erin", "review", "certify", rid, str(alice["id"]),
                       str(gina["id"]), "--note", "still needed")
    assert code == 0 and out.count("certified") == 2
    code, _, err = run(live, "carol", "review", "certify", rid, str(carol["id"]))
    assert code == 1 and "your own access" in err
    code, _, err = run(live, "erin", "review", "revoke", rid, str(carol["id"]), "--note", "")
    assert code == 1 and "say why" in err
    code, out, _ = run(live, "erin", "review", "revoke", rid, str(carol["id"]),
                       "--note", "left the team")
    assert code == 0 and "revoked grant(s)" in out
    code, out, _ = run(live, "dave", "review", "show", rid, "--json")
    shown = json.loads(out)
    assert {e["user"]: e["status"] for e in shown["entries"]} == {
        "alice": "certified", "carol": "revoked", "erin": "pending", "gina": "certified"}
    assert all(e["decided_via"] == "api" for e in shown["entries"] if e["decided_by"])

    code, out, _ = run(live, "dave", "review", "report", rid, "--format", "csv")
    assert code == 0 and out.startswith("entry_id,user,resource") and "left the team" in out
    target = tmp_path / "r.html"
    code, out, _ = run(live, "dave", "review", "report", rid, "-f", "html", "-o", str(target))
    assert code == 0 and target.read_text().startswith("<!DOCTYPE html>")
    code, _, err = run(live, "erin", "review", "report", rid)
    assert code == 1 and "auditor or admin" in err


def _login(env: Env, user: str) -> str:
    page = env.client.get("/login")
    pre = CSRF.search(page.text)
    assert pre
    r = env.client.post("/login/token", data={"token": env.tokens[user], "csrf": pre[1],
                                              "next": "/reviews"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    listed = env.client.get("/reviews", headers=HTML)
    assert listed.status_code == 200, listed.text
    token = CSRF.search(listed.text)
    assert token
    return token[1]


def test_review_pages(env: Env) -> None:
    scenario(env)
    csrf = _login(env, "frank")
    assert "Start a review now" in env.client.get("/reviews", headers=HTML).text
    r = env.client.post("/reviews", data={"definition": "prod-quarterly", "csrf": csrf},
                        headers=HTML, follow_redirects=False)
    assert r.status_code == 303, r.text
    rid = int(r.headers["location"].split("/")[2].split("?")[0])
    review = env.get("dave", f"/api/v1/reviews/{rid}").json()
    assert review["trigger"] == "manual" and review["started_by"] == "frank"
    env.client.post("/logout", data={"csrf": csrf}, headers=HTML)

    csrf = _login(env, "erin")
    listed = env.client.get("/reviews", headers=HTML).text
    assert f'href="/reviews/{rid}?mine=1"><strong>3</strong>' in listed
    page = env.client.get(f"/reviews/{rid}", headers=HTML).text
    carol, alice = entry(review, "carol"), entry(review, "alice")
    assert f'action="/reviews/{rid}/entries/{carol["id"]}/certify"' in page
    assert "erin: <strong>write</strong>" not in page  # her own entry is not hers to see
    forged = env.client.post(f"/reviews/{rid}/entries/{carol['id']}/revoke",
                             data={"note": "x", "csrf": "forged"}, headers=HTML)
    assert forged.status_code == 403
    r = env.client.post(f"/reviews/{rid}/entries/{carol['id']}/revoke",
                        data={"note": "left the team", "csrf": csrf}, headers=HTML,
                        follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith(f"#entry-{carol['id']}")
    after = env.client.get(r.headers["location"], headers=HTML).text
    assert "Access revoked" in after and "left the team" in after
    # A refusal sends her back to the campaign's page (not left on the post's URL),
    # which says why.
    twice = env.client.post(f"/reviews/{rid}/entries/{carol['id']}/certify",
                            data={"csrf": csrf}, headers=HTML, follow_redirects=False)
    assert twice.status_code == 303
    assert twice.headers["location"] == f"/reviews/{rid}#entry-{carol['id']}"
    assert "already revoked" in env.client.get(twice.headers["location"], headers=HTML).text
    own = entry(review, "erin", "write")  # not shown to her, but a form can be forged
    mine = env.client.post(f"/reviews/{rid}/entries/{own['id']}/certify",
                           data={"csrf": csrf}, headers=HTML)
    assert mine.status_code == 200 and "your own access" in mine.text
    (refused,) = env.events(type="review.refused")
    assert refused["actor"] == {"kind": "user", "id": "erin", "via": "web"}
    assert refused["data"]["entry_id"] == own["id"]
    bare = env.client.post(f"/reviews/{rid}/entries/{alice['id']}/revoke",
                           data={"csrf": csrf, "note": " \x00"}, headers=HTML)
    assert bare.status_code == 200 and "say why the access should go" in bare.text
    assert f'action="/reviews/{rid}/entries/{alice["id"]}/certify"' in bare.text  # still open
    r = env.client.post(f"/reviews/{rid}/entries/{alice['id']}/certify",
                        data={"csrf": csrf}, headers=HTML, follow_redirects=False)
    assert r.status_code == 303
    (decided,) = [e for e in env.events(type="review.decided")
                  if e["data"]["entry_id"] == alice["id"]]
    assert decided["actor"] == {"kind": "user", "id": "erin", "via": "web"}
    assert env.client.get(f"/reviews/{rid}/report", headers=HTML).status_code == 403
    env.client.post("/logout", data={"csrf": csrf}, headers=HTML)

    _login(env, "dave")
    rep = env.client.get(f"/reviews/{rid}/report", headers=HTML)
    assert rep.status_code == 200 and "left the team" in rep.text
    assert env.client.get("/reviews/9999", headers=HTML).status_code == 404
