"""The SSH gateway against a direct connection to the same sshd; prints one JSON object.

One run does everything: a private sshd on a free port (Debian's openssh-server, started as
the current user with its own keys in a temp dir), an Accord database on PostgreSQL, a policy
with one resource of kind ssh, an active grant and a connection token, and `accord gateway`
with `gateway.ssh` (recording every channel). Then, with asyncssh as the client:

* throughput: `cat` of a file of --megabytes (log-like text; random bytes with --binary,
  the worst case for asciicast) over exec, direct and through the gateway (runs
  interleaved; target: the gateway at least 0.5 of direct), the client with the same
  --cipher on both paths, the recordings' bytes in the database (or pack files, --store
  packs); and the CPU time the gateway and its shipper spent on a run
  until it was in the ledger (per 100 MB: what the machine's load changes least), and
  PostgreSQL's for storing it (`store_cpu_s_per_100mb`: on the same cores here); with
  --upload the other way: the file written to `cat > /dev/null` (the client's input);
* the same `cat` through benchmarks/ssh_relay.py (unless --no-relay): a bare relay on
  asyncssh, SSH terminated twice and nothing else, the floor for any gateway built on
  asyncssh (`relay_ratio`, `gateway_to_relay`, `relay_cpu_s_per_100mb`);
* keystroke latency: one byte written to an interactive `cat` in a pty, until its echo
  comes back, --keys times; p50/p99 direct and through the gateway, and what the gateway
  adds (target: p99 under 5 ms on 2 cores).

    .venv/bin/python benchmarks/ssh.py                  # 200 MB, 5 runs, 2000 keystrokes
    .venv/bin/python benchmarks/ssh.py --megabytes 20 --runs 1 --keys 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from gateway import free_port, grant_token, start, stop, wait_port

ACCORD = str(Path(sys.executable).parent / "accord")
SSHD = os.environ.get("ACCORD_BENCH_SSHD", "/usr/sbin/sshd")
KEY_ENV = "BENCH_SSH_KEY"


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True)
    return Path(f"{path}.pub").read_text().strip()


def sshd(tmp: Path, logfile: Path) -> tuple[subprocess.Popen[bytes], int, str, str]:
    host_pub = keygen(tmp / "host_key")
    (tmp / "authorized_keys").write_text(keygen(tmp / "client_key") + "\n")
    port = free_port()
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host_key'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nLogLevel ERROR\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)
    proc = start([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")], dict(os.environ), logfile)
    wait_port(port, proc, logfile)
    return proc, port, host_pub, (tmp / "client_key").read_text()


def policy(resource: str, port: int, ssh_port: int, target_port: int, host_key: str,
           packs: Path | None = None) -> str:
    ssh = f'listen: "127.0.0.1:{ssh_port}"' + (f', recordings_dir: "{packs}"' if packs else "")
    return f"""\
users: [bench]
groups: {{benchers: [bench]}}
gateway: {{listen: "127.0.0.1:{port}", token_ttl: 2h, ssh: {{{ssh}}}}}
resources:
  - name: {resource}
    kind: ssh
    roles: [admin]
    ssh: {{host: 127.0.0.1, port: {target_port}, users: {{admin: {getpass.getuser()}}},
          key_env: {KEY_ENV}, host_key: "{host_key}"}}
workflows:
  - name: bench
    match: 'true'
    require_reason: false
    max_duration: 8h
    auto_approve: 'true'
"""


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of a process and of its children (the gateway's shipper),
    from /proc: what the gateway costs whatever else the machine runs. A child is listed
    under the thread that started it (the shipper: a thread of the gateway's, not its main
    one)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(p) for p in (task / "children").read_text().split()]
    own = children_total = 0.0
    for p in [pid, *children]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            used = (int(fields[11]) + int(fields[12])) / tick
            if p == pid:
                own = used
            else:
                children_total += used
    return own, children_total


def backends_cpu(url: str, database: str) -> float:
    """CPU time of the PostgreSQL backends serving `database` (the shipper's inserts: the
    recordings' bytes into their table, and the ledger), from /proc: this machine's server."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    with psycopg.connect(url, autocommit=True) as c:
        pids = [r[0] for r in c.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s "
                                        "AND pid <> pg_backend_pid()", (database,))]
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def shipped(url: str, execs: int) -> None:
    """Until the ledger has `execs` commands (the last event of an exec's recording)."""
    deadline = time.monotonic() + 120
    with psycopg.connect(url, autocommit=True) as c:
        while time.monotonic() < deadline:
            row = c.execute("SELECT count(*) FROM ledger_entries "
                            "WHERE type = 'gateway.ssh_exec'").fetchone()
            if row and row[0] >= execs:
                return
            time.sleep(0.1)
    raise RuntimeError("the gateway's shipper did not catch up")


