"""The SSH gateway end to end: a real OpenSSH server behind it; OpenSSH's `ssh` and asyncssh
in front of it. Grants come from the real API; recordings are read back from the ledger and
the content-addressed storage."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

from accord.db import transaction
from accord.gateway.models import GatewayRecording
from accord.gateway.ssh.cast import parse
from accord.gateway.ssh.lib import asyncssh
from tests.gateway.ssh.conftest import World

pytestmark = pytest.mark.ssh


def cast_of(world: World, grant_id: int, channel: int | None = None) -> bytes:
    """A channel's recording, its chunks checked against their events."""
    chunks = world.events("gateway.ssh_chunk", grant_id)
    assert chunks, "no recording"
    session = chunks[-1]["data"]["session"]
    channel = channel or chunks[-1]["data"]["channel"]
    mine = sorted((c["data"] for c in chunks if c["data"]["session"] == session
                   and c["data"]["channel"] == channel), key=lambda d: d["index"])
    assert [d["index"] for d in mine] == list(range(len(mine)))
    assert mine[-1]["final"] is True
    out = b""
    with transaction(world.env.st.sessions) as s:
        for d in mine:
            row = s.get(GatewayRecording, d["sha256"])
            assert row is not None and hashlib.sha256(row.data).hexdigest() == d["sha256"]
            out += row.data
    return out


