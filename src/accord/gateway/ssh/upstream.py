"""The server behind an SSH resource: where it is, the login for a role, its private key
and the pinned host key; and the gateway's own host key."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from accord.gateway.ssh.lib import asyncssh
from accord.spec.resources import ResourceSSHSpec


class UpstreamError(Exception):
    """The gateway cannot reach or log in to the server behind a resource."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    key: asyncssh.SSHKey
    host_key: asyncssh.SSHKey
    allow: frozenset[str]
    idle_timeout: float | None


def target_for(spec: ResourceSSHSpec, role: str, env: dict[str, str]) -> Target:
    """Where and as whom a session of `role` logs in upstream."""
    user = spec.users.get(role)
    if user is None:
        raise UpstreamError(f"role {role} has no upstream login (ssh.users)")
    try:
        if spec.key_env is not None:
            text = env.get(spec.key_env)
            if not text:
                raise UpstreamError(f"the upstream key's variable {spec.key_env} is not set")
        else:
            assert spec.key_file is not None
            text = Path(spec.key_file).read_text(encoding="utf-8")
        key = asyncssh.import_private_key(text)
        host_key = asyncssh.import_public_key(spec.host_key)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise UpstreamError(f"the upstream key or host key cannot be read: {exc}") from None
    return Target(spec.host, spec.port, user, key, host_key,
                  frozenset(spec.allow.get(role, ())),
                  spec.idle_timeout.total_seconds() if spec.idle_timeout else None)


# The gateway's own choice upstream: AES-GCM first. asyncssh's chacha20-poly1305 (its
# default first, as OpenSSH's) costs 225 µs per 32 KiB packet here against 17 for
# aes128-gcm (AES-NI), and every byte of a session is decrypted from upstream.
CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes256-ctr", "aes192-ctr", "aes128-ctr"]


async def connect(target: Target, timeout: float, agent: str | None = None
                  ) -> asyncssh.SSHClientConnection:
    """Log in upstream with the resource's key, trusting only the pinned host key; `agent`:
    the socket that answers for the client's forwarded agent (its sessions ask upstream to
    forward it)."""
    try:
        return await asyncssh.connect(
            target.host, target.port, username=target.user, client_keys=[target.key],
            agent_forwarding=agent or False,
            known_hosts=([target.host_key], [], []), agent_path=None, config=None,
            preferred_auth="publickey", connect_timeout=timeout, login_timeout=timeout,
            encryption_algs=CIPHERS)
    except asyncssh.HostKeyNotVerifiable:
        raise UpstreamError("the server's host key is not the one pinned in accord.yaml "
                            "(ssh.host_key)") from None
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        raise UpstreamError(f"cannot log in to {target.host}:{target.port} as "
                            f"{target.user}: {exc}") from None


def host_key(path: Path) -> asyncssh.SSHKey:
    """The gateway's host key, made (ed25519) the first time: written under a temporary name
    and linked into place, so concurrent processes all end up with the same key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = path.with_name(f".{path.name}.{os.getpid()}")
        key = asyncssh.generate_private_key("ssh-ed25519")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        with contextlib.suppress(FileExistsError):
            os.link(part, path)
        part.unlink()
    return asyncssh.read_private_key(str(path))
