"""sysbench directly against MariaDB and through the Accord gateway's MySQL front (auditing every
statement), in one run; prints one JSON object.

One run does everything: a MariaDB database (`sysbench ... prepare`), an Accord database on
PostgreSQL and a policy whose resource reaches MariaDB with shared credentials, an active grant
and a connection token; starts `accord gateway` (and `accord worker`, which integrates the
ledger as it grows). sysbench then runs each workload against each target, interleaved
(direct, gateway, direct, ...), 8 threads, with its default server-side prepared statements
(so the gateway follows COM_STMT_PREPARE/EXECUTE and records each execution with its text),
through `benchmarks/forwarder.py` (a bare uvloop byte forwarder, as in gateway.py: the
floor for any proxy in Python; `gateway_to_forwarder` is what the gateway's own work costs),
and through HAProxy (`mode tcp`, `nbthread` = the gateway's process count: a C proxy that
only relays, the peer a Python gateway is compared with; `gateway_to_haproxy`). HAProxy is
left out, with a note, where it is not installed (`apt-get install haproxy`).

    .venv/bin/python benchmarks/gateway_mysql.py                 # 3 runs x 10 s per cell
    .venv/bin/python benchmarks/gateway_mysql.py --runs 1 --seconds 5 --json-only

Workloads: `oltp_point_select` (target: at least 0.45 of direct) and `oltp_read_only` (0.6).
CPU per transaction of the gateway (with its audit shippers; `gateway_shipper`: theirs
alone), the Accord worker, the forwarder, HAProxy, MariaDB (`mariadbd`) and PostgreSQL (the
ledger's store) comes from /proc, sysbench's own from its rusage: every process on the
machine that does the work, so a proxy's cost to the others shows too.

    --pin     # sysbench and MariaDB on CPU 0, everything else on the other CPUs: a proxy
              # on a host of its own, as in production, one gateway process (HAProxy
              # thread) per CPU it has; without it all share every core
    --gateway-priority -5   # gateway.priority (the data path's nice value); HAProxy's
                            # threads and the forwarder get the same

    --workloads oltp_point_select --targets gateway     # one cell, e.g. to profile it:
    ACCORD_BENCH_GATEWAY_PREFIX="py-spy record -o gw.svg --subprocesses --" \
        .venv/bin/python benchmarks/gateway_mysql.py --targets gateway
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from procstat import cmdline, descendants, own_seconds, threads
from psycopg import sql

from accord.gateway.prefork import auto_count
from gateway import FORWARDER, cpu_seconds, free_port, grant_token, log, start, stop, wait_port

ACCORD = str(Path(sys.executable).parent / "accord")
SYSBENCH = shutil.which("sysbench") or "/usr/bin/sysbench"
HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if Path(p).exists()), None)
TARGETS = ("direct", "gateway", "forwarder", "haproxy")
WORKLOADS = {"oltp_point_select": 0.45, "oltp_read_only": 0.6}


def policy(resource: str, port: int, mysql_port: int, priority: int | None = None) -> str:
    mysql = f'mysql: {{listen: "127.0.0.1:{mysql_port}"}}'
    nice = "" if priority is None else f", priority: {priority}"
    return f"""\
users: [bench]
groups: {{benchers: [bench]}}
gateway: {{listen: "127.0.0.1:{port}", token_ttl: 2h, {mysql}{nice}}}
resources:
  - name: {resource}
    kind: mariadb
    roles: [admin]
    gateway: {{dsn_env: BENCH_MYSQL_DSN, set_role: false}}
workflows:
  - name: bench
    match: 'true'
    require_reason: false
    max_duration: 8h
    auto_approve: 'true'
