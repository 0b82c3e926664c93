"""`accord gateway --processes N`: one listening socket, N gateway processes.

A Python process runs on one core at a time, and a proxy that relays every connection
through one process is a queue every statement waits in: on 2 cores, one gateway process
left about a seventh of the machine idle under pgbench while statements queued behind it.
With one process per core that idle time goes to work instead (benchmarks/README.md).

The parent only accepts: it hands each connection, as a file descriptor over a
SOCK_SEQPACKET pair (SCM_RIGHTS), to the next child in turn that is ready. That spreads
connections evenly; SO_REUSEPORT instead hashes each client's address, and for a handful
of connections often gives one process most of them. Each child is a whole gateway
(`proxy.Gateway` with an inbox instead of a listener): its own spool and audit shipper,
grant watcher and sessions. The parent ships dead gateways' spools once before any child
starts (a child starting beside a sibling must not take its spool for a dead one).

Cancel requests arrive on new connections, which may reach another child than the one
holding the session: a child's cancel keys carry its index in their top bits, and a
child passes a key it does not hold to the parent, which passes it to that child.

A child that dies is started again (its shipper records what it left, as for any
gateway process); its clients lost their sessions, everyone else keeps theirs. SIGTERM or
SIGINT: stop accepting, send SIGTERM to every child (each ends its sessions with 57P01 and
ships its spool), wait for them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from accord.gateway import prefork_msg as msg

log = logging.getLogger("accord.gateway")
READY = b"R"
START_TIMEOUT = 120.0  # for a child to load the policy and start its shipper
STOP_TIMEOUT = 180.0  # for a child to end its sessions and ship its spool


@dataclass
class Child:
    index: int
    proc: subprocess.Popen[bytes]
    ctrl: socket.socket
    started: float = field(default_factory=time.monotonic)
    ready: bool = False


class Parent:
    def __init__(self, listener: socket.socket, processes: int, child_args: list[str]) -> None:
        self.listener = listener
        self.processes = processes
        self.child_args = child_args
        self.children: dict[int, Child] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.accepting = False  # only while a child is ready: until then clients wait in
        self._next = 0          # the listen backlog instead of being turned away

    # -- children

    def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            proc = subprocess.Popen(  # noqa: S603 - our interpreter, our module, our args
                [sys.executable, "-m", "accord.gateway.prefork", "--fd", str(theirs.fileno()),
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

    def _check_children(self) -> None:
        for child in list(self.children.values()):
            code = child.proc.poll()
            if code is None:
                if not child.ready and time.monotonic() - child.started > START_TIMEOUT:
                    log.error("gateway process %d did not start in %.0fs; starting another",
                              child.index, START_TIMEOUT)
                    child.proc.kill()
                    child.proc.wait()
                    self._forget(child)
                    self._spawn(child.index)
                continue
            self._forget(child)
            if not self.stopping:
                log.error("gateway process %d exited (%s); starting another", child.index, code)
                self._spawn(child.index)

    # -- events

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        ready = sorted(i for i, c in self.children.items() if c.ready)
        for attempt in range(len(ready)):
            child = self.children[ready[(self._next + attempt) % len(ready)]]
            try:
                socket.send_fds(child.ctrl, [msg.ACCEPTED], [conn.fileno()])
            except OSError:  # it died under us: the next one
                child.ready = False
                continue
            self._next = (self._next + attempt + 1) % len(ready)
            return
        log.error("gateway: no gateway process is ready; a connection was closed")

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
        if data == READY:
            child.ready = True
            log.info("gateway process %d (pid %d) is ready", child.index, child.proc.pid)
        elif data[:1] == msg.CANCEL and len(data) == msg.CANCEL_SIZE:
            pid, _ = msg.unpack_cancel(data)
            target = self.children.get(msg.child_of(pid))
            if target is not None and target is not child and target.ready:
                with contextlib.suppress(OSError):
                    target.ctrl.send(data)

    # -- the loop

    def _follow_readiness(self) -> None:
        ready = any(c.ready for c in self.children.values())
        if ready and not self.accepting:
            self.selector.register(self.listener, selectors.EVENT_READ, None)
        elif self.accepting and not ready:
            self.selector.unregister(self.listener)
        self.accepting = ready

    def run(self) -> int:
        for index in range(1, self.processes + 1):
            self._spawn(index)
        self.listener.setblocking(False)
        while not self.stopping:
            for key, _ in self.selector.select(0.5):
                if key.data is None:
                    self._accept()
                else:
                    self._from_child(key.data)
            self._check_children()
            self._follow_readiness()
        return self._stop_children()

    def _stop_children(self) -> int:
        if self.accepting:
            self.selector.unregister(self.listener)
        self.listener.close()
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
        return 1 if failed else 0

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock


def run_parent(listener: socket.socket, processes: int, child_args: list[str]) -> int:
    """Serve until SIGTERM or SIGINT; the exit status (0: every child stopped cleanly)."""
    parent = Parent(listener, processes, child_args)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, parent.stop)
    return parent.run()


def _child_main(argv: list[str]) -> None:
    """One gateway process: connections come from the parent over --fd."""
    from accord.cli.state import load_state
    from accord.gateway.proxy import Gateway, run

    ap = argparse.ArgumentParser(prog="accord.gateway.prefork")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    inbox = socket.socket(fileno=args.fd)
    st = load_state(args.config, upgrade="never")
    spec = st.policies.current.loaded.spec.gateway
    if spec is None:
        raise SystemExit("accord.yaml has no `gateway:` section")
    gw = Gateway(st, spec, inbox=inbox, index=args.index)
    run(gw, on_ready=lambda: inbox.send(READY))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
