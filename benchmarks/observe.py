"""What `accord.api.observe.Observe` adds to each HTTP call, in process.

A trivial ASGI app (one small response) is called directly, N times, bare and wrapped in
`Observe` (request id, log context, counter and histogram, X-Request-Id); the difference
per call is the middleware's cost. Run in three modes, each in a process of its own
(prometheus_client picks its storage when a metric is made):

  single      one process: values in memory (`accord serve`, --workers 1)
  multi       PROMETHEUS_MULTIPROC_DIR: values in memory-mapped files (--workers N)
  multi+log   as multi, and ACCORD_ACCESS_LOG's JSON line per call (to /dev/null)

    PYTHONPATH=src python benchmarks/observe.py [--calls 200000] [--rounds 7]

Prints JSON: per mode, the median over rounds of ns per call bare, observed, and added.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("single", "multi", "multi+log")


class _Route:
    path = "/api/v1/requests/{request_id}"


ROUTE = _Route()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["route"] = ROUTE  # as the router leaves it
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def _noop_send(_message: Any) -> None:
    return None


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _time(target: Any, calls: int) -> float:
    scope = {"type": "http", "method": "GET", "path": "/api/v1/requests/7", "headers": []}
    began = time.perf_counter_ns()
    for _ in range(calls):
        await target(dict(scope), _receive, _noop_send)
    return (time.perf_counter_ns() - began) / calls


def measure(mode: str, calls: int, rounds: int) -> dict[str, Any]:
    from accord import logs
    from accord.api.observe import Observe

    access = mode.endswith("+log")
    if access:
        handler = logging.FileHandler(os.devnull)
        handler.setFormatter(logs.JsonFormatter())
        logger = logging.getLogger("accord.access")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    observed = Observe(app, access_log=access)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_time(observed, 2000))  # warm: the labelled children exist
    bare, wrapped = [], []
    for _ in range(rounds):  # alternate, so drift in the machine hits both
        bare.append(loop.run_until_complete(_time(app, calls)))
        wrapped.append(loop.run_until_complete(_time(observed, calls)))
    loop.close()
    b, w = statistics.median(bare), statistics.median(wrapped)
    return {"mode": mode, "calls": calls, "rounds": rounds, "bare_ns": round(b),
            "observed_ns": round(w), "added_ns": round(w - b)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mode", choices=MODES)
    args = ap.parse_args()
    if args.mode:  # one mode, in this process
        print(json.dumps(measure(args.mode, args.calls, args.rounds)))
        return
    out = []
    for mode in MODES:
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with tempfile.TemporaryDirectory() as tmp:
            if mode.startswith("multi"):
                env["PROMETHEUS_MULTIPROC_DIR"] = tmp
            done = subprocess.run(
                [sys.executable, str(Path(__file__)), "--mode", mode, "--calls",
                 str(args.calls), "--rounds", str(args.rounds)],
                env=env, capture_output=True, text=True, check=True)
        out.append(json.loads(done.stdout))
    print(json.dumps({"benchmark": "observe", "python": sys.version.split()[0],
                      "results": out}, indent=2))


if __name__ == "__main__":
    main()
