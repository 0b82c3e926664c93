"""The integrity monitor's pace on PostgreSQL: does it keep up with 10,000 appends/s within
a quarter of one core?

Two measurements, one JSON object:

* `full_pass`: a ledger of --preload entries is re-hashed from index 0 by the monitor's
  own code (`IntegrityMonitor.check` in a loop). Reported: entries per second of the
  monitor's CPU (its process, plus the PostgreSQL backend serving its queries, from
  /proc), and what fraction of a core keeping up with --rate appends/s would take.
* `live`: an appender process writes --rate events/s (batches of 500 through
  `ledger.record`, integrated by the ledger worker's integrator) for --seconds, while a
  monitor process with the default pace (`ledger.integrity`: incremental every second,
  budget 0.25) runs. Reported: appended and integrated per second, the monitor's CPU
  (process + backend) as a fraction of a core, and how far behind the head its
  incremental walk was at the end and at worst.

Run: .venv/bin/python benchmarks/integrity.py [--preload 200000] [--rate 10000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction
from accord.ledger import integrity, keys
from accord.ledger.checkpoints import LedgerConfig
from accord.ledger.events import Actor, EventType
from accord.ledger.service import record
from accord.ledger.upkeep import integrate_all, sign_if_due
from accord.worker.integrity import IntegrityMonitor, Pace

PG_ADMIN = os.environ.get("ACCORD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TICKS = os.sysconf("SC_CLK_TCK")
APP = "accord-integrity-bench"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def backend_pids(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as c:
        return [int(p) for (p,) in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APP,))]


def _event(session: Any, i: int) -> None:
    record(session, type=EventType.GRANT_ACTIVATED, actor=Actor("user", f"user{i % 97}", "api"),
           subject=f"grant:{i}", resource={"name": f"db-{i % 13}", "role": "read"},
           data={"grant_id": i, "request_id": i, "user": f"user{i % 97}",
                 "starts_at": "2026-11-27T10:00:00.000000Z",
                 "ends_at": "2026-11-27T11:00:00.000000Z", "extends_grant_id": None})


def ledger_config(tmp: Path) -> LedgerConfig:
    key = tmp / "ledger.key"
    keys.load_or_create(key, "bench/ledger")
    return LedgerConfig(origin="bench/ledger", key_path=key)


def monitor_cpu(url: str) -> float:
    """This process's CPU and that of the PostgreSQL backends serving its monitor."""
    return time.process_time() + sum(cpu_seconds(p) for p in backend_pids(url))


def append(url: str, n: int, tmp: str, batch: int = 500) -> None:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    for first in range(0, n, batch):
        with transaction(sessions) as session:
            for i in range(first, min(n, first + batch)):
                _event(session, i)
        integrate_all(sessions)
    sign_if_due(sessions, ledger_config(Path(tmp)), utc())
    engine.dispose()


def utc() -> datetime:
    return datetime.now(UTC)


def appender(url: str, rate: int, seconds: float, tmp: str, out: Any, n: int = 0,
             go: Any = None) -> None:
    """Write `rate` events a second, integrating (and the first one signing every 2 s) as
    the worker does. Sets `go` as it starts: the monitor's measured window starts then."""
    sessions = make_sessionmaker(make_engine(url))
    cfg = ledger_config(Path(tmp))
    batch = 500
    if go is not None:
        go.set()
    started = time.monotonic()
    done = 0
    next_sign = started if n == 0 else float("inf")
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        while done < due:
            with transaction(sessions) as session:
                for i in range(done, done + batch):
                    _event(session, 10_000_000 * (n + 1) + i)
            done += batch
            integrate_all(sessions)
        if time.monotonic() >= next_sign:
            sign_if_due(sessions, cfg, utc())
            next_sign = time.monotonic() + 2
        time.sleep(0.005)
    out.put({"appended": done, "seconds": time.monotonic() - started})