"""


def haproxy_config(tmp: Path, port: int, threads: int, upstream: str) -> Path:
    """A foreground HAProxy relaying TCP (no protocol of its own) to `upstream` (HOST:PORT,
    or a Unix socket's path): sysbench logs in to MariaDB through it as through the
    forwarder."""
    server = f"unix@{upstream}" if upstream.startswith("/") else upstream
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(f"""\
global
    nbthread {threads}
    maxconn 4096
    log stderr format short local0 notice

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend mysql
    bind 127.0.0.1:{port}
    default_backend mariadb

backend mariadb
    server mariadb {server}
""")
    return cfg


def pids_named(name: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    out.append(int(entry.name))
    return out


def pin(saved: dict[int, set[int]], pids: list[int], cpus: set[int]) -> None:
    """Every thread of `pids` on `cpus`, the process's affinity before kept in `saved`
    (`unpin` restores it); threads and processes started later by them inherit it."""
    for pid in pids:
        with suppress(OSError):
            saved.setdefault(pid, os.sched_getaffinity(pid))
        _set_threads(pid, cpus)


def unpin(saved: dict[int, set[int]]) -> None:
    """Every thread the pinned processes have now (MariaDB keeps the threads it started
    during the run for later connections) back on its process's affinity before."""
    for pid, cpus in saved.items():
        _set_threads(pid, cpus)


def _set_threads(pid: int, cpus: set[int]) -> None:
    for tid in threads(pid):
        with suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)


def renice(pid: int, priority: int | None) -> None:
    """Every thread of a relay at the gateway's `priority` (HAProxy 2.6 has no `nice`)."""
    if priority is not None:
        for tid in threads(pid):
            os.setpriority(os.PRIO_PROCESS, tid, priority)


def postgres_seconds() -> float:
    """CPU seconds of PostgreSQL's processes (the ledger's inserts, the worker's reads),
    each once (not with its children); a backend that ended between two readings is not
    counted."""
    return sum(own_seconds(pid) for pid in pids_named("postgres"))


def shipper_seconds(gateway: int) -> float:
    """CPU seconds of the gateway's audit shippers (children started by multiprocessing)."""
    return sum(cpu_seconds(p) for p in descendants(gateway) if "multiprocessing" in cmdline(p))


