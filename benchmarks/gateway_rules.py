"""What guardrails and masking cost the gateway: pgbench through one `accord gateway` to
three resources on the same database, one without rules (the baseline), one with 10
guardrail rules, one masking two columns, interleaved so drift hits all alike.

    .venv/bin/python benchmarks/gateway_rules.py                # 3 runs x 10 s per cell
    .venv/bin/python benchmarks/gateway_rules.py --runs 5 --seconds 20 --json-only

Workloads, 8 clients each (simple protocol unless --protocol extended):
* `select_only`: pgbench -S, baseline against 10 guardrail rules loaded (none matches;
  every statement is checked). Target: at least 0.95 of the baseline.
* `wide_100`: `SELECT *` of 100 rows from a table of 10 columns, baseline against masking
  two of them (`email`, `card`, every value rewritten). Target: at least 0.8.

Needs pgbench, not pgbouncer. Prints one JSON object with medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from gateway import (
    ACCORD,
    PGBENCH,
    cpu_seconds,
    databases,
    free_port,
    grant_token,
    log,
    pg_env,
    pgbench,
    start,
    stop,
    wait_port,
)

GUARDRAILS = """\
      guardrails:
        - {name: no-unbounded-writes, action: block, statements: [delete, update],
           without_where: true}
        - {name: no-drop, action: block, statements: [drop, truncate]}
        - {name: no-sleep, action: block, functions: [pg_sleep]}
        - {name: audit-scan, action: warn, statements: [select], tables: [public.audit_log],
           without_limit: true}
        - {name: payments-writes, action: review, statements: [insert, update, delete],
           tables: [payments]}
        - {name: no-grants, action: block, statements: [grant, revoke]}
        - {name: no-ddl-on-billing, action: block, statements: [alter, create], schemas: [billing]}
        - {name: no-copy-out, action: block, statements: [copy], tables: [public.customers]}
        - {name: no-lo, action: block, functions: [lo_export, lo_import, pg_read_file]}
        - {name: no-vacuum, action: warn, statements: [vacuum, lock]}
"""
MASKING = """\
      masking:
        - {name: pii, columns: [public.wide.email, public.wide.card]}
"""
WIDE_SETUP = (
    "CREATE TABLE wide (id int PRIMARY KEY, email text, card text, name text, city text, "
    "amount numeric, qty int, created timestamptz, flag bool, note text)",
    "INSERT INTO wide SELECT g, 'user' || g || '@example.com', '4111 1111 1111 1111', "
    "'name ' || g, 'city ' || (g % 50), g * 1.5, g % 7, now(), g % 2 = 0, "
    "'some note text ' || g FROM generate_series(1, 1000) g",
)
WIDE_SCRIPT = "\\set a random(1, 900)\nSELECT * FROM wide WHERE id BETWEEN :a AND :a + 99;\n"
TARGETS = {"select_only": 0.95, "wide_100": 0.8}


def policy(port: int) -> str:
    resources = ""
    for name, extra in (("plain", ""), ("rules", GUARDRAILS), ("masked", MASKING)):
        resources += f"""\
  - name: {name}
    roles: [admin]
    gateway:
      dsn_env: BENCH_TARGET_DSN
      set_role: false
{extra}"""
    return f"""\
