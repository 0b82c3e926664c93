"""ACCORD_LOG_FORMAT=json: one object per line, with the call's request id, route and user;
secrets never written, whatever a message or a traceback holds."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from accord import logs
from accord.settings import Settings
from tests.conftest import Env


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged, formatted as JSON (as `logs.configure("json")` does)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_each_call_s_lines_carry_its_request_id_route_and_user(
        env: Env, captured: io.StringIO) -> None:
    env.st.settings = Settings.from_env({"ACCORD_DATA_DIR": str(env.policy_path.parent),
                                         "ACCORD_ACCESS_LOG": "1"})
    from fastapi.testclient import TestClient

    from accord.api.app import create_app

    with TestClient(create_app(env.st), raise_server_exceptions=False) as client:
        r = client.get("/api/v1/requests/12345", headers=env.headers("bob"))
        assert r.status_code == 404
        anonymous = client.get("/healthz")
    access = [rec for rec in lines(captured) if rec["logger"] == "accord.access"]
    assert [(a["route"], a["status"], a.get("user")) for a in access] == [
        ("/api/v1/requests/{request_id}", 404, "bob"), ("/healthz", 200, None)]
    assert access[0]["request_id"] == r.headers["x-request-id"]
    assert access[1]["request_id"] == anonymous.headers["x-request-id"]
    for rec in access:
        assert {"time", "level", "logger", "message", "pid", "method",
                "duration_ms"} <= rec.keys()
        assert rec["time"].endswith("Z") and rec["level"] == "info"
    assert all(env.tokens["bob"] not in line for line in captured.getvalue().splitlines())


def test_secrets_are_replaced_in_messages_and_tracebacks(captured: io.StringIO) -> None:
    api, gateway, scim = "acc_" + "x" * 43, "acg_" + "Y-z_" * 10, "accscim_" + "q" * 40
    log = logging.getLogger("accord.test")
    log.warning("called with %s and %s", api, gateway)
    try:
        raise ValueError(f"bad token {scim} for postgresql://u:hunter2@db/x password=s3cret")
    except ValueError:
        log.exception("failed")
    text = captured.getvalue()
    for secret in (api, gateway, scim, "hunter2", "s3cret"):
        assert secret not in text
    first, second = lines(captured)
    assert first["message"] == "called with acc_*** and acg_***"
    assert "postgresql://u:***@db/x password=***" in second["exception"]
    # what is not a secret stays as it was
    assert logs.redact("accord_u_alice_orders logged in; 3 tokens") == (
        "accord_u_alice_orders logged in; 3 tokens")


def test_text_lines_name_the_request_too() -> None:
    record = logging.LogRecord("accord.x", logging.INFO, __file__, 1, "hello %s",
                               ("acc_" + "a" * 40,), None)
    ctx = logs.RequestContext()
    token = logs.begin(ctx)
    try:
        line = logs.TextFormatter().format(record)
    finally:
        logs.end(token)
    assert line.endswith(f"INFO accord.x hello acc_*** [request {ctx.id}]")


def test_the_format_is_checked() -> None:
    with pytest.raises(ValueError, match="ACCORD_LOG_FORMAT must be text or json"):
        Settings.from_env({"ACCORD_LOG_FORMAT": "xml"})
    assert Settings.from_env({"ACCORD_LOG_FORMAT": "JSON"}).log_format == "json"
    assert Settings.from_env({}).log_format == "text"


def test_outgoing_urls_are_never_logged_at_any_level() -> None:
    """httpx logs each call's full URL at INFO (httpcore at DEBUG); a Slack or webhook URL
    is a credential, so every Accord process holds both at WARNING, even at debug."""
    from accord import logs as accord_logs

    for fmt in accord_logs.FORMATS:
        loggers = accord_logs.config(fmt, "debug")["loggers"]
        assert loggers["httpx"]["level"] == "WARNING"
        assert loggers["httpcore"]["level"] == "WARNING"
