"""`accord gateway --processes N`: one listening socket, N gateway processes.

A Python process runs on one core at a time, and a proxy that relays every connection
through one process is a queue every statement waits in: on 2 cores, one gateway process
left about a seventh of the machine idle under pgbench while statements queued behind it.
With one process per core that idle time goes to work instead (benchmarks/README.md).

The parent only accepts: it hands each connection, as a file descriptor over a
SOCK_SEQPACKET pair (SCM_RIGHTS), to the next child in turn that is ready. That spreads
connections evenly; SO_REUSEPORT instead hashes each client's address, and for a handful
of connections often gives one process most of them. Each child is a whole gateway
(`postgres.proxy.PostgresGateway` with an inbox instead of a listener): its own spool and
audit shipper, grant watcher and sessions. The parent ships dead gateways' spools once
before any child starts (a child starting beside a sibling must not take its spool for a
dead one).

Cancel requests arrive on new connections, which may reach another child than the one
holding the session: a child's cancel keys carry its index in their top bits, and a
child passes a key it does not hold to the parent, which passes it to that child.

A child that dies is started again (its shipper records what it left, as for any
gateway process); its clients lost their sessions, everyone else keeps theirs. Should its
shipper have died too, the parent ships the spool: after each child's death and every
`RESCUE_SECONDS`, on a thread, it ships spools whose writer and shipper are both gone
(their locks say so), as a gateway does on start. SIGTERM or
SIGINT: stop accepting, send SIGTERM to every child (each ends its sessions with 57P01 and
ships its spool), wait for them.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from accord import metrics
from accord.gateway import prefork_msg as msg

log = logging.getLogger("accord.gateway")
AUTO_MAX = 4  # `processes: auto` runs at most this many (each has a shipper, DB connections)
START_TIMEOUT = 120.0  # for a child to load the policy and start its shipper
STOP_TIMEOUT = 180.0  # for a child to end its sessions and ship its spool
RESCUE_SECONDS = 30.0  # how often the parent looks for spools nobody ships
RESCUE_RETRY = 1.0  # sooner while a dead process's spool is still held by its shipper


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes]
    ctrl: socket.socket
    started: float = field(default_factory=time.monotonic)
    ready: bool = False  # takes connections now
    was_ready: bool = False  # got ready once (the start timeout no longer applies)


class Parent:
    backoff = 0.5  # seconds before restarting a child after one failed start; doubles
    give_up = 5  # failed starts in a row, of every child: stop with an error

    def __init__(self, listeners: list[socket.socket], processes: int,
                 child_args: list[str], rescue: Callable[[], bool] | None = None) -> None:
        """`rescue`: ships the spools of gateways whose shippers died with them; true
        when a dead gateway's spool was still held (by its shipper, maybe dying)."""
        self.listeners = listeners
        self.rescue = rescue
        self._rescuer: threading.Thread | None = None
        self._rescue_at = time.monotonic() + RESCUE_SECONDS
        self.processes = processes
        self.child_args = child_args
        self.children: dict[int, Child] = {}
        self.failures = dict.fromkeys(range(1, processes + 1), 0)  # failed starts in a row
        self.respawn_at: dict[int, float] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.status = 0
        # Accept only while a child is ready and nothing waits to be handed over: until
        # then clients wait in the listen backlog instead of being turned away.
        self.accepting = False
        self.waiting: collections.deque[socket.socket] = collections.deque()
        self._next = 0

    # -- children

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module, our args
                [sys.executable, "-m", "accord.gateway.cli", "--fd", str(theirs.fileno()),
                 "--index", str(index), *self.child_args], pass_fds=(theirs.fileno(),))
        ours.setblocking(False)
        child = Child(index, proc, ours)
        self.children[index] = child
        self.selector.register(ours, selectors.EVENT_READ, child)

    def _forget(self, child: Child) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.ctrl)
        child.ctrl.close()
        self.children.pop(child.index, None)

    def _ended(self, child: Child, why: str) -> None:
        """A child is gone: start another after a pause that grows while starts fail."""
        self._forget(child)
        metrics.process_exiting(child.proc.pid)  # its open sessions no longer count
        if self.stopping:
            return
        failures = self.failures[child.index] = (
            0 if child.was_ready else self.failures[child.index] + 1)
        if min(self.failures.values()) >= self.give_up and not self.children:
            log.error("gateway: every process failed to start %d times in a row; stopping "
                      "(their errors are above)", self.give_up)
            self.stopping = True
            self.status = 1
            return
        self._rescue_at = time.monotonic()  # should its shipper have died with it
        delay = min(self.backoff * 2 ** (failures - 1), 30.0) if failures else 0.0
        log.error("gateway process %d %s; starting another%s", child.index, why,
                  f" in {delay:.0f}s" if delay >= 1 else "")
        self.respawn_at[child.index] = time.monotonic() + delay

    def _check_children(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            code = child.proc.poll()
            if code is None:
                if not child.was_ready and now - child.started > START_TIMEOUT:
                    child.proc.kill()
                    child.proc.wait()
                    self._ended(child, f"did not start in {START_TIMEOUT:.0f}s")
                continue
            self._ended(child, f"exited ({code})")
        for index, when in list(self.respawn_at.items()):
            if now >= when and not self.stopping:
                del self.respawn_at[index]
                self._spawn(index)
        if now >= self._rescue_at and not self.stopping:
            self._start_rescue()

    def _start_rescue(self) -> None:
        """Ship orphaned spools on a thread (database work must not hold up accepting)."""
        if self.rescue is None or (self._rescuer is not None and self._rescuer.is_alive()):
            return
        self._rescue_at = time.monotonic() + RESCUE_SECONDS
        rescue = self.rescue

        def run() -> None:
            try:
                held = rescue()
            except Exception:  # the database is down, say: the next round tries again
                log.exception("gateway: shipping the spools of dead processes failed")
                return
            if held:  # look again soon: if its shipper dies, nobody else will
                self._rescue_at = time.monotonic() + RESCUE_RETRY

        self._rescuer = threading.Thread(target=run, name="accord-gateway-rescue",
                                         daemon=True)
        self._rescuer.start()

    # -- events

    def _accept(self, listener: socket.socket) -> None:
        while self.accepting:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, a connection reset in the queue
                log.error("gateway: accept failed: %s", exc)
                return
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.waiting.append(conn)
            self._hand_over()

    def _hand_over(self) -> None:
        """Give waiting connections to ready children in turn; stop accepting while one
        cannot be given (every child's queue full, or none ready)."""
        while self.waiting:
            conn = self.waiting[0]
            ready = sorted(i for i, c in self.children.items() if c.ready)
            for attempt in range(len(ready)):
                child = self.children[ready[(self._next + attempt) % len(ready)]]
                try:
                    socket.send_fds(child.ctrl, [msg.ACCEPTED], [conn.fileno()])
                except BlockingIOError:  # its queue is full: it is busy, not gone
                    continue
                except OSError:  # it died under us
                    child.ready = False
                    continue
                self._next = (self._next + attempt + 1) % len(ready)
                self.waiting.popleft().close()
                break
            else:
                self._follow_readiness(blocked=True)
                return
        self._follow_readiness()

    def _from_child(self, child: Child) -> None:
        try:
            data = child.ctrl.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # it is exiting; _check_children starts another
            child.ready = False
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(child.ctrl)
            return
        if data == msg.READY:
            child.ready = child.was_ready = True
            log.info("gateway process %d (pid %d) is ready", child.index, child.proc.pid)
        elif data == msg.STOPPING:
            child.ready = False
        elif data[:1] == msg.CANCEL and len(data) == msg.CANCEL_SIZE:
            pid, _ = msg.unpack_cancel(data)
            target = self.children.get(msg.child_of(pid))
            if target is not None and target is not child and target.ready:
                with contextlib.suppress(OSError):
                    target.ctrl.send(data)

    # -- the loop

    def _follow_readiness(self, blocked: bool = False) -> None:
        want = (not blocked and not self.waiting and not self.stopping
                and any(c.ready for c in self.children.values()))
        if want and not self.accepting:
            for listener in self.listeners:
                self.selector.register(listener, selectors.EVENT_READ, None)
        elif self.accepting and not want:
            for listener in self.listeners:
                self.selector.unregister(listener)
        self.accepting = want

    def _timeout(self) -> float:
        if self.waiting:
            return 0.02
        soonest = min(self.respawn_at.values(), default=time.monotonic() + 0.5)
        return min(0.5, max(0.0, soonest - time.monotonic()))

    def run(self) -> int:
        for index in range(1, self.processes + 1):
            self._spawn(index)
        for listener in self.listeners:
            listener.setblocking(False)
        while not self.stopping:
            for key, _ in self.selector.select(self._timeout()):
                if key.data is None:
                    self._accept(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._from_child(key.data)
            self._check_children()
            self._hand_over()
        return self._stop_children()

    def _stop_children(self) -> int:
        if self._rescuer is not None:  # a round half done would wait for the next start
            self._rescuer.join(STOP_TIMEOUT)
        self._follow_readiness()
        for listener in self.listeners:
            listener.close()
        for conn in self.waiting:
            conn.close()
        for child in self.children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        failed = 0
        deadline = time.monotonic() + STOP_TIMEOUT
        for child in list(self.children.values()):
            try:
                code = child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("gateway process %d did not stop; killing it (its spool stays "
                          "for the next start)", child.index)
                child.proc.kill()
                code = child.proc.wait()
            failed += code != 0
            child.ctrl.close()
        return 1 if failed or self.status else 0

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True


def auto_count(dialect: str) -> int:
    """How many gateway processes `processes: auto` means: one per core this process may
    run on, at most `AUTO_MAX`, where several are built and tested for: Linux (connections
    are handed over SOCK_SEQPACKET pairs) with the Accord database on PostgreSQL (each
    process's shipper writes the ledger at the same time). Anywhere else, one."""
    if not sys.platform.startswith("linux") or dialect != "postgresql":
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), AUTO_MAX))


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to, as asyncio's create_server
    makes them (IPv6 sockets IPv6 only)."""
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(512)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


def run_parent(listeners: list[socket.socket], processes: int, child_args: list[str],
               rescue: Callable[[], bool] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; the exit status (0: every child stopped cleanly)."""
    parent = Parent(listeners, processes, child_args, rescue)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, parent.stop)
    return parent.run()
