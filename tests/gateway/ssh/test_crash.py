"""A real `accord gateway` process SIGKILLed mid-session: the recording that reaches the
ledger holds every byte the client received (each event is in the spool before it is
forwarded), each channel ends with a `recovered` final chunk, and it verifies. Once with the
gateway's shipper finishing the spool, once with the shipper killed too and the spool
replayed by the next start; with the bytes in the database and in pack files
(`gateway.ssh.recordings_dir`); enough binary output that the spool moves to a new segment
(`spool.R_STREAM`) inside an uncut chunk."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from accord.gateway import shipper, spool
from accord.gateway.models import GatewayRecording
from accord.gateway.ssh import recordings
from accord.gateway.ssh.cast import output, parse
from accord.gateway.ssh.lib import asyncssh
from tests.gateway.ssh.conftest import World, gateway_process
from tests.gateway.test_crash import kill_gateway

pytestmark = pytest.mark.ssh
MEGABYTES = 20  # base64 in the spool: more than one 16 MiB segment


Gateway = tuple[int, subprocess.Popen[bytes], Path, Path | None]


@pytest.fixture(params=["database", "packs"])
def gateway(world: World, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """`accord gateway` in a process of its own that cuts no chunk before the channel ends
    (8 MiB chunks, an hour apart); recordings' bytes in the database, or in pack files
    (`gateway.ssh.recordings_dir`)."""
    packs = tmp_path / "packs" if request.param == "packs" else None
    ssh = "chunk_interval: 1h, chunk_bytes: 8388608" + (
        f", recordings_dir: {packs}" if packs is not None else "")
    with gateway_process(world, tmp_path, "--processes", "1", ssh=ssh) as (port, proc, _):
        yield port, proc, tmp_path / "data" / "gateway-spool", packs


async def _session_then_kill(world: World, port: int, token: dict[str, Any], data: Path,
                             victims: Any) -> tuple[bytes, bytes]:
    """A pty `cat` typed at and a binary `cat` read in full, both left open; then SIGKILL.
    Returns what the client received on each."""
    async with asyncssh.connect("127.0.0.1", port, username=f"erin+{world.resource}",
                                password=token["token"], client_keys=None, known_hosts=None,
                                agent_path=None, config=None,
                                preferred_auth="password") as conn:
        typed = await conn.create_process("cat", term_type="xterm", encoding=None)
        echoed = b""
        for line in (b"first line\r", "zweite Zeile ✓\r".encode(), b"third\r"):
            typed.stdin.write(line)
            want = line.replace(b"\r", b"\r\n")
            while echoed.count(want) < 2:  # the terminal's echo, then cat's line
                echoed += await typed.stdout.read(4096)
        binary = await conn.create_process(f"cat {data}; sleep 120", encoding=None)
        got = b""
        size = data.stat().st_size
        while len(got) < size:
            got += await binary.stdout.read(1 << 20)
        victims()  # everything above reached this client: the ledger must have it all
    return echoed, got


def _known(world: World) -> set[str]:
    """The chunks the module's database holds already (by sha256)."""
    with world.env.st.sessions() as s:
        return set(s.execute(select(GatewayRecording.sha256)).scalars())


def _check(world: World, grant_id: int, echoed: bytes, received: bytes,
           packs: Path | None, known: set[str]) -> None:
    with world.env.st.sessions() as s:
        (session,) = recordings.sessions_of(s, grant_id=grant_id)
        digests = [d["sha256"] for ch in session.channels for d in ch.chunks]
        blobs = recordings.blobs(s, digests, packs)
        stored = s.execute(select(GatewayRecording.sha256, GatewayRecording.size,
                                  GatewayRecording.data, GatewayRecording.location)
                           .where(GatewayRecording.sha256.in_(digests))).all()
    # Chunks are stored by content: one the database held before this session (an earlier
    # test's, in the other store) keeps its row. Each row is in one store; this session's
    # own in the one configured.
    assert all((data is None) != (location is None) for _, _, data, location in stored)
    new = [(data, location) for digest, _, data, location in stored if digest not in known]
    assert len(new) > 2
    assert all((data is None) == (packs is not None) for data, _ in new), [
        (size, data is None, location) for _, size, data, location in stored]
    shell, exe = session.channels
    for channel, want in ((shell, echoed), (exe, received)):
        data, problems = recordings.assemble(channel, blobs.get)
        assert problems == []
        assert channel.chunks[-1]["recovered"] is True and channel.chunks[-1]["final"]
        assert output(parse(data)[1]) == want  # every byte, exactly
    assert len(exe.chunks) > 2  # cut at 8 MiB, the rest recovered
    closed = world.events("gateway.session_closed", grant_id)
    assert [e["data"]["reason"] for e in closed] == [spool.RECOVERED]


def _kill(proc: subprocess.Popen[bytes], shipper_too: bool) -> Any:
    return functools.partial(kill_gateway, proc, shipper_too=shipper_too)


@pytest.mark.parametrize("shipper_too", [False, True], ids=["gateway", "gateway-and-shipper"])
def test_sigkill_mid_session_loses_no_output(
        world: World, gateway: Gateway, tmp_path: Path, shipper_too: bool) -> None:
    port, proc, spooled, packs = gateway
    data = tmp_path / "random.bin"
    data.write_bytes(os.urandom(MEGABYTES << 20))
    grant = world.grant("erin")
    token = world.token(grant, "erin")
    known = _known(world)
    with contextlib.suppress(asyncssh.Error, OSError):
        echoed, received = asyncio.run(_session_then_kill(
            world, port, token, data, _kill(proc, shipper_too)))
    assert len(received) == data.stat().st_size
    if shipper_too:
        assert shipper.replay_dead(world.env.st.sessions, spooled, per_event=1000,
                                   max_text=16384, recordings_dir=packs) > 0
    deadline = time.monotonic() + 60
    while any(spooled.iterdir()):  # the orphaned shipper finishing, in its own process
        assert time.monotonic() < deadline, "the shipper did not finish the spool"
        time.sleep(0.05)
    _check(world, grant["id"], echoed, received, packs, known)
