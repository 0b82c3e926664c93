"""The directory at scale over SCIM, on PostgreSQL, through the real server.

1. **Small directory**: request creation throughput (auto-approved, as `lifecycle.py`'s
   phase 1) with only accord.yaml's 68 people.
2. **Initial push**: N users (default 50,000: POST /scim/v2/Users), then G groups (5,000:
   POST /scim/v2/Groups, each with M members: 40, so 200,000 memberships), by C concurrent
   SCIM connections, as an identity provider's first sync. Wall time and the server's CPU
   per operation (all its processes, from /proc).
3. **A big PATCH**: 1,000 members added to one group in one PATCH (Okta and Entra batch
   member adds), timed.
4. **Loaded directory**: phase 1 again with the directory loaded; the ratio to phase 1 is
   what a big directory costs each request (target: at least 0.9). Phases 1 and 4 each
   run `--rounds` times (3) and compare their median rounds.

Prints JSON (progress on stderr). Needs PostgreSQL on 127.0.0.1:5432 for `postgres`
without a password (or --pg-admin-url); creates and drops its own database.

    .venv/bin/python benchmarks/directory.py                    # the issue's sizes
    .venv/bin/python benchmarks/directory.py --users 5000 --groups 500 --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lifecycle as lc  # the sibling script's server, database and load helpers

CORE = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def policy_text() -> str:
    return lc.policy_text() + "identity: {scim: true}\n"


def scim_token(database_url: str, config: Path, data_dir: Path) -> str:
    from accord.bootstrap import build_state
    from accord.db import transaction
    from accord.directory import tokens
    from accord.ledger.events import Actor, Via
    from accord.settings import Settings

    settings = Settings.from_env({"ACCORD_DATABASE_URL": database_url,
                                  "ACCORD_CONFIG": str(config), "ACCORD_DATA_DIR": str(data_dir)})
    st = build_state(settings, config_path=config, upgrade="never")
    try:
        with transaction(st.sessions) as session:
            _row, secret = tokens.issue(session, name="bench-idp",
                                        actor=Actor("system", "accord-bench", Via.CLI),
                                        now=st.now())
    finally:
        bind = st.sessions.kw.get("bind")
        if bind is not None:
            bind.dispose()
    return secret


async def fan_out(count: int, clients: int, base_url: str, token: str,
                  make: Any, errors: list[str]) -> list[Any]:
    """`count` SCIM calls (`make(i)` -> method, path, body) over `clients` connections."""
    out: list[Any] = [None] * count
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        async with lc.RawClient(base_url) as client:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                method, path, body = make(i)
                status, raw = await asyncio.wait_for(
                    client.call(method, path, body, token, "application/scim+json"),
                    lc.CALL_TIMEOUT_S)
                if not 200 <= status < 300:
                    if len(errors) < 5:
                        errors.append(f"{method} {path}: HTTP {status}: {raw[:300]!r}")
                    continue
                out[i] = json.loads(raw) if raw else None

    await asyncio.gather(*(worker() for _ in range(clients)))
    return out


def settle(base_url: str, timeout: float = 600.0) -> float:
    """Wait until the server's ledger worker has integrated every event (the push leaves a
    backlog of one event per call): the request phases then compare steady states, not one
    with the integrator catching up beside it. Returns the seconds waited."""
    import httpx

    began = time.monotonic()
    with httpx.Client(timeout=10) as client:
        while time.monotonic() - began < timeout:
            text = client.get(f"{base_url}/metrics").text
            pending = next((line.split()[1] for line in text.splitlines()
                            if line.startswith("accord_ledger_pending ")), "0")
            if float(pending) == 0:
                break
            time.sleep(0.5)  # another process's work: nothing to await but its gauge
    return time.monotonic() - began


def timed(pid: int, run: Any) -> tuple[Any, float, float | None]:
    cpu0, t0 = lc.process_cpu_s(pid), time.perf_counter()
    result = run()
    elapsed, cpu1 = time.perf_counter() - t0, lc.process_cpu_s(pid)
    return result, elapsed, (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr)

    with lc.database(None, args.pg_admin_url) as db_url, \
            tempfile.TemporaryDirectory(prefix="accord-directory-") as tmp:
        work = Path(tmp)
        config = work / "accord.yaml"
        config.write_text(policy_text(), encoding="utf-8")
        api_tokens = lc.issue_tokens(db_url, config, work)
        secret = scim_token(db_url, config, work)
        port = lc.free_port()
        base = f"http://{lc.HOST}:{port}"
        log = work / "server.log"
        proc = lc.start_server(port, config, db_url, work, log, args.server_workers)
        try:
            lc.wait_healthy(proc, base, log)
            pid = proc.pid

            def requests(name: str) -> dict[str, Any]:
                """`--rounds` runs of `--requests` each; the round with the median rate
                (a rate on a shared 2-core machine moves with whatever else runs)."""
                asyncio.run(lc.run_phase(f"{name}_warmup", lc.auto_job(api_tokens), 100,
                                         args.clients, base, pid, True))
                rounds = [lc.summarize(asyncio.run(lc.run_phase(
                    name, lc.auto_job(api_tokens), args.requests, args.clients, base, pid,
                    args.quiet)), "requests_per_s") for _ in range(args.rounds)]
                rounds.sort(key=lambda r: r["requests_per_s"])
                median = dict(rounds[len(rounds) // 2])
                median["rounds_per_s"] = [r["requests_per_s"] for r in rounds]
                return median

            settle(base)
            say(f"phase 1: {args.requests} requests, small directory")
            small = requests("small_directory")

            errors: list[str] = []
            say(f"phase 2: pushing {args.users} users over SCIM")
            users, users_s, users_cpu = timed(pid, lambda: asyncio.run(fan_out(
                args.users, args.scim_clients, base, secret, lambda i: (
                    "POST", "/scim/v2/Users",
                    {"schemas": [CORE], "userName": f"p{i:06d}@example.com",
                     "externalId": f"ext-{i}", "displayName": f"Person {i}",
                     "name": {"givenName": "Person", "familyName": str(i)},
                     "emails": [{"value": f"p{i:06d}@example.com", "type": "work",
                                 "primary": True}], "active": True}),
                errors)))
            ids = [u["id"] for u in users if u]
            say(f"  {len(ids)} users in {users_s:.1f} s; pushing {args.groups} groups of "
                f"{args.members} members")
            members = args.members

            def group(i: int) -> tuple[str, str, Any]:
                start = (i * members) % max(len(ids), 1)
                picked = [ids[(start + k) % len(ids)] for k in range(members)] if ids else []
                return ("POST", "/scim/v2/Groups",
                        {"schemas": [GROUP], "displayName": f"team-{i:05d}",
                         "externalId": f"grp-{i}", "members": [{"value": m} for m in picked]})
            groups, groups_s, groups_cpu = timed(pid, lambda: asyncio.run(fan_out(
                args.groups, args.scim_clients, base, secret, group, errors)))
            made = [g["id"] for g in groups if g]
            ops = len(ids) + len(made)
            push_s = users_s + groups_s
            push_cpu = (users_cpu or 0) + (groups_cpu or 0) if users_cpu is not None else None
            say(f"  {len(made)} groups in {groups_s:.1f} s")

            say(f"phase 3: one PATCH adding {args.patch_members} members")
            target = made[0] if made else None
            newcomers = ids[members:members + args.patch_members]
            patch_s = None
            if target and len(newcomers) == args.patch_members:
                _r, patch_s, _c = timed(pid, lambda: asyncio.run(fan_out(
                    1, 1, base, secret, lambda i: (
                        "PATCH", f"/scim/v2/Groups/{target}",
                        {"schemas": [PATCH], "Operations": [
                            {"op": "add", "path": "members",
                             "value": [{"value": m} for m in newcomers]}]}), errors)))

            waited = settle(base)
            # After a push of a quarter million rows PostgreSQL's autovacuum and analyze
            # run for a while; do it now, as they would shortly, so phase 4 measures the
            # loaded steady state rather than the database tidying up beside it.
            with lc.psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
            say(f"phase 4: {args.requests} requests, loaded directory (the ledger caught up "
                f"with the push {waited:.0f} s after it)")
            loaded = requests("loaded_directory")
        finally:
            lc.stop_server(proc)

    ratio = None
    if small.get("requests_per_s") and loaded.get("requests_per_s"):
        ratio = round(loaded["requests_per_s"] / small["requests_per_s"], 3)
    return {
        "benchmark": "directory",
        "users": len(ids), "groups": len(made), "memberships": len(made) * members,
        "scim_clients": args.scim_clients, "server_workers": args.server_workers,
        "push": {
            "seconds": round(push_s, 1), "target_s": 120,
            "users_s": round(users_s, 1), "groups_s": round(groups_s, 1),
            "operations": ops, "ops_per_s": round(ops / push_s, 1) if push_s else None,
            "server_cpu_s": round(push_cpu, 1) if push_cpu is not None else None,
            "server_cpu_ms_per_op": round(push_cpu * 1000 / ops, 2)
            if push_cpu is not None and ops else None,
            "server_cpu_ms_per_user": round((users_cpu or 0) * 1000 / max(len(ids), 1), 2),
            "server_cpu_ms_per_group": round((groups_cpu or 0) * 1000 / max(len(made), 1), 2),
        },
        "ledger_caught_up_after_push_s": round(waited, 1),
        "patch": {"members_added": args.patch_members,
                  "seconds": round(patch_s, 3) if patch_s is not None else None,
                  "target_s": 1.0},
        "requests": {"small_directory": small, "loaded_directory": loaded,
                     "loaded_over_small": ratio, "target_ratio": 0.9},
        "errors": errors,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--groups", type=int, default=5_000)
    p.add_argument("--members", type=int, default=40, help="members per group at creation")
    p.add_argument("--patch-members", type=int, default=1_000)
    p.add_argument("--requests", type=int, default=1_000)
    p.add_argument("--rounds", type=int, default=3,
                   help="request rounds before and after the push; the median is compared")
    p.add_argument("--clients", type=int, default=8, help="API clients in phases 1 and 4")
    p.add_argument("--scim-clients", type=int, default=8, help="SCIM connections in phase 2")
    p.add_argument("--server-workers", type=int, default=2)
    p.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (OSError, RuntimeError) as exc:
        print(json.dumps({"benchmark": "directory", "error": str(exc)}))
        return 1
    print(json.dumps(result, indent=2))
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