def watcher(url: str, tmp: str, seconds: float, ready: Any, out: Any, go: Any = None) -> None:
    """The monitor with its default pace (as `accord worker` runs it), on what is appended
    (from when the appenders start: a spawned process takes seconds to import on a busy
    machine, longer than a short window)."""
    sessions = make_sessionmaker(make_engine(f"{url}?application_name={APP}"))
    m = IntegrityMonitor(sessions, ledger_config(Path(tmp)), utc, Pace())
    m.full = None  # the full pass is measured on its own: here, the incremental walk
    with sessions() as s:
        m.incremental, _ = integrity.verify(s, m.cfg.signer.verifier)  # up to the start
    ready.set()
    if go is not None:
        go.wait(120)
    cpu0, wall0 = monitor_cpu(url), time.monotonic()
    m.start()
    lags = []
    while time.monotonic() - wall0 < seconds:
        time.sleep(0.5)
        with sessions() as s:
            lags.append(integrity.head_size(s) - m.incremental.position)
    deadline = time.monotonic() + 10  # the appender stopped: it catches up
    while time.monotonic() < deadline:
        with sessions() as s:
            behind = integrity.head_size(s) - m.incremental.position
        if behind == 0:
            break
        time.sleep(0.1)
    m.stop()
    cpu, wall = monitor_cpu(url) - cpu0, time.monotonic() - wall0
    out.put({"monitor_cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
             "monitor_core_share": round(cpu / wall, 3), "lag_max_entries": max(lags),
             "lag_after_stop": behind, "entries_checked": m.hashed,
             "damage": str(m.damage) if m.damage else None})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preload", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--appenders", type=int, default=2,
                    help="processes sharing --rate (one Python process writes about 8,000/s)")
    ap.add_argument("--pg-admin-url", default=PG_ADMIN)
    return ap.parse_args(argv)


def main() -> int:
    args = parse_args()
    try:
        with psycopg.connect(args.pg_admin_url, autocommit=True, connect_timeout=5) as c:
            c.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        print(json.dumps({"error": f"PostgreSQL is not reachable at {args.pg_admin_url}: "
                                   f"{str(exc).strip()[:200]}"}))
        return 2
    print(json.dumps(run(args), indent=2))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements on a database of its own (created, then dropped)."""
    name = f"accord_integrity_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_admin_url, autocommit=True, connect_timeout=5) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = args.pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    tmp = tempfile.mkdtemp(prefix="accord-integrity-")
    try:
        engine = make_engine(url)
        migrations.upgrade(engine)
        engine.dispose()
        print(f"preloading {args.preload} entries ...", file=sys.stderr)
        append(url, args.preload, tmp)
        # -- the full pass, in this process: its CPU and its backend's
        sessions = make_sessionmaker(make_engine(f"{url}?application_name={APP}"))
        m = IntegrityMonitor(sessions, ledger_config(Path(tmp)), utc, Pace())
        with sessions() as s:
            s.execute(text("SELECT 1"))  # the backend exists: its CPU can be read
        cpu0, wall0 = monitor_cpu(url), time.monotonic()
        while m.full is not None:
            damage = m.check()
            assert damage is None, damage
        cpu, wall = monitor_cpu(url) - cpu0, time.monotonic() - wall0
        per_cpu_s = m.hashed / cpu if cpu else float("inf")
        share = args.rate / per_cpu_s
        # What the budget left beside keeping up re-hashes in one full_interval (1 h): a
        # larger ledger's full pass takes longer than the interval (the pace holds the CPU).
        whole = max(0.25 - share, 0.0) * per_cpu_s * 3600
        full = {"entries": m.hashed, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "entries_per_cpu_s": round(per_cpu_s),
                "core_share_at_target_rate": round(share, 3),
                "ledger_rehashed_whole_per_hour_at_target_rate": round(whole)}
        sessions.kw["bind"].dispose()
        print(f"full pass: {full}", file=sys.stderr)
        # -- live: an appender and a monitor, each a process of its own
        ctx = mp.get_context("spawn")
        q_app, q_mon, ready, go = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
        mon = ctx.Process(target=watcher, args=(url, tmp, args.seconds, ready, q_mon, go))
        mon.start()
        ready.wait(120)
        apps = [ctx.Process(target=appender, args=(url, args.rate // args.appenders,
                                                   args.seconds, tmp, q_app, n, go))
                for n in range(args.appenders)]
        for app in apps:
            app.start()
        appended = [q_app.get() for _ in apps]
        watched = q_mon.get()
        for app in apps:
            app.join()
        mon.join()
        live = {"rate_target": args.rate,
                "appended_per_s": round(sum(a["appended"] / a["seconds"] for a in appended)),
                **watched}
        # Met: the monitor's pace covers the target rate within the budget, and live it kept
        # up (nothing left behind) within the budget at whatever rate the machine appended.
        # A 2-core VM appends about 7,000-8,000 events/s to PostgreSQL (benchmarks/ledger.py),
        # so `live` may fall short of --rate: `live_at_target` says whether it got there.
        met = (full["core_share_at_target_rate"] <= 0.25
               and watched["monitor_core_share"] <= 0.25 and watched["lag_after_stop"] == 0)
        live["live_at_target"] = live["appended_per_s"] >= args.rate * 0.95
        return {"full_pass": full, "live": live,
                "target": {"appends_per_s": args.rate, "max_core_share": 0.25},
                "met": met, "loadavg": os.getloadavg()}
    finally:
        with psycopg.connect(args.pg_admin_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
