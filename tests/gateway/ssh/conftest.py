"""A real gateway in front of a real OpenSSH server, with Accord's own database on PostgreSQL.

The server is Debian's `openssh-server` (/usr/sbin/sshd, or ACCORD_TEST_SSHD), started by the
tests as the current user on a free high port with its own host key and authorized_keys in a
temporary directory; the tests skip when it is not installed (ACCORD_REQUIRE_SSHD=1 makes that
a failure). Clients are OpenSSH's `ssh` (the token given through SSH_ASKPASS) and asyncssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, select

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction
from accord.gateway.protocols import build
from accord.gateway.server import GatewayServer
from accord.ledger.models import LedgerEntry
from accord.worker.job_runner import JobRunner
from tests.conftest import PG_ADMIN_URL, REQUIRE_PG, Env, _pg_reachable, make_env
from tests.gateway.conftest import Granting

SSHD = os.environ.get("ACCORD_TEST_SSHD", "/usr/sbin/sshd")
SSH = "/usr/bin/ssh"
REQUIRE_SSHD = os.environ.get("ACCORD_REQUIRE_SSHD") == "1"
KEY_ENV = "ACCORD_TEST_SSH_UPSTREAM_KEY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_services() -> None:
    for path, what in ((SSHD, "OpenSSH's server (apt-get install openssh-server)"),
                       (SSH, "OpenSSH's client (apt-get install openssh-client)")):
        if not os.access(path, os.X_OK):
            if REQUIRE_SSHD:
                pytest.fail(f"{what} is required but {path} is missing")
            pytest.skip(f"{path} is missing: the SSH gateway tests need {what}")
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required but {PG_ADMIN_URL} is unreachable")
        pytest.skip("PostgreSQL is not reachable (Accord's own database)")


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip() if path.suffix else \
        Path(f"{path}.pub").read_text().strip()


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until something accepts on `port` (bounded; fails if the process died)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"sshd exited: {said}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)
    raise RuntimeError("sshd did not start listening")


@contextlib.contextmanager
def sshd(tmp: Path) -> Iterator[tuple[int, str, str]]:
    """A private sshd: yields its port, its public host key and the private key it trusts."""
    tmp.mkdir(parents=True, exist_ok=True)
    host_pub = keygen(tmp / "host_key")
    client_pub = keygen(tmp / "upstream_key")
    (tmp / "authorized_keys").write_text(client_pub + "\n")
    (tmp / "authorized_keys").chmod(0o600)
    port = free_port()
    # The sessions' HOME is a directory of the test's own: a shell sshd starts reads
    # $HOME/.bashrc (Debian's bash does under sshd), and the machine's user may have a slow
    # one there (pyenv's init rehashes under a lock, which a test killing a shell can leave
    # behind, stalling every later session).
    (tmp / "home").mkdir(exist_ok=True)
    (tmp / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {tmp / 'host_key'}
PidFile {tmp / 'sshd.pid'}
AuthorizedKeysFile {tmp / 'authorized_keys'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowTcpForwarding yes
X11Forwarding yes
AcceptEnv LANG
SetEnv HOME={tmp / 'home'}
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    if os.geteuid() == 0:  # privilege separation's chroot (sshd started as root needs it)
        Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")],
                            stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        yield port, host_pub, (tmp / "upstream_key").read_text()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def policy_text(resource: str, port: int, ssh_port: int, target_port: int,
                host_key: str, user: str, extra: str = "") -> str:
    return f"""\
users: [alice, bob, carol, dave, erin]
groups: {{engineers: [alice, erin], leads: [bob, carol], admins: [carol], auditors: [dave]}}
accord: {{admins: [admins], auditors: [auditors]}}
gateway: {{listen: "127.0.0.1:{port}", token_ttl: 5m, flush_interval: 50ms,
          watch_interval: 200ms, startup_timeout: 5s, message_timeout: 2s,
          ssh: {{listen: "127.0.0.1:{ssh_port}", chunk_interval: 200ms}}}}
resources:
  - name: {resource}
    kind: ssh
    labels: {{env: lab}}
    owners: [leads]
    roles: [user, admin]
    ssh:
      host: 127.0.0.1
      port: {target_port}
      users: {{user: {user}, admin: {user}}}
      key_env: {KEY_ENV}
      host_key: "{host_key}"
      allow: {{admin: [port_forwarding, remote_forwarding, agent_forwarding, x11_forwarding,
                      sftp]}}{extra}
workflows:
  - name: lab
    match: 'true'
    require_reason: false
    auto_approve: '"engineers" in request.requester.groups'
    steps: [{{approvers: [leads]}}]