def test_exec_with_a_token_runs_and_is_recorded(world: World) -> None:
    grant = world.grant("alice")
    token = world.token(grant)
    assert token["protocol"] == "ssh"
    assert token["command"].startswith(f"ssh -p {world.port} ")
    assert f"alice+{world.resource}@127.0.0.1" in token["command"]
    r = world.ssh(token, "echo hello-from-upstream; echo oops >&2; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == "hello-from-upstream\n"
    assert "oops" in r.stderr
    execs = world.events("gateway.ssh_exec", grant["id"])
    assert [(e["data"]["command"], e["data"]["exit_status"]) for e in execs] == [
        ("echo hello-from-upstream; echo oops >&2; exit 3", 3)]
    header, events = parse(cast_of(world, grant["id"]))
    assert header["version"] == 2
    assert header["command"] == "echo hello-from-upstream; echo oops >&2; exit 3"
    assert "hello-from-upstream\n" in "".join(t for _, c, t in events if c == "o")
    opened = world.events("gateway.session_opened", grant["id"])
    assert opened and opened[-1]["data"]["upstream_role"]


def test_stdin_reaches_the_command(world: World) -> None:
    grant = world.grant("erin")
    r = world.ssh(world.token(grant, "erin"), "wc -c", stdin="twelve bytes")
    assert r.returncode == 0 and r.stdout.strip() == "12", r.stderr


def test_an_upload_is_recorded_whole(world: World) -> None:
    """About 1 MB on stdin through the real `ssh` client: the command gets every byte, and
    the recording holds them all as input, in order (how many packets one read brings, and
    so how many events, depends on timing: `test_proxy.py` checks that one read is one)."""
    grant = world.grant("erin")
    lines = "".join(f"line {i:06d} of an upload\n" for i in range(40_000))
    r = world.ssh(world.token(grant, "erin"), "wc -c", stdin=lines)
    assert r.returncode == 0 and r.stdout.strip() == str(len(lines)), r.stderr
    _, events = parse(cast_of(world, grant["id"]))
    sent = [t for _, c, t in events if c == "i"]
    assert "".join(sent) == lines


def test_no_grant_or_a_bad_token_is_refused(world: World) -> None:
    grant = world.grant("alice")
    token = world.token(grant)
    r = world.ssh({**token, "token": "acg_not-a-token"}, "true")
    assert r.returncode == 255
    assert "not a valid Accord connection token" in r.stderr
    r = world.ssh(token, "true", login=f"bob+{world.resource}")  # alice's token is not bob's
    assert r.returncode == 255
    r = world.ssh(token, "true", login="alice")  # no resource in the login
    assert r.returncode == 255 and "USER+RESOURCE" in r.stderr
    refusals = world.events("gateway.login_refused")
    assert any(e["data"]["user"] == "bob" for e in refusals)


def test_a_shell_with_a_pty_is_recorded_with_input_and_resizes(world: World) -> None:
    grant = world.grant("alice")
    token = world.token(grant)

    async def run() -> str:
        async with asyncssh.connect(
                "127.0.0.1", world.port, username=f"alice+{world.resource}",
                password=token["token"], known_hosts=None, client_keys=None,
                agent_path=None, config=None, preferred_auth="password") as conn:
            proc = await conn.create_process(term_type="xterm", term_size=(100, 30))
            proc.stdin.write("echo typed-$((6*7))\n")
            out = await proc.stdout.readuntil("typed-42")
            proc.change_terminal_size(120, 40)
            proc.stdin.write("stty size; exit\n")
            out += await proc.stdout.read()
            await proc.wait()
            return str(out)

    out = asyncio.run(run())
    assert "40 120" in out
    header, events = parse(cast_of(world, grant["id"]))
    assert (header["width"], header["height"]) == (100, 30)
    assert header["env"]["TERM"] == "xterm"
    typed = "".join(t for _, c, t in events if c == "i")
    assert "echo typed-$((6*7))\n" in typed.replace("\r", "\n")
    assert "typed-42" in "".join(t for _, c, t in events if c == "o")
    assert ("r", "120x40") in [(c, t) for _, c, t in events]


def test_port_forwarding_is_refused_and_recorded(world: World) -> None:
    grant = world.grant("alice")
    token = world.token(grant)

    async def run() -> tuple[str, bool]:
        async with asyncssh.connect(
                "127.0.0.1", world.port, username=f"alice+{world.resource}",
                password=token["token"], known_hosts=None, client_keys=None,
                agent_path=None, config=None, preferred_auth="password") as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as info:
                await conn.open_connection("127.0.0.1", 22)
            try:
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 1)
                remote = True
            except asyncssh.ChannelListenError:
                remote = False
            return info.value.reason, remote

    reason, remote = asyncio.run(run())
    assert "not allowed" in reason and not remote
    # The real client: -L is refused when used (ExitOnForwardFailure covers -R at once).
    r = world.ssh(token, "true", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:1")
    assert r.returncode == 255
    violations = world.events("gateway.violation", grant["id"])
    statements = [v["data"]["statement"] for v in violations]
    assert "direct-tcpip 127.0.0.1:22" in statements
    assert any(s.startswith("tcpip-forward") for s in statements)


def test_a_role_may_forward_ports_through_the_server(world: World) -> None:
    grant = world.grant("alice", "admin")  # ssh.allow: {admin: [port_forwarding]}
    token = world.token(grant)
    target_port = world.policy[0]

    async def run() -> bytes:
        async with asyncssh.connect(
                "127.0.0.1", world.port, username=f"alice+{world.resource}",
                password=token["token"], known_hosts=None, client_keys=None,
                agent_path=None, config=None, preferred_auth="password") as conn:
            reader, writer = await conn.open_connection("127.0.0.1", target_port)
            banner: bytes = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return banner

    assert asyncio.run(run()).startswith(b"SSH-2.0-OpenSSH")  # the server's own sshd
    forwards = world.events("gateway.ssh_forward", grant["id"])
    assert [f["data"]["destination"] for f in forwards] == [f"127.0.0.1:{target_port}"]


def test_revocation_ends_a_live_shell_with_a_message(world: World) -> None:
    grant = world.grant("alice")
    token = world.token(grant)

    async def run() -> tuple[str, float]:
        async with asyncssh.connect(
                "127.0.0.1", world.port, username=f"alice+{world.resource}",
                password=token["token"], known_hosts=None, client_keys=None,
                agent_path=None, config=None, preferred_auth="password") as conn:
            proc = await conn.create_process(term_type="xterm")
            proc.stdin.write("echo ready-$((1+1))\n")
            out = await proc.stdout.readuntil("ready-2")
            loop = asyncio.get_running_loop()
            r = await loop.run_in_executor(None, lambda: world.env.act(
                "bob", grant["request_id"], "revoke", comment="done here"))
            assert r.status_code == 200, r.text
            t0 = loop.time()
            out += await asyncio.wait_for(proc.stdout.read(), 10)
            await asyncio.wait_for(proc.wait(), 10)
            return out, loop.time() - t0

    out, took = asyncio.run(run())
    assert "this session ends" in out and "revoked" in out
    assert took < 2.0
    closed = world.events("gateway.session_closed", grant["id"])
    assert closed and "revoked" in closed[-1]["data"]["reason"]
    _, events = parse(cast_of(world, grant["id"]))
    assert "this session ends" in "".join(t for _, c, t in events if c == "o")


def test_the_real_client_runs_a_shell_in_a_pty(world: World) -> None:
    grant = world.grant("alice")
    token = world.token(grant)
    r = world.ssh(token, "", "-tt", stdin="echo pty-$((2+3))\nexit\n")
    assert "pty-5" in r.stdout, r.stderr
    _, events = parse(cast_of(world, grant["id"]))
    assert "pty-5" in "".join(t for _, c, t in events if c == "o")




def test_malformed_and_silent_clients_do_not_stop_others(world: World) -> None:
    import socket

    grant = world.grant("erin")
    token = world.token(grant, "erin")
    silent = socket.create_connection(("127.0.0.1", world.port), timeout=5)
    junk = socket.create_connection(("127.0.0.1", world.port), timeout=5)
    try:
        junk.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 64)
        r = world.ssh(token, "echo still-served")
        assert r.returncode == 0 and r.stdout == "still-served\n", r.stderr
        junk.settimeout(10)
        rest = b""
        while chunk := junk.recv(4096):  # the gateway drops the malformed one
            rest += chunk
        assert rest.startswith(b"SSH-2.0-")
    finally:
        silent.close()
        junk.close()