users: [bench]
groups: {{benchers: [bench]}}
gateway: {{listen: "127.0.0.1:{port}", token_ttl: 2h}}
resources:
{resources}workflows:
  - name: bench
    match: 'true'
    require_reason: false
    max_duration: 8h
    auto_approve: 'true'
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--protocol", choices=("simple", "extended"), default="simple")
    ap.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--gateway-processes", type=int, default=None)
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()
    quiet = args.json_only
    if not Path(PGBENCH).exists():
        print(json.dumps({"error": "missing tools", "missing": {"pgbench": "postgresql-contrib"}}))
        return 2
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="accord-gwrules-"))
    procs: dict[str, Any] = {}
    cells: dict[str, tuple[str, str, list[str]]] = {
        "select_only": ("plain", "rules", ["-S"]),
        "wide_100": ("plain", "masked", ["-f", str(tmp / "wide.sql")]),
    }
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        mode: {"baseline": [], "with": []} for mode in cells}
    try:
        with databases(args.pg_admin_url, args.scale, quiet) as (accord_url, target_url):
            with psycopg.connect(target_url, autocommit=True) as conn:
                for statement in WIDE_SETUP:
                    conn.execute(statement)  # type: ignore[arg-type]
            (tmp / "wide.sql").write_text(WIDE_SCRIPT)
            port = free_port()
            config = tmp / "accord.yaml"
            config.write_text(policy(port))
            data_dir = tmp / "data"
            env = {**os.environ, "ACCORD_DATABASE_URL": accord_url, "ACCORD_CONFIG": str(config),
                   "ACCORD_DATA_DIR": str(data_dir), "BENCH_TARGET_DSN": target_url}
            tokens = {r: grant_token(accord_url, config, data_dir, r)
                      for r in ("plain", "rules", "masked")}
            count = ["--processes", str(args.gateway_processes)] \
                if args.gateway_processes else []
            procs["gateway"] = start([ACCORD, "gateway", "--log-level", "warning", *count],
                                     env, tmp / "gateway.log")
            wait_port(port, procs["gateway"], tmp / "gateway.log")
            procs["worker"] = start([ACCORD, "worker"], env, tmp / "worker.log")
            envs = {r: pg_env(port, "bench", r, t) for r, t in tokens.items()}
            for mode, (base, other, extra) in cells.items():
                bench_args = [*extra, "-M", args.protocol]
                for r in (base, other):  # warm-up, unmeasured
                    pgbench(bench_args, envs[r], 2, args.clients)
                for run in range(args.runs):
                    for key, r in (("baseline", base), ("with", other)):
                        before = cpu_seconds(procs["gateway"].pid)
                        res = pgbench(bench_args, envs[r], args.seconds, args.clients)
                        used = cpu_seconds(procs["gateway"].pid) - before
                        res["gateway_cpu_us_per_tx"] = round(used / res["transactions"] * 1e6, 1)
                        results[mode][key].append(res)
                        log(f"{mode:12} run {run + 1} {r:7} tps {res['tps']:9.1f}  latency "
                            f"{res['latency_ms']:.3f} ms  gateway cpu/tx "
                            f"{res['gateway_cpu_us_per_tx']} us", quiet)
    finally:
        for name in ("worker", "gateway"):
            stop(procs.get(name))
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": os.getloadavg()},
        "config": {"runs": args.runs, "seconds": args.seconds, "clients": args.clients,
                   "protocol": args.protocol, "gateway_processes": args.gateway_processes,
                   "select_only": "pgbench -S; baseline: no rules; with: 10 guardrail rules",
                   "wide_100": "100 rows x 10 columns per query; with: 2 columns masked"},
        "results": {}, "ratios": {}, "targets": {},
    }
    for mode, per in results.items():
        out["results"][mode] = {
            key: {"tps": round(statistics.median(r["tps"] for r in runs), 1),
                  "latency_ms": round(statistics.median(r["latency_ms"] for r in runs), 3),
                  "tps_runs": [round(r["tps"], 1) for r in runs],
                  "gateway_cpu_us_per_tx": statistics.median(
                      r["gateway_cpu_us_per_tx"] for r in runs)}
            for key, runs in per.items()}
        # The median of each run's ratio to the baseline run just before it (paired).
        paired = [w["tps"] / b["tps"] for b, w in zip(per["baseline"], per["with"], strict=True)]
        ratio = round(statistics.median(paired), 3)
        cpu = out["results"][mode]
        out["ratios"][mode] = {
            "with_vs_baseline": ratio, "runs": [round(p, 3) for p in paired],
            # On a loaded machine the gateway's CPU per transaction moves less than tps:
            # the throughput the gateway alone would allow, with against without.
            "gateway_cpu_baseline_vs_with": round(cpu["baseline"]["gateway_cpu_us_per_tx"]
                                                  / cpu["with"]["gateway_cpu_us_per_tx"], 3)}
        out["targets"][mode] = {"at_least": TARGETS[mode], "met": ratio >= TARGETS[mode]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