async def throughput(connect: Any, path: Path, size: int) -> float:
    """MB/s of `cat path` over exec."""
    async with connect() as conn:
        t0 = time.perf_counter()
        proc = await conn.create_process(f"cat {path}", encoding=None)
        got = 0
        while chunk := await proc.stdout.read(1 << 20):
            got += len(chunk)
        await proc.wait()
        took = time.perf_counter() - t0
    assert got == size, (got, size)
    return size / took / 1e6


async def upload(connect: Any, path: Path, size: int) -> float:
    """MB/s of the file written to `cat > /dev/null` over exec (the client's input: an
    upload, recorded as input)."""
    async with connect() as conn:
        t0 = time.perf_counter()
        proc = await conn.create_process("cat > /dev/null", encoding=None)
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        proc.stdin.write_eof()
        await proc.wait()
        took = time.perf_counter() - t0
    return size / took / 1e6


async def keystrokes(connect: Any, keys: int) -> list[float]:
    """Milliseconds from writing one byte to an interactive `cat` until its echo."""
    async with connect() as conn:
        proc = await conn.create_process("cat", term_type="xterm", encoding=None)
        out: list[float] = []
        for i in range(keys + 20):
            t0 = time.perf_counter()
            proc.stdin.write(b"x")
            await proc.stdout.readexactly(1)
            if i >= 20:  # warm-up
                out.append((time.perf_counter() - t0) * 1000)
        proc.stdin.write(b"\x04")
        proc.close()
        return out


