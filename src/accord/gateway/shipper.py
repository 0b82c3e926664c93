"""The shipper: a child process of each gateway process that tails its spool and writes
the ledger every `flush_interval` (one transaction per round, through
`recording.record_facts`: events, the grants' usage counters and the spool's mark
together), and the replay of spools whose writer and shipper both died.

It runs in a process of its own so that building and encoding events never holds the
gateway's GIL. The mark makes shipping idempotent: nothing is recorded twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from accord import logs
from accord.db import make_engine, make_sessionmaker, transaction
from accord.gateway import memory, recording
from accord.gateway.packs import PackWriter
from accord.gateway.spool import (
    DONE,
    Fact,
    Reader,
    writer_alive,
)
from accord.settings import Settings

log = logging.getLogger("accord.gateway")

# ---------------------------------------------------------------------- shipping


def ship_lock(directory: Path) -> int | None:
    """The spool's lock, held by whoever ships it; None when someone alive holds it."""
    try:
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def ship(sessions: sessionmaker[Session], directory: Path, *, per_event: int, max_text: int,
         interval: float = 0.5, batch: int = 10_000, gone: Callable[[], bool] = lambda: True,
         shipped: Any = None, ready: Any = None, wait: Callable[[float], Any] = time.sleep,
         recordings_dir: Path | None = None) -> int | None:
    """Put one spool directory in the ledger; with `gone` false, keep following it.

    Returns how many facts it recorded, or None when another live process ships it.
    When `gone()` turns true (the writer stopped or died), whatever is left is recorded
    and the directory removed. Every `interval` it reads what was written since and
    records it in transactions of at most `batch` facts (`gateway.flush_interval` and
    `flush_batch`).
    """
    fd = ship_lock(directory)
    if fd is None:
        return None
    if ready is not None:
        ready.set()
    instance = directory.name
    total = 0
    packs = PackWriter(recordings_dir, instance) if recordings_dir is not None else None
    try:
        with sessions() as s:
            mark = recording.spool_mark(s, instance=instance)
        reader = Reader(directory, max_text)
        pending: list[Fact] = []
        failures = 0
        while True:
            final = gone()
            if mark < DONE:
                reader.poll()
                taken = reader.take()
                if taken and taken[0][0] <= mark:  # after a restart: some are in already
                    taken = [f for f in taken if f[0] > mark]
                pending += taken
                if final:
                    pending += reader.finish()
            try:
                while pending:
                    chunk, rest = pending[:batch], pending[batch:]
                    last = not rest and final
                    with transaction(sessions) as s:
                        recording.record_facts(s, facts=chunk, instance=instance,
                                             per_event=per_event, max_text=max_text,
                                             mark=DONE if last else chunk[-1][0],
                                             packs=packs)
                    mark = DONE if last else chunk[-1][0]
                    total += len(chunk)
                    pending = rest
                    real = next((f[0] for f in reversed(chunk) if f[0] < DONE), 0)
                    if shipped is not None and real > shipped.value:
                        shipped.value = real
                failures = 0
            except Exception:  # the database is down or refused: keep the facts, retry
                failures += 1
                log.exception("gateway audit: shipping %d facts failed (attempt %d)",
                              len(pending), failures)
                if final and failures >= 5:
                    return total  # the directory stays for the next start
                wait(min(interval * 2 ** failures, 5.0))
                continue
            for path in reader.done_segments:  # everything read from it is in the ledger
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            reader.done_segments.clear()
            if final:
                shutil.rmtree(directory, ignore_errors=True)
                with transaction(sessions) as s:
                    recording.forget_mark(s, instance=instance)
                return total
            wait(interval)
    finally:
        if packs is not None:
            packs.close()
        os.close(fd)


def replay_dead(sessions: sessionmaker[Session], root: Path, *, per_event: int,
                max_text: int, waiting: list[Path] | None = None,
                recordings_dir: Path | None = None) -> int:
    """Ship what dead gateway processes left when their shippers died too (a live
    process's spool, or a dead one's that its shipper is shipping, is left alone); returns
    facts recorded. Safe beside running gateways (the prefork parent runs it now and then).
    `waiting` gets the dead processes' spools that someone else still held."""
    total = 0
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        if writer_alive(path):
            continue
        if path.name.startswith("."):  # being created, or its process died doing so
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > 60:  # the latter: nothing in it
                    shutil.rmtree(path, ignore_errors=True)
            continue
        recorded = ship(sessions, path, per_event=per_event, max_text=max_text,
                        recordings_dir=recordings_dir)
        if recorded is None and waiting is not None:
            waiting.append(path)  # its shipper is at it (or dying: a SIGKILL waits for I/O)
        if recorded:
            log.warning("gateway: recovered %d audit facts from the spool of stopped "
                        "gateway %s", recorded, path.name)
            total += recorded
    return total


def shipper_main(db_url: str, directory: str, interval: float, batch: int, per_event: int,
                  max_text: int, shipped: Any, stop: Any, ready: Any, parent: int,
                  nice: int | None = None, recordings_dir: str | None = None) -> None:
    """The shipper process: follow the spool until the gateway stops or dies.

    It ignores SIGINT and SIGTERM: a terminal's Ctrl-C or an init system signals the whole
    process group, and the shipper must not die mid-batch under its gateway; the gateway
    stops it in order (`stop` reads "stop"), or its death shows as EOF on `stop`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    memory.keep_freed_memory()  # a chunk's bytes are joined, hashed and sent: large buffers

    if nice is not None:  # background work: not the data path's `gateway.priority`
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    logs.configure(Settings.from_env().log_format, "warning")
    gc.freeze()  # rows and tuples by the thousand, none of them cyclic
    gc.set_threshold(50_000, 20, 20)
    engine = make_engine(db_url, pool_size=1)
    path = Path(directory)

    def gone() -> bool:  # told to stop, or the gateway died (EOF; a new parent)
        return bool(stop.poll()) or os.getppid() != parent

    def wait(seconds: float) -> None:
        stop.poll(seconds)

    class Ready:
        def set(self) -> None:
            ready.send_bytes(b"ready")
            ready.close()

    try:
        result = ship(make_sessionmaker(engine), path, per_event=per_event, max_text=max_text,
                      interval=interval, batch=batch, gone=gone, shipped=shipped,
                      ready=Ready(), wait=wait,
                      recordings_dir=Path(recordings_dir) if recordings_dir else None)
    finally:
        engine.dispose()
    if result is None or path.exists():
        raise SystemExit(1)


def wall(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)

