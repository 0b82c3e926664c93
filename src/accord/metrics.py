"""The process's Prometheus metrics (prometheus_client), and their multi-process mode.

Counters, gauges and histograms that code bumps as things happen live here, made on first
use by `get()`; what the database knows (queue depth, ledger size, checkpoint age) is read
at scrape time by a collector of the API's (`accord.api.observe`). docs/operations.md
lists every metric.

Several processes serve one port (`accord serve --workers N`, the gateway's prefork
processes): each scrape lands on one of them, so each process writes its values to memory
mapped files in one directory (prometheus_client's multiprocess mode) and a scrape sums
them. `enable_multiprocess` sets that up before any metric is made: prometheus_client picks
its value class from PROMETHEUS_MULTIPROC_DIR when a metric's value is created, and child
processes inherit the variable. prometheus_client is imported only when a metric is first
needed: other `accord` commands start without it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.registry import Collector

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; Accord's calls take milliseconds, a slow one (a report, a page over thousands
# of rows) seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)
_FILE = re.compile(r"^(?:[a-z]+_)+?(\d+)\.db$")  # counter_123.db, gauge_livesum_123.db


class Metrics:
    """Every metric a process bumps. Names are documented in docs/operations.md."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.http_requests: Counter = Counter(
            "accord_http_requests", "HTTP requests answered, by route template, method and "
            "status", ["route", "method", "status"])
        self.http_duration: Histogram = Histogram(
            "accord_http_request_duration_seconds", "Time to answer an HTTP request, by route "
            "template and method", ["route", "method"], buckets=LATENCY_BUCKETS)
        self.notifications: Counter = Counter(
            "accord_notifications", "Notification deliveries, by channel and outcome (sent, "
            "retry, failed)", ["channel", "outcome"])
        self.provisioning: Counter = Counter(
            "accord_provisioning", "Calls to provisioning targets, by connector kind, action "
            "(grant, revoke) and outcome (ok, retry, failed)", ["connector", "action", "outcome"])
        self.gateway_sessions: Counter = Counter(
            "accord_gateway_sessions", "Gateway sessions opened, by protocol", ["protocol"])
        self.gateway_sessions_open: Gauge = Gauge(
            "accord_gateway_sessions_open", "Gateway sessions open now, by protocol",
            ["protocol"], multiprocess_mode="livesum")
        self.gateway_statements: Counter = Counter(
            "accord_gateway_statements", "Statements answered through the gateway, by protocol",
            ["protocol"])
        self.gateway_refusals: Counter = Counter(
            "accord_gateway_refusals", "Gateway refusals, by protocol and what was refused "
            "(login, statement)", ["protocol", "kind"])
        self.sqlite_writes_waiting: Gauge = Gauge(
            "accord_sqlite_writes_waiting", "Writers queued for SQLite's write lock",
            multiprocess_mode="livesum")
        self.sqlite_writes_refused: Counter = Counter(
            "accord_sqlite_writes_refused", "Writers refused with 503 (queue full or waited "
            "too long)")


_metrics: Metrics | None = None
_lock = threading.Lock()


def get() -> Metrics:
    """This process's metrics, made on first use."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                import prometheus_client

                # `_created` series say when a process made each counter: noise beside the
                # counters themselves, and multiprocess mode has none.
                prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
                _metrics = Metrics()
    return _metrics


def directory() -> Path | None:
    """Where this process's values are shared with its siblings (None: one process)."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def enable_multiprocess(path: Path) -> None:
    """Share this process's and its children's values through `path`, emptied first: a
    server's counters start at zero when it starts. Call before the processes that share
    it start (and before the app is built: metrics made earlier are made again)."""
    global _metrics
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[ENV] = str(path)
    from prometheus_client import REGISTRY, values

    # The value class is chosen from the environment when prometheus_client is imported,
    # and looked up each time a metric's value is made: choose again now.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    with _lock:
        if _metrics is not None:
            for collector in vars(_metrics).values():
                REGISTRY.unregister(collector)
            _metrics = None


def multiprocess_dir(data_dir: Path, role: str, port: int) -> Path:
    """The directory a server shares its metrics in: inside its data directory, one per
    role and port, so two servers on one data directory never empty each other's."""
    return data_dir / "metrics" / f"{role}-{port}"


def process_exiting(pid: int | None = None) -> None:
    """A process leaves: its live gauges (open sessions, waiting writers) stop counting;
    its counters stay in the sums."""
    path = directory()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            os.getpid() if pid is None else pid, str(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the number: not ours, but alive
        return True
    return True


def forget_dead(path: Path) -> list[int]:
    """Mark the processes that left files in `path` and are gone (killed, say) dead;
    returns their ids."""
    pids = {int(m.group(1)) for f in path.iterdir() if (m := _FILE.match(f.name))}
    dead = [pid for pid in sorted(pids) if pid != os.getpid() and not _alive(pid)]
    for pid in dead:
        process_exiting(pid)
    return dead


class Everything:
    """Every process's metrics (this one's, or all those sharing the directory) and
    `extra` (collectors that read their values at scrape time), as one collector."""

    def __init__(self, extra: Iterable[Collector] = ()) -> None:
        self.extra = list(extra)

    def collect(self) -> Iterator[Any]:
        from prometheus_client import REGISTRY
        from prometheus_client.multiprocess import MultiProcessCollector

        get()  # the counters exist before anything is counted
        path = directory()
        if path is not None:
            forget_dead(path)
            yield from MultiProcessCollector(  # type: ignore[no-untyped-call]
                None, path=str(path)).collect()
        else:
            yield from REGISTRY.collect()
        for collector in self.extra:
            yield from collector.collect()


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """The text format of `Everything`."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Everything(extra))
    return generate_latest(registry)


def serve_http(host: str, port: int) -> None:
    """Answer scrapes on http://host:port/metrics from a thread (`accord gateway` and
    `accord worker`, which have no HTTP server of their own)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Everything())
    start_http_server(port, host, registry=registry)
