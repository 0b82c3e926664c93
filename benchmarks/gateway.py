"""pgbench directly, through the Accord gateway (auditing every statement), through pgbouncer
and through a bare Python byte forwarder.

One run does everything: creates a target database (`pgbench -i`), an Accord database and
policy, an active grant and a connection token; starts `accord gateway` (and, unless
`--no-worker`, `accord worker`, which integrates the ledger as it grows), a private
pgbouncer (session mode, trust auth, a temp config on a free port, `-u nobody`) and
`benchmarks/forwarder.py` (uvloop, relays bytes and nothing else: the floor for a proxy in
Python). The gateway, pgbouncer and the forwarder reach PostgreSQL alike: over TCP
(default) or over its Unix socket (`--upstream unix`). pgbench
then runs against each, interleaved (direct, gateway, pgbouncer, forwarder, direct, ...) so
drift in the machine's speed hits all alike, and one JSON object with medians is printed.

    .venv/bin/python benchmarks/gateway.py                # 3 runs x 10 s per cell
    .venv/bin/python benchmarks/gateway.py --runs 5 --seconds 20 --json-only

Workloads, 8 clients each: select-only simple protocol (-S -M simple), select-only
extended protocol (-S -M extended) and TPC-B-like (-M simple). CPU per transaction of the
gateway (with its audit shipper), pgbouncer and the forwarder comes from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from procstat import Breakdown, cmdline, descendants
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
ACCORD = str(Path(sys.executable).parent / "accord")
PGBENCH = shutil.which("pgbench") or "/usr/bin/pgbench"
PGBOUNCER = "/usr/sbin/pgbouncer"
FORWARDER = str(Path(__file__).resolve().parent / "forwarder.py")
MODES = {
    "select_simple": ["-S", "-M", "simple"],
    "select_extended": ["-S", "-M", "extended"],
    "tpcb_simple": ["-M", "simple"],
}
TARGETS = {"select_simple": (0.45, None), "select_extended": (0.55, None)}


def log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], logfile: Path, timeout: float = 60
              ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process exited early:\n{logfile.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"port {port} never opened:\n{logfile.read_text()}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (the gateway's processes and their
    audit shippers), in seconds."""
    ticks = 0
    for p in (pid, *descendants(pid)):
        with suppress(FileNotFoundError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def role_of(procs: dict[str, subprocess.Popen[bytes]], target_db: str, accord_db: str
            ) -> Callable[[int], str | None]:
    """Name a process for the CPU breakdown (None: not counted)."""
    gateway = procs["gateway"].pid
    worker = {procs["worker"].pid} | descendants(procs["worker"].pid) if "worker" in procs \
        else set()
    own: dict[int, str] = {procs[t].pid: t for t in ("pgbouncer", "forwarder") if t in procs}

    def role(pid: int) -> str | None:
        if pid == gateway:
            return "gateway"
        if pid in descendants(gateway):  # prefork children, and each one's audit shipper
            return "gateway_shipper" if "multiprocessing" in cmdline(pid) else "gateway"
        if pid in worker:
            return "accord_worker"
        if pid in own:
            return own[pid]
        cmd = cmdline(pid)
        if cmd.startswith("postgres:"):
            words = cmd.split()
            if target_db in words:
                return "postgres_target"
            if accord_db in words:
                return "postgres_accord"
            return "postgres_other"
        if Path(cmd.split(" ", 1)[0]).name == "pgbench":
            return "pgbench"
        return "other" if cmd else None

    return role


def policy(resource: str, port: int, extra: str = "") -> str:
    return f"""\
users: [bench]
groups: {{benchers: [bench]}}
gateway: {{listen: "127.0.0.1:{port}", token_ttl: 2h{extra}}}
resources:
  - name: {resource}
    roles: [admin]
    gateway: {{dsn_env: BENCH_TARGET_DSN, set_role: false}}
workflows:
  - name: bench
    match: 'true'
    require_reason: false
    max_duration: 8h
    auto_approve: 'true'
"""


@contextmanager
def databases(admin_url: str, scale: int, quiet: bool) -> Iterator[tuple[str, str]]:
    suffix = secrets.token_hex(4)
    accord_db, target_db = f"accord_gwbench_{suffix}", f"accord_gwbench_t_{suffix}"
    base = admin_url.rsplit("/", 1)[0]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for db in (accord_db, target_db):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    try:
        log(f"pgbench -i -s {scale} {target_db}", quiet)
        subprocess.run([PGBENCH, "-i", "-q", "-s", str(scale), f"{base}/{target_db}"],
                       check=True, capture_output=True)
        yield f"{base}/{accord_db}", f"{base}/{target_db}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for db in (accord_db, target_db):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(db)))


def grant_token(accord_url: str, config: Path, data_dir: Path, resource: str) -> str:
    """Migrate, load the policy, get `bench` an active admin grant and a connection token."""
    from accord.bootstrap import build_state
    from accord.db import transaction
    from accord.gateway import tokens
    from accord.grants.models import Grant
    from accord.requests import service as requests
    from accord.requests.service import Caller
    from accord.settings import Settings

    settings = Settings.from_env({"ACCORD_DATABASE_URL": accord_url,
                                  "ACCORD_DATA_DIR": str(data_dir),
                                  "ACCORD_CONFIG": str(config)})
    st = build_state(settings, config_path=config, upgrade="always")
    with transaction(st.sessions) as s:
        req = requests.create(s, policy=st.policies.current, caller=Caller("bench", "cli"),
                              resource=resource, role="admin", duration=timedelta(hours=8),
                              reason="benchmark", now=st.now())
        grant = s.get(Grant, req.grant_id)
        assert grant is not None and grant.status == "active", req.status
        _, token = tokens.issue_token(s, grant=grant, actor=Caller("bench", "cli").actor,
                                       now=st.now(), ttl=timedelta(hours=2))
    bind = st.sessions.kw["bind"]
    bind.dispose()
    return token


def start(cmd: list[str], env: dict[str, str], logfile: Path) -> subprocess.Popen[bytes]:
    with logfile.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def missing_tools(no_pgbouncer: bool) -> dict[str, str]:
    """The outside programs this run needs and how to get each one that is missing."""
    out = {}
    if not Path(PGBENCH).exists():
        out["pgbench"] = ("apt-get install postgresql-contrib (Debian; PostgreSQL's "
                          "client tools elsewhere)")
    if not no_pgbouncer and not Path(PGBOUNCER).exists():
        out["pgbouncer"] = "apt-get install pgbouncer (Debian), or run with --no-pgbouncer"
    return out


def pgbouncer_config(tmp: Path, port: int, target_db: str, upstream_host: str) -> Path:
    tmp.mkdir(mode=0o755, exist_ok=True)
    (tmp / "userlist.txt").write_text('"postgres" ""\n')
    ini = tmp / "pgbouncer.ini"
    ini.write_text(f"""\
[databases]
bench = host={upstream_host} port=5432 dbname={target_db} user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp / 'userlist.txt'}
pool_mode = session
max_client_conn = 200
default_pool_size = 20
logfile = {tmp / 'pgbouncer.log'}
pidfile = {tmp / 'pgbouncer.pid'}
""")
    for path in (tmp, tmp / "userlist.txt", ini):
        path.chmod(0o777 if path.is_dir() else 0o644)
    return ini


_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_LAT = re.compile(r"latency average = ([0-9.]+) ms")
_TX = re.compile(r"number of transactions actually processed: (\d+)")


def pg_env(port: int, user: str, database: str, password: str | None = None
           ) -> dict[str, str]:
    """The environment pgbench needs to reach 127.0.0.1:`port` (no TLS)."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": user,
           "PGDATABASE": database, "PGSSLMODE": "disable"}
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def pgbench(args: list[str], env: dict[str, str], seconds: int, clients: int) -> dict[str, float]:
    cmd = [PGBENCH, "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                         timeout=seconds + 120)
    text = out.stdout + out.stderr
    tps, lat, tx = _TPS.search(text), _LAT.search(text), _TX.search(text)
    if out.returncode != 0 or not tps or not lat or not tx:
        raise SystemExit(f"pgbench failed ({' '.join(cmd)}):\n{text}")
    return {"tps": float(tps.group(1)), "latency_ms": float(lat.group(1)),
            "transactions": float(tx.group(1))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--no-worker", action="store_true",
                    help="do not run `accord worker` (ledger integration) beside the gateway")
    ap.add_argument("--no-pgbouncer", action="store_true")
    ap.add_argument("--no-forwarder", action="store_true",
                    help="leave out the bare uvloop byte forwarder (benchmarks/forwarder.py)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated workloads (default: {','.join(MODES)})")
    ap.add_argument("--upstream", choices=("tcp", "unix"), default="tcp",
                    help="how the gateway, pgbouncer and the forwarder reach PostgreSQL: TCP "
                         "on 127.0.0.1 (default) or its Unix socket")
    ap.add_argument("--unix-socket-dir", default="/var/run/postgresql")
    ap.add_argument("--json-only", action="store_true")
    ap.add_argument("--gateway-processes", type=int, default=None,
                    help="`accord gateway --processes N` (default: gateway.processes, `auto`: "
                         "one per core, at most 4, on Linux with PostgreSQL)")
    ap.add_argument("--gateway-priority", type=int, default=None,
                    help="gateway.priority: the data path's nice value (default: unset, the "
                         "gateway runs at the nice value it was started with)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also report every process's CPU per transaction by role "
                         "(benchmarks/procstat.py) and the machine's idle time")
    args = ap.parse_args()
    quiet = args.json_only
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        ap.error(f"--modes: unknown {', '.join(unknown) or '(none given)'}; choose from "
                 f"{', '.join(MODES)}")
    missing = missing_tools(args.no_pgbouncer)
    if missing:
        print(json.dumps({"error": "missing tools", "missing": missing}), flush=True)
        for tool, how in missing.items():
            print(f"{tool} is not installed: {how}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="accord-gwbench-"))
    tmp.chmod(0o755)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with databases(args.pg_admin_url, args.scale, quiet) as (accord_url, target_url):
            resource = "bench"
            gw_port, bouncer_port, fw_port = free_port(), free_port(), free_port()
            config = tmp / "accord.yaml"
            config.write_text(policy(resource, gw_port, "" if args.gateway_priority is None
                                     else f", priority: {args.gateway_priority}"))
            data_dir = tmp / "data"
            target_db = target_url.rsplit("/", 1)[1]
            upstream_host = (args.unix_socket_dir if args.upstream == "unix" else "127.0.0.1")
            upstream_dsn = (f"postgresql://postgres@/{target_db}?host={upstream_host}"
                            if args.upstream == "unix" else target_url)
            env = {**os.environ, "ACCORD_DATABASE_URL": accord_url, "ACCORD_CONFIG": str(config),
                   "ACCORD_DATA_DIR": str(data_dir), "BENCH_TARGET_DSN": upstream_dsn}
            token = grant_token(accord_url, config, data_dir, resource)
            count = ["--processes", str(args.gateway_processes)] \
                if args.gateway_processes else []
            procs["gateway"] = start([ACCORD, "gateway", "--log-level", "warning", *count],
                                     env, tmp / "gateway.log")
            wait_port(gw_port, procs["gateway"], tmp / "gateway.log")
            if not args.no_worker:
                procs["worker"] = start([ACCORD, "worker"], env, tmp / "worker.log")
            if not args.no_pgbouncer:
                ini = pgbouncer_config(tmp / "bouncer", bouncer_port, target_db, upstream_host)
                procs["pgbouncer"] = start([PGBOUNCER, "-u", "nobody", str(ini)], env,
                                           tmp / "pgbouncer.out")
                wait_port(bouncer_port, procs["pgbouncer"], tmp / "pgbouncer.out")
            if not args.no_forwarder:
                socket_path = f"{upstream_host}/.s.PGSQL.5432"
                procs["forwarder"] = start(
                    [sys.executable, FORWARDER, str(fw_port),
                     socket_path if args.upstream == "unix" else "127.0.0.1:5432"],
                    env, tmp / "forwarder.out")
                wait_port(fw_port, procs["forwarder"], tmp / "forwarder.out")
            conn_env = {"direct": pg_env(5432, "postgres", target_db),
                        "gateway": pg_env(gw_port, "bench", resource, token)}
            if not args.no_pgbouncer:
                conn_env["pgbouncer"] = pg_env(bouncer_port, "postgres", "bench")
            if not args.no_forwarder:
                conn_env["forwarder"] = pg_env(fw_port, "postgres", target_db)
            cpu_pid: dict[str, int] = {t: procs[t].pid for t in
                                       ("gateway", "pgbouncer", "forwarder") if t in procs}
            results: dict[str, dict[str, list[dict[str, float]]]] = {
                m: {t: [] for t in conn_env} for m in modes}
            breakdowns: dict[str, dict[str, list[dict[str, float]]]] = {
                m: {t: [] for t in conn_env} for m in modes}
            roles = role_of(procs, target_db, accord_url.rsplit("/", 1)[1])
            for mode in modes:
                for t in conn_env:  # warm-up, unmeasured
                    pgbench(MODES[mode], conn_env[t], 2, args.clients)
                for run in range(args.runs):
                    for t in conn_env:
                        before = cpu_seconds(cpu_pid[t]) if t in cpu_pid else None
                        sampler = Breakdown(roles) if args.breakdown else None
                        if sampler is not None:
                            sampler.start()
                        r = pgbench(MODES[mode], conn_env[t], args.seconds, args.clients)
                        if sampler is not None:
                            breakdowns[mode][t].append(sampler.stop(r["transactions"]))
                            log(f"  cpu us/tx: {breakdowns[mode][t][-1]}", quiet)
                        if before is not None:
                            used = cpu_seconds(cpu_pid[t]) - before
                            r["cpu_us_per_tx"] = round(used / r["transactions"] * 1e6, 1)
                        results[mode][t].append(r)
                        log(f"{mode:16} run {run + 1} {t:10} tps {r['tps']:9.1f}  latency "
                            f"{r['latency_ms']:.3f} ms  cpu/tx {r.get('cpu_us_per_tx', '-')}",
                            quiet)
            audited = audit_check(accord_url, procs)
    finally:
        for name in ("forwarder", "pgbouncer", "worker", "gateway"):
            stop(procs.get(name))
        shutil.rmtree(tmp, ignore_errors=True)
    out = summary(results, args, load_before, audited)
    if args.breakdown:
        out["cpu_us_per_tx_by_process"] = {
            mode: {t: {role: statistics.median(b.get(role, 0.0) for b in runs)
                       for role in runs[0]} for t, runs in per_target.items() if runs}
            for mode, per_target in breakdowns.items()}
    print(json.dumps(out, indent=2))
    return 0


def audit_check(accord_url: str, procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
    """Stop the gateway (it flushes), then count what the ledger holds."""
    stop(procs.get("gateway"))
    with psycopg.connect(accord_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(statement_count), 0), coalesce(sum("
                           "session_count), 0) FROM gateway_usage").fetchone()
        events = conn.execute("SELECT count(*) FROM ledger_entries WHERE type = "
                              "'gateway.statement'").fetchone()
        pending = conn.execute("SELECT count(*) FROM ledger_entries WHERE idx IS NULL"
                               ).fetchone()
    assert row is not None and events is not None and pending is not None
    return {"statements_recorded": int(row[0]), "sessions_recorded": int(row[1]),
            "statement_events": int(events[0]), "ledger_pending_integration": int(pending[0])}


def summary(results: dict[str, dict[str, list[dict[str, float]]]], args: argparse.Namespace,
            load_before: tuple[float, float, float], audited: dict[str, Any]) -> dict[str, Any]:
    from accord.gateway.prefork import auto_count

    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "config": {"runs": args.runs, "seconds": args.seconds, "clients": args.clients,
                   "scale": args.scale, "worker": not args.no_worker,
                   "upstream": args.upstream,
                   "gateway": "default config: parameters redacted, every statement audited",
                   "gateway_processes": args.gateway_processes or auto_count("postgresql"),
                   "gateway_priority": args.gateway_priority},
        "results": {}, "ratios": {}, "targets": {}, "audit": audited,
    }
    total_tx = 0.0
    for mode, per_target in results.items():
        cell: dict[str, Any] = {}
        for t, runs in per_target.items():
            cell[t] = {
                "tps": round(statistics.median(r["tps"] for r in runs), 1),
                "latency_ms": round(statistics.median(r["latency_ms"] for r in runs), 3),
                "tps_runs": [round(r["tps"], 1) for r in runs],
            }
            if runs and "cpu_us_per_tx" in runs[0]:
                cell[t]["cpu_us_per_tx"] = statistics.median(r["cpu_us_per_tx"] for r in runs)
            if t == "gateway":
                total_tx += sum(r["transactions"] for r in runs)
        out["results"][mode] = cell
        direct = cell["direct"]["tps"]
        ratios = {"gateway_vs_direct": round(cell["gateway"]["tps"] / direct, 3)}
        if "pgbouncer" in cell:
            ratios["pgbouncer_vs_direct"] = round(cell["pgbouncer"]["tps"] / direct, 3)
            ratios["gateway_vs_pgbouncer"] = round(cell["gateway"]["tps"]
                                                   / cell["pgbouncer"]["tps"], 3)
        if "forwarder" in cell:
            ratios["forwarder_vs_direct"] = round(cell["forwarder"]["tps"] / direct, 3)
            ratios["gateway_vs_forwarder"] = round(cell["gateway"]["tps"]
                                                   / cell["forwarder"]["tps"], 3)
        out["ratios"][mode] = ratios
        if mode in TARGETS:
            target = TARGETS[mode][0]
            out["targets"][mode] = {"gateway_vs_direct_at_least": target,
                                    "met": ratios["gateway_vs_direct"] >= target}
    out["audit"]["gateway_transactions_measured"] = int(total_tx)
    return out


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        sys.exit(main())
