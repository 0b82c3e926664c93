"""Two versions of the gateway against each other, runs interleaved: is a change faster?

`benchmarks/gateway.py` measures one gateway against direct PostgreSQL, pgbouncer and a bare
forwarder. On a small shared VM its figures drift with the machine by more than one change
to the gateway is worth (the same code gave 0.478 and 0.431 x direct twenty minutes apart).
This script takes that drift out of a comparison: it starts the gateway from two source
trees (say a `git worktree` of the last commit and the working tree) side by side, behind
one Accord database, one grant and one target database, then runs pgbench through each in
turn, A B, B A, A B, ..., so that both see the same machine. It reports each side's runs,
the ratio of the medians and the median of the per-pair ratios (B / A).

    git worktree add /tmp/base HEAD
    .venv/bin/python benchmarks/gateway_ab.py /tmp/base/src src --runs 6 --processes 1

The Accord database is migrated by the code this script runs with (the installed tree),
so both trees must agree with its schema: compare changes that add no migration.

Two identical trees (an A/A run) show how far the pair ratios stray by chance on the
machine at hand: a change is only worth believing when it moves the median pair ratio
further than that.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway as bench  # the sibling script's helpers


def compare(a_src: str, b_src: str, *, runs: int, seconds: int, processes: str,
            modes: list[str], clients: int, scale: int, admin_url: str,
            processes_b: str | None = None, gateway_b: str = "") -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="accord-gwab-"))
    tmp.chmod(0o755)
    procs: dict[str, Any] = {}
    try:
        with bench.databases(admin_url, scale, quiet=True) as (accord_url, target_url):
            ports = {"A": bench.free_port(), "B": bench.free_port()}
            config = tmp / "accord.yaml"
            config.write_text(bench.policy("bench", ports["A"]))
            env = {**os.environ, "ACCORD_DATABASE_URL": accord_url, "ACCORD_CONFIG": str(config),
                   "ACCORD_DATA_DIR": str(tmp / "data"), "BENCH_TARGET_DSN": target_url}
            token = bench.grant_token(accord_url, config, tmp / "data", "bench")
            count = {"A": processes, "B": processes_b or processes}
            for side, src in (("A", a_src), ("B", b_src)):
                side_env = {**env, "PYTHONPATH": str(Path(src).resolve()),
                            "ACCORD_DATA_DIR": str(tmp / f"data-{side}")}
                if side == "B" and gateway_b:
                    config_b = tmp / "accord-b.yaml"
                    config_b.write_text(bench.policy("bench", ports["A"], f", {gateway_b}"))
                    side_env["ACCORD_CONFIG"] = str(config_b)
                log = tmp / f"gateway-{side}.log"
                procs[side] = bench.start(
                    [bench.ACCORD, "gateway", "--log-level", "warning", "--listen",
                     f"127.0.0.1:{ports[side]}", "--processes", count[side]], side_env, log)
                bench.wait_port(ports[side], procs[side], log)
            procs["worker"] = bench.start([bench.ACCORD, "worker"], env, tmp / "worker.log")
            conn = {side: bench.pg_env(port, "bench", "bench", token)
                    for side, port in ports.items()}
            out: dict[str, Any] = {}
            for mode in modes:
                tps: dict[str, list[float]] = {"A": [], "B": []}
                for side in ("A", "B"):  # warm-up, unmeasured
                    bench.pgbench(bench.MODES[mode], conn[side], 2, clients)
                for run in range(runs):
                    for side in ("A", "B") if run % 2 == 0 else ("B", "A"):
                        r = bench.pgbench(bench.MODES[mode], conn[side], seconds, clients)
                        tps[side].append(round(r["tps"], 1))
                    print(f"{mode:16} run {run + 1}  A {tps['A'][-1]:9.1f}  "
                          f"B {tps['B'][-1]:9.1f}", file=sys.stderr, flush=True)
                pairs = [b / a for a, b in zip(tps["A"], tps["B"], strict=True)]
                out[mode] = {
                    "tps": tps,
                    "median_tps": {s: statistics.median(v) for s, v in tps.items()},
                    "b_over_a": round(statistics.median(tps["B"])
                                      / statistics.median(tps["A"]), 3),
                    "pair_ratios": [round(p, 3) for p in pairs],
                    "median_pair_ratio": round(statistics.median(pairs), 3),
                    "b_faster_in": f"{sum(p > 1 for p in pairs)} of {len(pairs)} pairs"}
            return out
    finally:
        for proc in procs.values():
            bench.stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="source tree of version A (the directory holding `accord/`)")
    ap.add_argument("b", help="source tree of version B")
    ap.add_argument("--runs", type=int, default=6, help="pairs of runs per workload")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--processes", default="1", help="`accord gateway --processes` for both")
    ap.add_argument("--processes-b", default=None,
                    help="another --processes for B (compare configurations: A and B may "
                         "be the same tree)")
    ap.add_argument("--gateway-b", default="", metavar="SETTINGS",
                    help="more `gateway:` settings for B only, in YAML flow style (say "
                         "'priority: -5' or 'flush_interval: 250ms'); A keeps the defaults")
    ap.add_argument("--modes", default="select_simple,select_extended")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in bench.MODES]
    if unknown or not modes:
        ap.error(f"--modes: unknown {', '.join(unknown) or '(none given)'}; choose from "
                 f"{', '.join(bench.MODES)}")
    for tree in (args.a, args.b):
        if not (Path(tree) / "accord" / "gateway").is_dir():
            ap.error(f"{tree}: not a source tree (no accord/gateway in it)")
    result = compare(args.a, args.b, runs=args.runs, seconds=args.seconds,
                     processes=args.processes, modes=modes, clients=args.clients,
                     scale=args.scale, admin_url=args.pg_admin_url,
                     processes_b=args.processes_b, gateway_b=args.gateway_b)
    print(json.dumps({"a": args.a, "b": args.b, "runs": args.runs, "seconds": args.seconds,
                      "processes": args.processes,
                      "processes_b": args.processes_b or args.processes,
                      "gateway_b": args.gateway_b, "clients": args.clients,
                      "results": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
