"""The prefork parent on its own: handing connections over, full queues, failed starts.

No database: children here are stand-ins (a `sleep`, or the child entry point with
arguments it refuses), the parent's side is real sockets.
"""

from __future__ import annotations

import logging
import selectors
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accord.cli.main import app
from accord.gateway import cli as gateway_cli
from accord.gateway import prefork
from accord.gateway import prefork_msg as msg
from accord.gateway.prefork import Child, Parent
from tests.gateway.conftest import DSN_ENV, World, free_port, policy_text


@pytest.fixture
def parent() -> Iterator[Parent]:
    p = Parent(prefork.listen("127.0.0.1", 0), 2, [])
    for listener in p.listeners:
        listener.setblocking(False)
    yield p
    for theirs in _THEIRS:
        theirs.close()
    _THEIRS.clear()
    for child in list(p.children.values()):
        child.proc.kill()
        child.proc.wait()
        child.ctrl.close()
    for listener in p.listeners:
        listener.close()
    for conn in p.waiting:
        conn.close()


_THEIRS: list[socket.socket] = []


def stand_in(p: Parent, index: int) -> socket.socket:
    """A ready child whose queue holds a few connections; returns its end of the pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # a queue of a few messages
    ours.setblocking(False)
    child = Child(index, subprocess.Popen(["sleep", "60"]), ours, ready=True, was_ready=True)
    p.children[index] = child
    p.selector.register(ours, selectors.EVENT_READ, child)
    _THEIRS.append(theirs)
    return theirs


def connect(p: Parent) -> socket.socket:
    client = socket.create_connection(p.listeners[0].getsockname()[:2])
    p._accept(p.listeners[0])
    return client


def received(theirs: socket.socket) -> int:
    theirs.setblocking(False)
    count = 0
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(theirs, 64, 1)
        except BlockingIOError:
            return count
        assert data == msg.ACCEPTED and len(fds) == 1
        socket.socket(fileno=fds[0]).close()
        count += 1


def test_connections_alternate_between_ready_children(parent: Parent) -> None:
    one, two = stand_in(parent, 1), stand_in(parent, 2)
    parent._follow_readiness()
    clients = [connect(parent) for _ in range(4)]
    assert (received(one), received(two)) == (2, 2)
    for c in clients:
        c.close()


def test_a_full_queue_keeps_its_child_and_the_connection_waits(parent: Parent) -> None:
    """A busy child is not a dead one: nothing is closed, accepting pauses, and the
    connection goes out once the child reads."""
    one = stand_in(parent, 1)  # the only child
    parent._follow_readiness()
    clients = []
    while not parent.waiting:
        clients.append(connect(parent))
        assert len(clients) < 100
    assert parent.children[1].ready and not parent.accepting
    queued = received(one)
    parent._hand_over()
    assert not parent.waiting and parent.accepting
    assert received(one) == 1 and queued == len(clients) - 1
    for c in clients:
        c.close()


def test_cancel_keys_go_to_the_child_that_issued_them(parent: Parent) -> None:
    one, two = stand_in(parent, 1), stand_in(parent, 2)
    key = (2 << msg.KEY_INDEX_SHIFT | 77, b"\x01\x02\x03\x04")
    one.send(msg.pack_cancel(*key))
    parent._from_child(parent.children[1])
    assert msg.unpack_cancel(two.recv(64)) == key
    one.setblocking(False)
    with pytest.raises(BlockingIOError):  # never back to the sender
        one.recv(64)


def test_children_that_never_start_make_the_parent_give_up(
        caplog: pytest.LogCaptureFixture) -> None:
    listeners = prefork.listen("127.0.0.1", 0)
    p = Parent(listeners, 2, ["--no-such-option"])  # each child exits at once (usage error)
    p.backoff, p.give_up = 0.01, 2
    try:
        with caplog.at_level(logging.ERROR, "accord.gateway"):
            assert p.run() == 1
    finally:
        for listener in listeners:
            listener.close()
    assert "every process failed to start 2 times in a row" in caplog.text
    assert caplog.text.count("exited (2)") >= 2 * 2 - 1  # the last one stops the parent


def test_several_processes_off_linux_are_refused_with_a_clear_error(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "accord.yaml"
    config.write_text(policy_text(world.resource, world.database, port=free_port()),
                      encoding="utf-8")
    env = {"ACCORD_DATABASE_URL": world.engine.url.render_as_string(False),
           "ACCORD_DATA_DIR": str(tmp_path / "data"), DSN_ENV: world.target_dsn}
    monkeypatch.setattr(gateway_cli.sys, "platform", "darwin")
    result = CliRunner().invoke(app, ["gateway", "--config", str(config), "--processes", "2"],
                                env=env)
    assert result.exit_code == 1, result.output
    assert "2 gateway processes need Linux; use --processes 1" in result.output


def test_a_childs_death_makes_the_parent_ship_orphaned_spools_until_none_is_held(
        parent: Parent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefork, "RESCUE_RETRY", 0.0)
    answers = [True, False]  # first a dead child's spool its (dying) shipper still held
    calls: list[float] = []

    def rescue() -> bool:
        calls.append(time.monotonic())
        return answers[len(calls) - 1]

    parent.rescue = rescue
    stand_in(parent, 1)
    parent._check_children()
    assert calls == []  # nothing died: the next look is RESCUE_SECONDS away
    child = parent.children[1]
    child.proc.kill()
    child.proc.wait()
    parent._ended(child, "was killed")
    parent.respawn_at.clear()  # no real child is started here
    for expected in (1, 2, 2):
        parent._check_children()
        assert parent._rescuer is not None
        parent._rescuer.join(5)
        assert len(calls) == expected