def sysbench(workload: str, conn: list[str], seconds: int, threads: int,
             table_size: int, cpus: set[int] | None = None) -> dict[str, float]:
    """One sysbench run: its transactions, tx/s, mean latency and its own CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [SYSBENCH, workload, "--db-driver=mysql", *conn, "--tables=1",
           f"--table-size={table_size}", f"--threads={threads}", f"--time={seconds}",
           "--report-interval=0", "--mysql-ssl=off", "run"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          preexec_fn=None if cpus is None else
                          lambda: os.sched_setaffinity(0, cpus))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"sysbench failed:\n{done.stdout}\n{done.stderr}")
    tx = re.search(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec", done.stdout)
    lat = re.search(r"avg:\s+([\d.]+)", done.stdout)
    if tx is None:
        raise SystemExit(f"cannot read sysbench's output:\n{done.stdout}")
    return {"transactions": int(tx.group(1)), "tps": float(tx.group(2)),
            "latency_ms": float(lat.group(1)) if lat else 0.0,
            "cpu_s": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--table-size", type=int, default=10000)
    ap.add_argument("--mariadb", default="mysql://root@127.0.0.1:3306/",
                    help="an admin DSN of the MariaDB to benchmark")
    ap.add_argument("--pg-admin-url", default=os.environ.get(
        "ACCORD_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL for Accord's own database")
    ap.add_argument("--upstream", choices=("tcp", "unix"), default="tcp",
                    help="how the gateway reaches MariaDB: as sysbench does (TCP), or over the "
                         "server's Unix socket (as gateway.py --upstream unix)")
    ap.add_argument("--unix-socket", default="/run/mysqld/mysqld.sock")
    ap.add_argument("--gateway-processes", type=int, default=None,
                    help="`accord gateway --processes N` (default: gateway.processes, `auto`: "
                         "one per core, at most 4), as gateway.py")
    ap.add_argument("--no-forwarder", action="store_true",
                    help="leave out the bare uvloop byte forwarder (benchmarks/forwarder.py)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated: which of oltp_point_select, oltp_read_only")
    ap.add_argument("--no-haproxy", action="store_true",
                    help="leave out HAProxy (on by default where it is installed)")
    ap.add_argument("--targets", default=None,
                    help="comma-separated: which of direct, gateway, forwarder, haproxy "
                         "(default: all; ratios need direct and gateway)")
    ap.add_argument("--gateway-priority", type=int, default=None,
                    help="gateway.priority, the data path's nice value (as gateway.py's); "
                         "HAProxy's threads and the forwarder get the same")
    ap.add_argument("--pin", action="store_true",
                    help="sysbench and MariaDB on CPU 0, the rest (the gateway and its "
                         "shippers, the Accord worker, PostgreSQL, the forwarder, HAProxy) on "
                         "the other CPUs: a proxy on a host of its own, as in production, "
                         "instead of sharing the cores with its load generator and database")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()
    quiet = args.json_only
    if not Path(SYSBENCH).exists():
        print(json.dumps({"error": "sysbench is not installed (apt-get install sysbench)"}))
        return 2
    wanted = args.targets.split(",") if args.targets else list(TARGETS)
    unknown = [t for t in wanted if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {', '.join(unknown)} (choose from {', '.join(TARGETS)})")
    skipped: dict[str, str] = {}
    if args.no_forwarder and "forwarder" in wanted:
        wanted.remove("forwarder")
    if args.no_haproxy and "haproxy" in wanted:
        wanted.remove("haproxy")
    if "haproxy" in wanted and HAPROXY is None:
        why = "haproxy is not installed (apt-get install haproxy), or run with --no-haproxy"
        if args.targets:  # asked for by name: say so rather than run without it
            print(json.dumps({"error": why}))
            return 2
        wanted.remove("haproxy")
        skipped["haproxy"] = "not installed (apt-get install haproxy)"
        log(f"left out: {why}", quiet)
    pinned: dict[int, set[int]] = {}  # process -> its affinity before the run
    if args.pin and (os.cpu_count() or 1) < 2:
        print(json.dumps({"error": "--pin needs two CPUs or more"}))
        return 2
    near = {0} if args.pin else None
    far = set(range(1, os.cpu_count() or 2))
    # Pinned, the gateway (and HAProxy) get one process (thread) per CPU they are given.
    processes = args.gateway_processes or (len(far) if args.pin else auto_count("postgresql"))
    suffix = secrets.token_hex(4)
    accord_db, target_db = f"accord_mybench_{suffix}", f"accord_mybench_t_{suffix}"
    dsn = args.mariadb.rstrip("/")
    m = re.match(r"mysql://([^:@/]+)(?::([^@/]*))?@([^:/]+)(?::(\d+))?", dsn)
    if m is None:
        raise SystemExit("--mariadb must be mysql://user[:password]@host[:port]/")
    my_user, my_password, my_host, my_port = m.group(1), m.group(2) or "", m.group(3), \
        int(m.group(4) or 3306)
    admin = pymysql.connect(host=my_host, port=my_port, user=my_user, password=my_password,
                            autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{target_db}`")
    base = args.pg_admin_url.rsplit("/", 1)[0]
    with psycopg.connect(args.pg_admin_url, autocommit=True) as pg:
        pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(accord_db)))
    tmp = Path(tempfile.mkdtemp(prefix="accord-mybench-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    if args.pin:  # what this script starts inherits `far`; sysbench is given `near`
        pin(pinned, [os.getpid()], far)
        pin(pinned, pids_named("mariadbd") or pids_named("mysqld"), near or {0})
        pin(pinned, pids_named("postgres"), far)  # new backends inherit the postmaster's
    direct = [f"--mysql-host={my_host}", f"--mysql-port={my_port}", f"--mysql-user={my_user}",
              f"--mysql-password={my_password}", f"--mysql-db={target_db}"]
    try:
        log(f"sysbench prepare {target_db}", quiet)
        subprocess.run([SYSBENCH, "oltp_read_only", "--db-driver=mysql", *direct, "--tables=1",
                        f"--table-size={args.table_size}", "prepare"], check=True,
                       capture_output=True)
        resource = "bench"
        gw_port, my_gw_port = free_port(), free_port()
        config = tmp / "accord.yaml"
        config.write_text(policy(resource, gw_port, my_gw_port, args.gateway_priority))
        data_dir = tmp / "data"
        accord_url = f"{base}/{accord_db}"
        env = {**os.environ, "ACCORD_DATABASE_URL": accord_url, "ACCORD_CONFIG": str(config),
               "ACCORD_DATA_DIR": str(data_dir), "BENCH_MYSQL_DSN": f"{dsn}/{target_db}" + (
                   f"?unix_socket={args.unix_socket}" if args.upstream == "unix" else "")}
        token = grant_token(accord_url, config, data_dir, resource)
        count = ["--processes", str(processes)] if args.gateway_processes or args.pin else []
        prefix = os.environ.get("ACCORD_BENCH_GATEWAY_PREFIX", "").split()  # a profiler
        procs["gateway"] = start([*prefix, ACCORD, "gateway", "--log-level", "warning",
                                  *count], env, tmp / "gateway.log")
        wait_port(my_gw_port, procs["gateway"], tmp / "gateway.log")
        procs["worker"] = start([ACCORD, "worker"], env, tmp / "worker.log")
        targets = {"direct": direct,
                   "gateway": ["--mysql-host=127.0.0.1", f"--mysql-port={my_gw_port}",
                               "--mysql-user=bench", f"--mysql-password={token}",
                               f"--mysql-db={resource}"]}
        counted = {"gateway": procs["gateway"].pid, "accord_worker": procs["worker"].pid}
        upstream = args.unix_socket if args.upstream == "unix" else f"{my_host}:{my_port}"
        # The forwarder and HAProxy relay bytes only: sysbench logs in to MariaDB itself.
        if "forwarder" in wanted:
            fw_port = free_port()
            procs["forwarder"] = start(
                [sys.executable, FORWARDER, str(fw_port), upstream], env, tmp / "forwarder.out")
            wait_port(fw_port, procs["forwarder"], tmp / "forwarder.out")
            renice(procs["forwarder"].pid, args.gateway_priority)
            targets["forwarder"] = ["--mysql-host=127.0.0.1", f"--mysql-port={fw_port}",
                                    *direct[2:]]
            counted["forwarder"] = procs["forwarder"].pid
        if "haproxy" in wanted:
            assert HAPROXY is not None
            ha_port = free_port()
            cfg = haproxy_config(tmp, ha_port, processes, upstream)
            procs["haproxy"] = start([HAPROXY, "-db", "-f", str(cfg)], env,
                                     tmp / "haproxy.out")
            wait_port(ha_port, procs["haproxy"], tmp / "haproxy.out")
            targets["haproxy"] = ["--mysql-host=127.0.0.1", f"--mysql-port={ha_port}",
                                  *direct[2:]]
            counted["haproxy"] = procs["haproxy"].pid
            renice(procs["haproxy"].pid, args.gateway_priority)
        targets = {t: c for t, c in targets.items() if t in wanted}
        workloads = {w: WORKLOADS[w] for w in args.workloads.split(",")}
        mariadbd = pids_named("mariadbd") or pids_named("mysqld")
        results: dict[str, dict[str, list[dict[str, float]]]] = {
            w: {t: [] for t in targets} for w in workloads}
        gateway_pid = procs["gateway"].pid
        for run in range(args.runs):
            for workload in workloads:
                for target, conn in targets.items():
                    before = {k: cpu_seconds(p) for k, p in counted.items()}
                    before_db = sum(cpu_seconds(p) for p in mariadbd)
                    before_pg = postgres_seconds()
                    before_ship = shipper_seconds(gateway_pid)
                    r = sysbench(workload, conn, args.seconds, args.threads, args.table_size,
                                 near)
                    cpu = {k: cpu_seconds(p) - before[k] for k, p in counted.items()}
                    cpu["mariadbd"] = sum(cpu_seconds(p) for p in mariadbd) - before_db
                    cpu["sysbench"] = r.pop("cpu_s")
                    # PostgreSQL stores the ledger: direct runs show what else it does.
                    cpu["postgres"] = postgres_seconds() - before_pg
                    # Of the gateway's (which counts its shippers): the shippers' part.
                    cpu["gateway_shipper"] = shipper_seconds(gateway_pid) - before_ship
                    r["cpu_us_per_tx"] = {  # type: ignore[assignment]
                        k: round(v / max(r["transactions"], 1) * 1e6, 1)
                        for k, v in cpu.items()
                        if k in ("mariadbd", "sysbench", "postgres") or k == target or (
                            target == "gateway" and k in ("accord_worker", "gateway_shipper"))}
                    results[workload][target].append(r)
                    log(f"run {run + 1} {workload} {target}: {r['tps']:.0f} tx/s "
                        f"cpu/tx {r['cpu_us_per_tx']}", quiet)
        out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "loadavg": os.getloadavg()},
                               "runs": args.runs, "seconds": args.seconds,
                               "threads": args.threads, "upstream": args.upstream,
                               "pinned": {"sysbench_mariadbd": sorted(near), "proxies": sorted(
                                   far)} if near else None,
                               "gateway_processes": processes,
                               "gateway_priority": args.gateway_priority,
                               "haproxy_nbthread": processes if "haproxy" in targets else None,
                               "workloads": {}}
        if skipped:
            out["skipped"] = skipped
        for workload, target_ratio in workloads.items():
            cell: dict[str, Any] = {}
            for target, runs in results[workload].items():
                cell[target] = {"tps": statistics.median(r["tps"] for r in runs),
                                "latency_ms": statistics.median(r["latency_ms"] for r in runs),
                                "cpu_us_per_tx": {
                                    k: statistics.median(r["cpu_us_per_tx"][k]  # type: ignore[index]
                                                         for r in runs)
                                    for k in runs[0]["cpu_us_per_tx"]}}  # type: ignore[attr-defined]
            if "gateway" not in cell or "direct" not in cell:
                out["workloads"][workload] = cell
                continue
            ratio = cell["gateway"]["tps"] / cell["direct"]["tps"]
            cell["ratio"] = round(ratio, 3)
            if "forwarder" in cell:
                cell["forwarder_ratio"] = round(
                    cell["forwarder"]["tps"] / cell["direct"]["tps"], 3)
                cell["gateway_to_forwarder"] = round(
                    cell["gateway"]["tps"] / cell["forwarder"]["tps"], 3)
            if "haproxy" in cell:
                cell["haproxy_ratio"] = round(cell["haproxy"]["tps"] / cell["direct"]["tps"], 3)
                cell["gateway_to_haproxy"] = round(
                    cell["gateway"]["tps"] / cell["haproxy"]["tps"], 3)
            cell["target"] = target_ratio
            cell["meets_target"] = ratio >= target_ratio
            out["workloads"][workload] = cell
        print(json.dumps(out, indent=None if args.json_only else 2), flush=True)
        return 0
    finally:
        for proc in procs.values():
            stop(proc)
        unpin(pinned)  # first: MariaDB serves other work once this script is done
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{target_db}`")
        admin.close()
        with psycopg.connect(args.pg_admin_url, autocommit=True) as pg:
            pg.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(accord_db)))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
