"""A real `accord serve --workers 2` with JSON logs: a scrape sums what every process
counted (the HTTP workers' requests, the parent's gateway), every log line is a JSON
object, and no token or password created during the run appears in the logs."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests import scrape
from tests.gateway.conftest import DSN_ENV, World, free_port, policy_text
from tests.gateway.test_crash import ACCORD, _wait_port

pytestmark = pytest.mark.postgres

ME = "/api/v1/me"


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of `log` as a JSON object with the fields every line has."""
    out = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        out.append(record)
    return out


def test_a_scrape_sums_every_process_and_the_logs_are_json_without_secrets(
        world: World, tmp_path: Path) -> None:
    gw_port, http_port = free_port(), free_port()
    config = tmp_path / "accord.yaml"
    config.write_text(policy_text(world.resource, world.database, port=gw_port),
                      encoding="utf-8")
    data = tmp_path / "data"
    signing_secret = "slk_" + secrets.token_hex(16)  # a configured secret: never logged
    env = {**os.environ, "ACCORD_DATA_DIR": str(data), DSN_ENV: world.target_dsn,
           "ACCORD_DATABASE_URL": world.engine.url.render_as_string(False).replace(
               "+psycopg", ""),
           "ACCORD_LOG_FORMAT": "json", "ACCORD_ACCESS_LOG": "1",
           "ACCORD_SLACK_SIGNING_SECRET": signing_secret}
    grant = world.grant("alice", "read")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([ACCORD, "serve", "--workers", "2", "--port", str(http_port),
                                 "--config", str(config), "--log-level", "info"],
                                env=env, stdout=out, stderr=out)
    created: list[str] = [signing_secret]  # every secret of the run, looked for at the end
    try:
        _wait_port(gw_port, proc, log)
        _wait_port(http_port, proc, log)
        url = f"http://127.0.0.1:{http_port}"
        # An operator issues a token while the server runs (its own output is not a log).
        issued = subprocess.run([ACCORD, "token", "issue", "alice", "--config", str(config)],
                                env=env, capture_output=True, text=True, timeout=60,
                                check=True)
        token = issued.stdout.strip()
        created.append(token)
        headers = {"Authorization": f"Bearer {token}"}

        def me(_: int) -> int:  # a connection each: the kernel hands them to either worker
            return httpx.get(url + ME, headers=headers, timeout=10).status_code

        made = 0
        with ThreadPoolExecutor(8) as pool:
            while made < 800:
                assert set(pool.map(me, range(40))) == {200}
                made += 40
                served = Counter(r["pid"] for r in json_lines(log) if r.get("route") == ME)
                if len(served) >= 2 and sum(served.values()) == made:
                    break
        assert len(served) == 2, f"one worker served all {made} calls: {served}"
        refused = httpx.get(url + ME, headers={"Authorization": "Bearer acc_" +
                                               secrets.token_urlsafe(32)}, timeout=10)
        created.append(refused.request.headers["authorization"].split()[1])
        assert refused.status_code == 401

        # The gateway runs in the parent: a session, a statement, a refused login.
        r = httpx.post(f"{url}/api/v1/grants/{grant['id']}/connect", headers=headers,
                       timeout=10)
        assert r.status_code == 200, r.text
        conn_token = r.json()
        created.append(conn_token["token"])
        with world.connect(conn_token, port=gw_port) as conn:
            assert conn.execute("select count(*) from orders").fetchone() == (100,)
        wrong = "acg_" + secrets.token_urlsafe(32)
        created.append(wrong)
        with pytest.raises(psycopg.OperationalError):
            world.connect({**conn_token, "token": wrong}, port=gw_port)

        def scraped() -> str:
            page = httpx.get(url + "/metrics", timeout=10)
            assert page.status_code == 200
            return page.text

        deadline = time.monotonic() + 30
        while True:  # the gateway adds its statements at its next watch (0.5 s)
            text = scraped()
            if scrape.value(text, "accord_gateway_statements_total") >= 1:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)  # another process's work: nothing to await but its counter
        # Both workers' calls in one scrape, whichever worker answered it.
        assert scrape.value(text, "accord_http_requests_total", route=ME, method="GET",
                            status="200") == made
        assert scrape.value(text, "accord_http_requests_total", route=ME, method="GET",
                            status="401") == 1
        assert scrape.value(text, "accord_http_request_duration_seconds_count", route=ME,
                            method="GET") == made + 1
        gw = {"protocol": "postgres"}
        assert scrape.value(text, "accord_gateway_sessions_total", **gw) == 1
        assert scrape.value(text, "accord_gateway_sessions_open", **gw) == 0
        assert scrape.value(text, "accord_gateway_statements_total", **gw) >= 1
        assert scrape.value(text, "accord_gateway_refusals_total", kind="login", **gw) == 1
        assert scrape.value(text, "accord_ledger_size") > 0  # read from the database
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    records = json_lines(log)
    calls = [r for r in records if r["logger"] == "accord.access"]
    assert calls and all(r["request_id"] and r["route"] for r in calls)
    assert {r["user"] for r in calls if r["route"] == ME and r["status"] == 200} == {"alice"}
    assert len({r["request_id"] for r in calls}) == len(calls)
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's lines too
    text = log.read_text()
    for secret in created:
        assert secret not in text, "a secret reached the logs"
    assert (data / "metrics" / f"serve-{http_port}").is_dir()
