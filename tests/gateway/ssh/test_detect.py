"""Detectors on SSH commands: an exec's command line, and a line typed at a shell, matching
`detect.ssh_commands.patterns` (sudo, rm -rf, reading secrets by default) raise alerts with
the event (the recording chunk, for typed lines) as evidence."""

from __future__ import annotations

import asyncio

import pytest

from accord.gateway.ssh.lib import asyncssh
from accord.ledger.upkeep import integrate_all
from accord.worker.job_runner import detect_all
from tests.gateway.ssh.conftest import World

pytestmark = pytest.mark.ssh


def test_commands_matching_patterns_raise_alerts(world: World) -> None:
    grant = world.grant("alice")
    token = world.token(grant)
    r = world.ssh(token, "cat /etc/shadow 2>/dev/null; true")
    assert r.returncode == 0, r.stderr

    async def run() -> None:
        async with asyncssh.connect(
                "127.0.0.1", world.port, username=f"alice+{world.resource}",
                password=token["token"], known_hosts=None, client_keys=None,
                agent_path=None, config=None, preferred_auth="password") as conn:
            proc = await conn.create_process(term_type="xterm")
            # typed with a correction: "sudx" rubbed out to "sud", then "o -n true"
            proc.stdin.write("sudx\x7fo -n true; echo done-$((4+4))\r")
            await proc.stdout.readuntil("done-8")
            proc.stdin.write("echo harmless\rexit\r")
            await proc.stdout.read()
            await proc.wait()

    asyncio.run(run())
    chunks = world.events("gateway.ssh_chunk", grant["id"])
    flagged = [f for c in chunks for f in c["data"].get("flagged", [])]
    assert flagged == [{"pattern": "sudo", "line": "sudo -n true; echo done-$((4+4))"}]
    st = world.env.st
    integrate_all(st.sessions)
    detect_all(st.sessions, st.policies.current, st.now)
    r = world.env.get("dave", "/api/v1/alerts", params={"rule": "ssh_commands"})
    alerts = [a for a in r.json()["items"] if a["subject"] == f"grant:{grant['id']}"]
    by_pattern = {a["data"]["pattern"]: a for a in alerts}
    assert set(by_pattern) == {"secrets", "sudo"}
    assert by_pattern["secrets"]["data"]["line"] == "cat /etc/shadow 2>/dev/null; true"
    assert by_pattern["sudo"]["data"]["chunk"] is not None
    assert all(a["severity"] == "high" and len(a["evidence"]) == 1 for a in alerts)