web: {{local_login: true}}
"""


@dataclass
class World(Granting):
    env: Env
    runner: JobRunner
    gateway: GatewayServer
    engine: Engine
    resource: str
    tmp: Path
    policy: Any = None  # (target_port, host_key, private_key, upstream user) for other configs
    default_role = "user"

    @property
    def port(self) -> int:
        return self.gateway.fronts[0].port


    def ssh_args(self, token: dict[str, Any], *args: str, login: str | None = None,
                 port: int | None = None) -> tuple[list[str], dict[str, str]]:
        """The real `ssh` client's command line and environment (the token via askpass)."""
        askpass = self.tmp / f"askpass-{uuid.uuid4().hex[:8]}"
        askpass.write_text(f"#!/bin/sh\necho '{token['token']}'\n")
        askpass.chmod(0o700)
        env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force",
               "DISPLAY": ":0"}
        cmd = [SSH, "-F", "/dev/null", "-p", str(port or self.port),
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1",
               "-o", "LogLevel=INFO", "-o", "ConnectTimeout=10",
               *args, f"{login or token['user'] + '+' + token['resource']}@127.0.0.1"]
        return cmd, env

    def ssh(self, token: dict[str, Any], command: str, *args: str, login: str | None = None,
            stdin: str = "", port: int | None = None) -> subprocess.CompletedProcess[str]:
        cmd, env = self.ssh_args(token, *args, login=login, port=port)
        return subprocess.run([*cmd, command] if command else cmd, env=env, input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)

    def flush(self) -> None:
        loop = self.gateway._loop
        if loop is not None and loop.is_running():
            # A turn of the gateway's loop first: what it was doing when the client saw
            # the end (a session closed after telling the client why) is done, its facts
            # are in the writer's hands.
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(10)
        assert self.gateway.audit.drain(timeout=20), "the audit writer did not catch up"

    def events(self, type_: str, grant_id: int | None = None) -> list[dict[str, Any]]:
        self.flush()
        with transaction(self.env.st.sessions) as s:
            q = select(LedgerEntry.leaf).where(LedgerEntry.type == type_).order_by(LedgerEntry.id)
            if grant_id is not None:
                q = q.where(LedgerEntry.subject == f"grant:{grant_id}")
            return [json.loads(leaf) for leaf in s.execute(q).scalars()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_services()
    suffix = uuid.uuid4().hex[:8]
    accord_db, resource = f"accord_gws_{suffix}", f"web-{suffix}"
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    tmp = tmp_path_factory.mktemp("gateway-ssh")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(accord_db)))
    engine = make_engine(f"{base}/{accord_db}", pool_size=8)
    gateway: GatewayServer | None = None
    mp = pytest.MonkeyPatch()
    try:
        with sshd(tmp / "sshd") as (target_port, host_key, private_key):
            migrations.upgrade(engine)
            mp.setenv(KEY_ENV, private_key)
            env = make_env(make_sessionmaker(engine), tmp, policy_text(
                resource, free_port(), free_port(), target_port, host_key, getpass.getuser()))
            runner = JobRunner(env.st.sessions, env.st.policies, env.st.connectors,
                               env.st.secrets, env.clock)
            spec = env.st.policies.current.loaded.spec.gateway
            assert spec is not None
            gateway = build(env.st, spec)
            gateway.start_thread()
            with env.client:
                yield World(env, runner, gateway, engine, resource, tmp,
                            (target_port, host_key, private_key, getpass.getuser()))
    finally:
        if gateway is not None:
            gateway.stop_thread()
        engine.dispose()
        mp.undo()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(accord_db)))


@contextlib.contextmanager
def gateway_process(world: World, tmp: Path, *args: str, ssh: str = ""
                    ) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    """`accord gateway ARGS` in a process of its own before the world's sshd (`ssh`: more
    of `gateway.ssh`): yields its SSH port, the process and its log, once it listens."""
    from tests.gateway.test_crash import ACCORD, _wait_port

    target_port, host_key, private_key, user = world.policy
    ssh_port = free_port()
    config = tmp / "accord.yaml"
    text = policy_text(world.resource, free_port(), ssh_port, target_port, host_key, user)
    config.write_text(text.replace("chunk_interval: 200ms", ssh or "chunk_interval: 200ms"),
                      encoding="utf-8")
    log = tmp / "gateway.log"
    env = {**os.environ, "ACCORD_DATA_DIR": str(tmp / "data"), KEY_ENV: private_key,
           "ACCORD_DATABASE_URL": world.engine.url.render_as_string(False).replace(
               "+psycopg", "")}
    with log.open("wb") as out:
        proc = subprocess.Popen([ACCORD, "gateway", "--config", str(config), *args], env=env,
                                stdout=out, stderr=out)
    try:
        _wait_port(ssh_port, proc, log)
        yield ssh_port, proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