def pct(values: list[float], p: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(p) - 1], 3) if len(values) > 1 \
        else round(values[0], 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--megabytes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--cipher", default="aes128-gcm@openssh.com",
                    help="the client's cipher on both paths (\"default\": asyncssh's own "
                         "list, chacha20-poly1305 first, which the gateway does not offer)")
    ap.add_argument("--binary", action="store_true",
                    help="cat random bytes (the worst case for asciicast) instead of text")
    ap.add_argument("--upload", action="store_true",
                    help="send the file to `cat > /dev/null` (the client's input) instead of "
                         "`cat` of it (the server's output)")
    ap.add_argument("--store", choices=("database", "packs"), default="database",
                    help="where the recordings' bytes go: the Accord database, or pack files "
                         "(gateway.ssh.recordings_dir)")
    ap.add_argument("--no-relay", action="store_true",
                    help="leave out the bare asyncssh relay (benchmarks/ssh_relay.py)")
    ap.add_argument("--pg-admin-url", default=os.environ.get(
        "ACCORD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = ap.parse_args()
    from accord.gateway.ssh.lib import asyncssh

    if not os.access(SSHD, os.X_OK):
        print(json.dumps({"error": f"{SSHD} is missing: apt-get install openssh-server"}))
        return 2
    suffix = secrets.token_hex(4)
    accord_db, resource = f"accord_sshbench_{suffix}", f"bench-{suffix}"
    base = args.pg_admin_url.rsplit("/", 1)[0]
    with psycopg.connect(args.pg_admin_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(accord_db)))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="accord-sshbench-") as t:
            tmp = Path(t)
            logfile = tmp / "bench.log"
            target, target_port, host_key, private_key = sshd(tmp, logfile)
            procs.append(target)
            data = tmp / "data.bin"
            with data.open("wb") as f:  # log-like text (a terminal's), or random bytes
                line = b"2026-12-06T01:42:15Z web-1 nginx[812]: GET /api/v1/orders 200 1532\n"
                block = os.urandom(1 << 20) if args.binary else \
                    (line * ((1 << 20) // len(line) + 1))[:1 << 20]
                for _ in range(args.megabytes):
                    f.write(block)
            size = args.megabytes << 20
            port, ssh_port = free_port(), free_port()
            config = tmp / "accord.yaml"
            config.write_text(policy(resource, port, ssh_port, target_port, host_key,
                                     tmp / "packs" if args.store == "packs" else None))
            accord_url = f"{base}/{accord_db}"
            token = grant_token(accord_url, config, tmp / "accord-data", resource)
            env = {**os.environ, "ACCORD_DATABASE_URL": accord_url, KEY_ENV: private_key,
                   "ACCORD_DATA_DIR": str(tmp / "accord-data")}
            prefix = os.environ.get("ACCORD_BENCH_GATEWAY_PREFIX", "").split()  # a profiler
            gw = start([*prefix, ACCORD, "gateway", "--config", str(config), "--processes",
                        "1"], env, logfile)
            procs.append(gw)
            wait_port(ssh_port, gw, logfile)
            key = asyncssh.import_private_key(private_key)
            relay_port, relay_pid = free_port(), 0
            if not args.no_relay:  # the floor: SSH terminated twice by asyncssh, nothing else
                relay_proc = start([sys.executable, str(Path(__file__).with_name("ssh_relay.py")),
                               str(relay_port), str(target_port), getpass.getuser(),
                               str(tmp / "client_key")], dict(os.environ), logfile)
                procs.append(relay_proc)
                wait_port(relay_port, relay_proc, logfile)
                relay_pid = relay_proc.pid

            ciphers = () if args.cipher == "default" else [args.cipher]

            def direct() -> Any:
                return asyncssh.connect("127.0.0.1", target_port, username=getpass.getuser(),
                                        client_keys=[key], known_hosts=None, agent_path=None,
                                        config=None, encryption_algs=ciphers)

            def gateway() -> Any:
                return asyncssh.connect("127.0.0.1", ssh_port, username=f"bench+{resource}",
                                        password=token, client_keys=None, known_hosts=None,
                                        agent_path=None, config=None,
                                        preferred_auth="password", encryption_algs=ciphers)

            def relayed() -> Any:
                return asyncssh.connect("127.0.0.1", relay_port, username="bench",
                                        password="-",  # noqa: S106 - the relay takes any
                                        client_keys=None, known_hosts=None,
                                        agent_path=None, config=None,
                                        preferred_auth="password", encryption_algs=ciphers)

            moved = upload if args.upload else throughput

            async def run() -> dict[str, Any]:
                rates: dict[str, list[float]] = {"direct": [], "gateway": [], "relay": []}
                cpu: list[float] = []
                shipper_cpu: list[float] = []
                store: list[float] = []
                relay_cpu: list[float] = []
                for _ in range(args.runs):
                    rates["direct"].append(await moved(direct, data, size))
                    before = cpu_seconds(gw.pid)
                    pg_before = backends_cpu(args.pg_admin_url, accord_db)
                    rates["gateway"].append(await moved(gateway, data, size))
                    assert gw.pid is not None
                    await asyncio.to_thread(shipped, accord_url, len(cpu) + 1)
                    after = cpu_seconds(gw.pid)
                    cpu.append(sum(after) - sum(before))
                    shipper_cpu.append(after[1] - before[1])
                    store.append(backends_cpu(args.pg_admin_url, accord_db) - pg_before)
                    if not args.no_relay:
                        before = cpu_seconds(relay_pid)
                        rates["relay"].append(await moved(relayed, data, size))
                        relay_cpu.append(sum(cpu_seconds(relay_pid)) - sum(before))
                lat = {"direct": await keystrokes(direct, args.keys),
                       "gateway": await keystrokes(gateway, args.keys)}
                d, g = statistics.median(rates["direct"]), statistics.median(rates["gateway"])
                relay = {} if args.no_relay else {
                    "relay": round(statistics.median(rates["relay"]), 1),
                    "relay_ratio": round(statistics.median(rates["relay"]) / d, 3),
                    "gateway_to_relay": round(g / statistics.median(rates["relay"]), 3),
                    "relay_cpu_s_per_100mb": round(
                        statistics.median(relay_cpu) * 100 / args.megabytes, 2)}
                return {
                    "throughput_mb_s": {"direct": round(d, 1), "gateway": round(g, 1),
                                        "ratio": round(g / d, 3), "target_ratio": 0.5, **relay,
                                        "megabytes": args.megabytes, "runs": args.runs,
                                        "content": "binary" if args.binary else "text",
                                        "store": args.store,
                                        "direction": "upload" if args.upload else "download",
                                        "cipher": args.cipher},
                    # the gateway's and its shipper's CPU for one run, until it was shipped
                    "gateway_cpu_s_per_100mb": round(
                        statistics.median(cpu) * 100 / args.megabytes, 2),
                    # of which the shipper's (reading the spool, hashing, inserting)
                    "shipper_cpu_s_per_100mb": round(
                        statistics.median(shipper_cpu) * 100 / args.megabytes, 2),
                    # PostgreSQL's, storing the recording and the events (not the gateway's
                    # own, but on the same cores here)
                    "store_cpu_s_per_100mb": round(
                        statistics.median(store) * 100 / args.megabytes, 2),
                    "keystroke_ms": {
                        "direct": {"p50": pct(lat["direct"], 50), "p99": pct(lat["direct"], 99)},
                        "gateway": {"p50": pct(lat["gateway"], 50),
                                    "p99": pct(lat["gateway"], 99)},
                        "added_p50": round(pct(lat["gateway"], 50) - pct(lat["direct"], 50), 3),
                        "added_p99": round(pct(lat["gateway"], 99) - pct(lat["direct"], 99), 3),
                        "target_p99": 5.0, "keys": args.keys},
                }

            print(json.dumps(asyncio.run(run()), indent=2))
    finally:
        for proc in reversed(procs):
            stop(proc)
        with psycopg.connect(args.pg_admin_url, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(accord_db)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