def test_an_idle_shell_is_closed_when_the_resource_says_so(world: World) -> None:
    """`ssh.idle_timeout` (0.3 s here, set on the live session: the world's other sessions
    keep none)."""
    import dataclasses

    from accord.gateway.ssh.proxy import LiveSSH

    grant = world.grant("alice")
    token = world.token(grant)

    async def run() -> str:
        async with asyncssh.connect(
                "127.0.0.1", world.port, username=f"alice+{world.resource}",
                password=token["token"], known_hosts=None, client_keys=None,
                agent_path=None, config=None, preferred_auth="password") as conn:
            proc = await conn.create_process(term_type="xterm")
            proc.stdin.write("echo idle-$((3+3))\n")
            out = await proc.stdout.readuntil("idle-6")
            live = next(s for s in world.gateway.sessions.values()
                        if isinstance(s, LiveSSH) and s.info.grant_id == grant["id"])
            loop = world.gateway._loop
            assert loop is not None
            live.target = dataclasses.replace(live.target, idle_timeout=0.3)
            loop.call_soon_threadsafe(live._check_idle)
            out += await asyncio.wait_for(proc.stdout.read(), 10)
            await asyncio.wait_for(proc.wait(), 10)
            return str(out)

    out = asyncio.run(run())
    assert "this session ends: no input for 0.3s" in out
    closed = world.events("gateway.session_closed", grant["id"])
    assert closed[-1]["data"]["reason"] == "idle"


def test_sftp_only_for_roles_that_allow_it_each_transfer_recorded(world: World) -> None:
    payload = os.urandom(300_000)
    upload = world.tmp / "sftp-in.bin"
    upload.write_bytes(payload)
    back = world.tmp / "sftp-back.bin"
    remote = str(world.tmp / "sftp-remote.bin")

    async def run(token: dict[str, Any]) -> None:
        async with asyncssh.connect(
                "127.0.0.1", world.port, username=f"alice+{world.resource}",
                password=token["token"], known_hosts=None, client_keys=None,
                agent_path=None, config=None, preferred_auth="password") as conn, \
                conn.start_sftp_client() as sftp:
            await sftp.put(str(upload), remote)
            await sftp.get(remote, str(back))

    user = world.grant("alice", "user")
    with pytest.raises(asyncssh.Error):
        asyncio.run(run(world.token(user)))
    refused = world.events("gateway.violation", user["id"])
    assert "subsystem sftp" in [v["data"]["statement"] for v in refused]
    admin = world.grant("alice", "admin")
    asyncio.run(run(world.token(admin)))
    assert back.read_bytes() == payload
    files = [e["data"] for e in world.events("gateway.ssh_file", admin["id"])]
    digest = hashlib.sha256(payload).hexdigest()
    assert [(f["path"], f["direction"], f["size"]) for f in files] == [
        (remote, "upload", len(payload)), (remote, "download", len(payload))]
    assert files[0]["sha256"] == digest  # asyncssh writes in order
    assert files[1]["sha256"] in (digest, None)  # parallel reads arrive out of order
