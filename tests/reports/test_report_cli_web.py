"""`accord report` on a real database file, the web download page, Unicode in the PDF, and
gateway usage in the report."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from accord.api.app import create_app
from accord.bootstrap import build_state
from accord.cli.main import app
from accord.db import transaction
from accord.identity import service as identity
from accord.ledger.events import Actor, format_time
from accord.reports.render_pdf import _fonts
from accord.settings import Settings
from accord.worker.job_runner import detect_all
from tests.conftest import POLICY, Env, LiveServer, make_env
from tests.reports.test_reports import all_events, report, scenario

runner = CliRunner()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, str], TestClient, dict[str, str]]]:
    """An Accord on a SQLite file, driven through its API, for operator commands to read."""
    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    env = {"ACCORD_DATA_DIR": str(tmp_path / "data"), "ACCORD_CONFIG": str(config),
           "ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'data' / 'accord.db'}"}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="always")
    tokens = {}
    with transaction(st.sessions) as session:
        for user in ("alice", "bob", "carol"):
            _row, tokens[user] = identity.issue(session, policy=st.policies.current, user=user,
                                                actor=Actor.system("cli"), now=st.now())
    with TestClient(create_app(st)) as client:
        yield env, client, tokens
    st.sessions.kw["bind"].dispose()


def test_cli_reports(served: tuple[dict[str, str], TestClient, dict[str, str]],
                     tmp_path: Path) -> None:
    env, client, tokens = served

    def call(user: str, path: str, body: dict[str, str] | None = None) -> int:
        r = client.post(path, json=body, headers={"Authorization": f"Bearer {tokens[user]}"})
        assert r.status_code in (200, 201), r.text
        return int(r.json()["id"])

    rid = call("alice", "/api/v1/requests", {"resource": "orders-db", "role": "read",
                                             "duration": "1h", "reason": "INC-7 from the cli"})
    call("bob", f"/api/v1/requests/{rid}/approve")
    call("carol", f"/api/v1/requests/{rid}/approve")
    call("alice", "/api/v1/requests", {"resource": "staging-db", "role": "read",
                                       "duration": "1h", "reason": ""})

    out = tmp_path / "q.json"
    r = runner.invoke(app, ["report", "access", "--from", "2000-01-01", "--to", "2100-01-01",
                            "--out", str(out)], env=env)
    assert r.exit_code == 0, r.output
    assert "sha256 " + hashlib.sha256(out.read_bytes()).hexdigest() in r.stderr
    body = json.loads(out.read_text())  # the format follows the file's suffix
    assert body["totals"]["requests"] == 2 and body["totals"]["human"] == 1
    assert body["generated_by"].endswith("(cli)")
    assert all(c["ok"] for c in body["ledger"]["checks"])
    assert not list(tmp_path.glob("*.partial"))

    pdf = tmp_path / "alice.pdf"
    r = runner.invoke(app, ["report", "user", "alice", "--out", str(pdf)], env=env)
    assert r.exit_code == 0, r.output
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(pdf).pages).split())
    assert "Access report for user alice" in text and "INC-7 from the cli" in text
    r = runner.invoke(app, ["report", "resource", "staging-db", "--format", "csv", "--out",
                            "-"], env=env)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("request_id,in_period,resource")
    assert r.stdout.count("staging-db") == 1

    empty = tmp_path / "empty.json"
    r = runner.invoke(app, ["report", "access", "--from", "1990-01-01", "--to", "1990-01-02",
                            "--out", str(empty)], env=env)
    assert r.exit_code == 0, r.output
    assert "no ledger events in the period" in r.stderr and "None" not in r.stderr

    r = runner.invoke(app, ["report", "access", "--out", str(out)], env=env)
    assert r.exit_code == 2 and "--from" in r.stderr
    r = runner.invoke(app, ["report", "access", "--from", "2026-01-01", "--to", "2025-01-01",
                            "--out", str(out)], env=env)
    assert r.exit_code == 2 and "--to" in r.stderr
    r = runner.invoke(app, ["report", "user", "mallory", "--out", str(tmp_path / "m.pdf")],
                      env=env)
    assert r.exit_code == 1 and "mallory" in r.stderr
    assert not (tmp_path / "m.pdf").exists()

    events = client.get("/api/v1/audit/events", params={"type": "report.generated"},
                        headers={"Authorization": f"Bearer {tokens['carol']}"}).json()["items"]
    assert [(e["event"]["data"]["kind"], e["event"]["actor"]["via"]) for e in events] == \
        [("access", "cli"), ("user", "cli"), ("resource", "cli"), ("access", "cli")]


def _login(env: Env, user: str) -> None:
    """Sign in on the dashboard with an API token (the reports page's router included as
    `accord.api.app` will include it)."""
    page = env.client.get("/login")
    pre = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert pre
    r = env.client.post("/login/token", data={"token": env.tokens[user], "csrf": pre[1],
                                              "next": "/reports"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def test_web_download(env: Env) -> None:
    start, end, ids = scenario(env)
    _login(env, "dave")
    page = env.client.get("/reports")
    assert page.status_code == 200, page.text
    assert "Download a report" in page.text and "No report has been generated yet" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    form = {"kind": "access", "start": format_time(start), "end": format_time(end),
            "format": "csv", "csrf": csrf[1]}
    r = env.client.post("/reports", data=form)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert hashlib.sha256(r.content).hexdigest() == r.headers["x-accord-report-sha256"]
    assert f"\r\n{ids['approved']},yes,orders-db" in r.text
    (_i, event), = all_events(env, type="report.generated")
    assert event["actor"] == {"kind": "user", "id": "dave", "via": "web"}
    listed = env.client.get("/reports").text
    assert event["data"]["sha256"][:16] in listed

    refused = env.client.post("/reports", data={**form, "csrf": "forged"})
    assert refused.status_code == 403
    bad = env.client.post("/reports", data={**form, "kind": "user"})
    assert bad.status_code == 422 and "choose a user" in bad.text
    assert len(all_events(env, type="report.generated")) == 1


def test_web_page_is_for_readers(env: Env) -> None:
    _login(env, "alice")
    assert env.client.get("/reports").status_code == 403


@pytest.mark.skipif(_fonts() is None, reason="DejaVu fonts (fonts-dejavu-core) not installed")
def test_pdf_keeps_unicode(env: Env) -> None:
    env.ask("alice", reason="INC-9 — Zürich ✓ réseau Ωμέγα Привет")
    env.clock.advance(seconds=1)  # user reports run up to now (exclusive)
    r = report(env, "/api/v1/reports/user/alice", "pdf")
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(r.content)).pages)
    assert "INC-9 — Zürich ✓ réseau Ωμέγα Привет" in text


def test_gateway_usage_is_reported(env: Env) -> None:
    """Usage comes from the gateway's per-grant table; the gateway itself is tested in its
    own suite, so its row is written here as the gateway would write it."""
    try:
        models = importlib.import_module("accord.gateway.models")
    except ImportError:
        pytest.skip("this tree has no gateway")
    usage = getattr(models, "GatewayUsage", None)
    if usage is None:
        pytest.skip("the gateway keeps no usage table")
    rid = env.ask("gina", "staging-db", "read", "2h", "")["id"]
    grant_id = env.get("gina", f"/api/v1/requests/{rid}").json()["grant"]["id"]
    now = env.clock()
    with transaction(env.st.sessions) as session:
        session.add(usage(grant_id=grant_id, first_used_at=now + timedelta(minutes=1),
                          last_used_at=now + timedelta(minutes=9), statement_count=42,
                          violation_count=0, session_count=2))
    env.clock.advance(minutes=10)
    body = report(env, "/api/v1/reports/resource/staging-db", "json").json()
    assert body["usage_available"] is True
    (line,) = body["requests"]
    assert line["grant"]["usage"]["statements"] == 42
    assert line["grant"]["usage"]["sessions"] == 2
    assert body["totals"]["statements"] == 42 and body["totals"]["used_grants"] == 1
    pdf = report(env, "/api/v1/reports/resource/staging-db", "pdf")
    text = " ".join("".join(p.extract_text() for p in PdfReader(
        io.BytesIO(pdf.content)).pages).split())
    assert "42 statements" in text


GLASS = POLICY.replace("  auditors: [dave]\n", "  auditors: [dave]\n  oncall: [erin]\n") + \
    "break_glass: {groups: [oncall], reviewers: [admins], max_duration: 1h, " \
    "remind_every: 4h}\n"


@pytest.fixture
def glass(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Env]:
    e = make_env(sessions, tmp_path, GLASS)
    with e.client:
        yield e


def test_break_glass_review_and_its_alert(glass: Env) -> None:
    start = glass.clock()
    glass.clock.advance(minutes=1)
    r = glass.post("erin", "/api/v1/requests", json={
        "resource": "orders-db", "role": "admin", "duration": "30m", "emergency": True,
        "reason": "SEV1: orders table locked, paging did not answer"})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    detect_all(glass.st.sessions, glass.st.policies.current, glass.st.now)  # the worker's
    glass.clock.advance(minutes=20)
    r = glass.post("frank", f"/api/v1/requests/{rid}/review",
                   json={"verdict": "justified", "note": "SEV1 confirmed by on-call"})
    assert r.status_code == 200, r.text
    end = glass.clock.advance(minutes=1)
    period = {"from": format_time(start), "to": format_time(end)}
    body = report(glass, "/api/v1/reports/access", "json", **period).json()
    (line,) = body["requests"]
    assert (line["decided_how"], line["emergency"]) == ("break_glass", True)
    assert line["review"]["verdict"] == "justified" and line["review"]["by"] == "frank"
    orders = next(t for t in body["resources"] if t["name"] == "orders-db")
    assert (orders["emergency"], orders["automatic"], orders["human"]) == (1, 0, 0)
    (alert,) = [a for a in body["alerts"] if a["rule"] == "break_glass"]
    assert (alert["resource"], alert["subject"]) == ("orders-db", f"request:{rid}")
    raised = glass.get("dave", "/api/v1/alerts").json()["items"]
    assert body["totals"]["alerts"] == len(raised)  # every alert of the period, once
    assert orders["alerts"] == len([a for a in raised if a["resource"] == "orders-db"])
    created = [i for i, e in all_events(glass, type="request.created")
               if e["data"]["request_id"] == rid]
    assert set(created) <= set(alert["evidence"])
    pdf = report(glass, "/api/v1/reports/access", "pdf", **period)
    text = " ".join("".join(p.extract_text() for p in PdfReader(
        io.BytesIO(pdf.content)).pages).split())
    assert "break-glass, reviewed justified by frank" in text
    assert "SEV1 confirmed by on-call" in text and "break_glass" in text


def test_an_auditor_with_only_a_token_reports_over_the_api(live: LiveServer,
                                                          tmp_path: Path) -> None:
    live.env.ask("alice", reason="INC-77 over the api")
    env = {"ACCORD_URL": live.url, "ACCORD_TOKEN": live.env.tokens["dave"],
           "ACCORD_CONFIG": str(tmp_path / "nowhere.yaml"),  # no database, no config here
           "ACCORD_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}"}
    out = tmp_path / "q.json"
    r = runner.invoke(app, ["report", "access", "--from", "2000-01-01", "--to", "2100-01-01",
                            "--out", str(out)], env=env)
    assert r.exit_code == 0, r.output
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in r.stderr and live.url in r.stderr
    body = json.loads(out.read_text())
    assert body["totals"]["requests"] >= 1 and "dave" in body["generated_by"]
    assert not (tmp_path / "none.db").exists()
    r = runner.invoke(app, ["report", "user", "alice", "--format", "csv", "--out", "-",
                            "--from", "2000-01-01", "--to", "2100-01-01"],
                      env=env)
    assert r.exit_code == 0 and "INC-77 over the api" in r.stdout
    denied = runner.invoke(app, ["report", "access", "--from", "2000-01-01", "--to",
                                 "2100-01-01", "--out", str(tmp_path / "x.pdf")],
                           env={**env, "ACCORD_TOKEN": live.env.tokens["alice"]})
    assert denied.exit_code == 1 and "auditor" in denied.stderr
    assert not (tmp_path / "x.pdf").exists() and not list(tmp_path.glob("*.partial"))
    made = [e for e in live.env.events(type="report.generated")]
    assert [e["actor"]["id"] for e in made][-2:] == ["dave", "dave"]
