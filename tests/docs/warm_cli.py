"""A warm `accord` for tests that run many CLI commands through a shell.

Python takes about a second to import the CLI, most of a docs command's time. `serve`
imports it once and forks a child per command; the `accord` it writes on PATH is a
stdlib-only client (python -S) that hands the child its argv, environment, working
directory and its stdin/stdout/stderr, and exits with the child's status. The command
itself is the real CLI's code (`accord.cli.main:app`) talking to the real server; only the
interpreter's start is shared. A child ends when its client goes away (a stopped `-f`).
"""

from __future__ import annotations

import array
import json
import os
import socket
import sys
import threading
from pathlib import Path

CLIENT = """\
#!{python} -SE
import array, json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({sock!r})
fds = array.array("i", [0, 1, 2])
body = json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}})
s.sendmsg([body.encode() + b"\\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
status = s.recv(4)
sys.exit(int.from_bytes(status, "little") if len(status) == 4 else 1)
"""


def write_client(directory: Path, sock: Path) -> None:
    """`directory/accord`: the client of the warm CLI listening on `sock`."""
    path = directory / "accord"
    path.write_text(CLIENT.format(python=sys.executable, sock=str(sock)), encoding="utf-8")
    path.chmod(0o755)


def _run(conn: socket.socket) -> None:
    """In the forked child: become the command, run it, report its exit status."""
    data, fds, _flags, _addr = conn.recvmsg(1 << 20, socket.CMSG_SPACE(3 * 4))
    for level, kind, raw in fds:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(raw[: len(raw) - len(raw) % 4])
            for target, fd in enumerate(got):
                os.dup2(fd, target)
                os.close(fd)
    job = json.loads(data)
    os.environ.clear()
    os.environ.update(job["env"])
    os.chdir(job["cwd"])
    sys.argv = ["accord", *job["argv"]]

    def watch() -> None:  # the client was stopped: so is the command
        conn.recv(1)
        os._exit(143)

    threading.Thread(target=watch, daemon=True).start()
    from accord.cli.main import app

    status = 0
    try:
        app(prog_name="accord")
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            status = 1
        else:
            status = exc.code or 0
    except BaseException:  # as an uncaught exception ends a process: traceback, 1
        import traceback

        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall(status.to_bytes(4, "little"))
    os._exit(0)


def serve(sock: str) -> None:
    import signal

    import accord.cli.main  # noqa: F401 - the point: imported once, before forking

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock)
    server.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            _run(conn)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
