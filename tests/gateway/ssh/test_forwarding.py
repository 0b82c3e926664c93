"""Remote port forwarding (`ssh -R`), agent forwarding (`ssh -A`) and X11 (`ssh -X`) with
the real OpenSSH client: refused by default, each refusal a `gateway.violation`; remote and
agent and X11 forwarding allowed for a role whose `ssh.allow` lists them (the admin role
here), each use a `gateway.ssh_forward` event. The X11 test's display is a stand-in that
answers the connection setup (no X server here)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.ssh.conftest import World, free_port, keygen

pytestmark = pytest.mark.ssh


@contextlib.contextmanager
def greeter(text: bytes) -> Iterator[int]:
    """A TCP server on the client's side that says `text` to whoever connects."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(30)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.sendall(text)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()
        thread.join(30)


# Upstream, until the forwarded port listens (the gateway sets it up beside the command).
CONNECT = ("python3 -c \"import socket, time\nfor _ in range(200):\n try:\n"
           "  s = socket.create_connection(('127.0.0.1', {port})); break\n"
           " except OSError: time.sleep(0.05)\nprint(s.recv(100).decode().strip())\"")


def test_remote_forwarding_for_a_role_that_allows_it(world: World) -> None:
    grant = world.grant("alice", "admin")
    token = world.token(grant)
    port = free_port()
    with greeter(b"hello-through-the-gateway\n") as local:
        r = world.ssh(token, CONNECT.format(port=port), "-o", "ExitOnForwardFailure=yes",
                      "-R", f"{port}:127.0.0.1:{local}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello-through-the-gateway"
    forwards = [f["data"] for f in world.events("gateway.ssh_forward", grant["id"])]
    assert [f["direction"] for f in forwards] == ["remote", "remote"]  # the listener, a use
    assert all(f["listen"].endswith(f":{port}") for f in forwards)
    assert forwards[1]["origin"].startswith("127.0.0.1:")


def _agent(world: World) -> tuple[dict[str, str], str]:
    """An ssh-agent holding one key: its environment and the key's fingerprint."""
    sock = world.tmp / f"agent-{free_port()}.sock"
    key = world.tmp / f"agent_key_{free_port()}"
    keygen(key)
    proc = subprocess.run(["ssh-agent", "-a", str(sock)], capture_output=True, text=True,
                          check=True, timeout=30)
    pid = next(part.split("=")[1] for part in proc.stdout.replace(";", "\n").split()
               if part.startswith("SSH_AGENT_PID="))
    env = {"SSH_AUTH_SOCK": str(sock), "SSH_AGENT_PID": pid}
    subprocess.run(["ssh-add", str(key)], env=env, capture_output=True, check=True, timeout=30)
    fingerprint = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True,
                                 text=True, check=True).stdout.split()[1]
    return env, fingerprint


def _ssh_with(world: World, token: dict[str, str], extra_env: dict[str, str],
              command: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd, env = world.ssh_args(token, *args)
    return subprocess.run([*cmd, command], env={**env, **extra_env}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_agent_forwarding_for_a_role_that_allows_it_and_refused_otherwise(world: World) -> None:
    agent, fingerprint = _agent(world)
    try:
        grant = world.grant("alice", "admin")
        r = _ssh_with(world, world.token(grant), agent, "ssh-add -l", "-A")
        assert r.returncode == 0, r.stderr
        assert fingerprint in r.stdout  # the client's agent, seen from the server
        forwards = [f["data"] for f in world.events("gateway.ssh_forward", grant["id"])]
        assert [f["direction"] for f in forwards] == ["agent", "agent"]  # allowed, a use

        plain = world.grant("erin")  # the user role
        r = _ssh_with(world, world.token(plain, "erin"), agent, "ssh-add -l", "-A")
        assert r.returncode == 2, r.stdout  # no agent upstream
        violations = world.events("gateway.violation", plain["id"])
        assert "auth-agent-req@openssh.com" in [v["data"]["statement"] for v in violations]
        assert not world.events("gateway.ssh_forward", plain["id"])
    finally:
        subprocess.run(["ssh-agent", "-k"], env=agent, capture_output=True, check=False)


@contextlib.contextmanager
def x_server() -> Iterator[tuple[int, list[bytes]]]:
    """A stand-in X server on the client's side (display number, what it was sent): it
    answers an X11 connection's setup with a few bytes."""
    for number in range(150, 250):
        try:
            srv = socket.create_server(("127.0.0.1", 6000 + number))
            break
        except OSError:
            continue
    else:
        pytest.fail("no free X11 display number")
    srv.settimeout(30)
    got: list[bytes] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                got.append(conn.recv(1024))
                conn.sendall(b"X11-SETUP-REPLY")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield number, got
    finally:
        srv.close()
        thread.join(30)


# Upstream: an X11 client's connection setup to $DISPLAY with the cookie sshd gave it.
X_CLIENT = """python3 -c '
import os, socket, struct, subprocess
display = os.environ["DISPLAY"]
number = int(display.rpartition(":")[2].split(".")[0])
entries = subprocess.run(["xauth", "list"], capture_output=True, text=True).stdout.splitlines()
cookie = bytes.fromhex([e for e in entries if e.split()[0].endswith(f":{number}")][-1].split()[2])
name = b"MIT-MAGIC-COOKIE-1"
pad = lambda b: b + bytes(-len(b) % 4)
s = socket.create_connection(("127.0.0.1", 6000 + number))
s.sendall(struct.pack("<cxHHHHxx", b"l", 11, 0, len(name), len(cookie)) + pad(name) + pad(cookie))
print("display", display, "answered", s.recv(100).decode())
'"""


def test_x11_forwarding_for_a_role_that_allows_it(world: World) -> None:
    grant = world.grant("alice", "admin")
    with x_server() as (number, got):  # -Y: no X server to make an untrusted cookie with
        r = _ssh_with(world, world.token(grant), {"DISPLAY": f"127.0.0.1:{number}"},
                      X_CLIENT, "-Y")
    assert r.returncode == 0, r.stderr
    assert "answered X11-SETUP-REPLY" in r.stdout
    assert got and got[0].startswith(b"l\0\x0b\0")  # the setup reached the client's display
    forwards = [f["data"] for f in world.events("gateway.ssh_forward", grant["id"])]
    assert [f["direction"] for f in forwards] == ["x11", "x11"]  # allowed, a connection


def test_x11_forwarding_is_refused_by_default(world: World) -> None:
    grant = world.grant("erin")
    r = _ssh_with(world, world.token(grant, "erin"), {"DISPLAY": "127.0.0.1:93"},
                  'echo "display=[$DISPLAY]"', "-Y")
    assert r.returncode == 0, r.stderr
    assert "display=[]" in r.stdout
    violations = world.events("gateway.violation", grant["id"])
    assert "x11-req" in [v["data"]["statement"] for v in violations]
    assert not world.events("gateway.ssh_forward", grant["id"])


def test_remote_forwarding_is_refused_by_default(world: World, tmp_path: Path) -> None:
    grant = world.grant("erin")
    r = world.ssh(world.token(grant, "erin"), "true", "-o", "ExitOnForwardFailure=yes",
                  "-R", f"{free_port()}:127.0.0.1:1")
    assert r.returncode == 255
    violations = world.events("gateway.violation", grant["id"])
    assert any(v["data"]["statement"].startswith("tcpip-forward") for v in violations)
