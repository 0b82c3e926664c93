"""Engine, sessions and column types shared by every domain.

SQLite is the embedded default; PostgreSQL (psycopg 3) for production.

SQLite has one writer at a time. Write transactions start with BEGIN IMMEDIATE, so two
writers serialize up front instead of failing on a lock upgrade halfway through (a
deferred transaction that read first cannot wait for the lock: SQLite refuses it at once).
Left to SQLite, a writer finding the lock taken sleeps and polls (busy_timeout: 1, 2, 5,
... up to 100 ms between tries), so waiters are served in no order and a burst piles up
until the threads and the pool run out. Writers in this process therefore queue first at
a `WriteGate`, first come first served (an HTTP call keeps its place for all of its
transactions), and the lock passes straight to the next in line when a transaction
commits or rolls back:

* HTTP calls (`serving()`) queue with a bound: past `max_waiting` waiting writers, or
  after `max_wait` seconds in line, the call gets `Busy` (503 with Retry-After). Other
  callers (background jobs, CLI commands) wait up to the busy timeout, as before.
* Reads skip the gate. A GET or HEAD (`serving(reads=True)`), `readonly_sessions` and
  `reading()` blocks (a POST call's token check) begin deferred transactions, which in WAL
  mode read a snapshot without any lock, so they never wait for writers. A GET that
  writes says so with `writing()`; `transaction()` always does. A write in a read
  transaction still works but is warned about, because it can fail at once with
  "database is locked" under contention (the API answers that 503).
* The gate is per database file and per process. Several processes on one file
  (`accord serve --workers N`, `accord worker`, the gateway's shipper, CLI commands)
  still meet only at SQLite's lock, through busy_timeout.

PostgreSQL has none of this: its writers lock rows, not the database.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import DateTime, Engine, MetaData, Select, create_engine, event, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

from accord import metrics
from accord.errors import Busy

log = logging.getLogger("accord.db")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python, microsecond precision on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite: seconds a writer waits for the lock held by another process (busy_timeout), and
# for the gate when it is not serving an HTTP call.
BUSY_TIMEOUT_S = 30
# HTTP writers past this many waiting, or after this long in line, get 503 (see WriteGate).
MAX_WAITING = 16
MAX_WAIT_S = 5.0
# Connections per SQLite engine: enough that no caller ever waits for one (threads and the
# gate are the real limits); the cap only keeps file descriptors in check.
SQLITE_MAX_CONNECTIONS = 100


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url`, with SQLite set up for concurrent readers and one writer."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgres://")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        memory = path in ("", ":memory:")
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        pool: dict[str, Any] = {"poolclass": NullPool} if memory else {
            "pool_size": pool_size, "max_overflow": SQLITE_MAX_CONNECTIONS - pool_size}
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_S}, **pool)
        # An in-memory database is private to its connection: nothing to queue for.
        _sqlite_setup(engine, None if memory else _gate_for(path))
        return engine
    # No pre-ping on every checkout (a round trip each): only a connection with something to
    # read while idle is pinged (`_drop_dead_connections`).
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    _drop_dead_connections(engine)
    return engine


def _drop_dead_connections(engine: Engine) -> None:
    """After the server restarted (or ended a backend), an idle pooled connection has the
    server's goodbye, or the end of the stream, waiting to be read: a look at its socket,
    which costs no round trip, finds it, and one ping decides. A dead one empties the pool
    (everything older is as dead) and the checkout gets a fresh connection, so the first
    calls after a restart do not fail with 500 after /readyz said ready."""

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        try:
            readable, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
        except Exception:  # closed already, or no socket: let the ping decide
            readable = [True]
        if readable and not engine.dialect._do_ping_w_event(dbapi_conn):
            raise exc.InvalidatePoolError("the server closed this connection")


class WriteGate:
    """A first-come-first-served lock with a bounded queue, taken before BEGIN IMMEDIATE.

    Waiters are served in the order they arrived, where an HTTP call arrives once: its
    second write transaction (or its write after a long read) does not go to the back of
    the line again. `release` hands the gate straight to the next in line, so a writer's wait
    is the time the writers ahead of it hold the lock, never a polling interval.
    """

    def __init__(self, *, max_waiting: int = MAX_WAITING, max_wait: float = MAX_WAIT_S,
                 background_wait: float = BUSY_TIMEOUT_S) -> None:
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self.background_wait = background_wait
        self.refused = 0  # writers turned away since the process started
        self._mutex = threading.Lock()
        self._held = False
        # (arrival, sequence, a locked ticket its waiter blocks on), earliest first.
        self._queue: list[tuple[float, int, threading.Lock]] = []
        self._sequence = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def acquire(self, *, bounded: bool, arrived: float | None = None) -> None:
        """Wait for the gate; `bounded` (HTTP calls) refuses with Busy instead of a long wait.
        `arrived` (time.monotonic()) places the waiter; by default it arrives now."""
        with self._mutex:
            if not self._held:
                self._held = True
                return
            if bounded and len(self._queue) >= self.max_waiting:
                self.refused += 1
                metrics.get().sqlite_writes_refused.inc()
                raise Busy(f"{len(self._queue)} writes are already waiting for the database "
                           "(SQLite takes one at a time); try again shortly")
            ticket = threading.Lock()
            ticket.acquire()
            entry = (time.monotonic() if arrived is None else arrived, next(self._sequence),
                     ticket)
            heapq.heappush(self._queue, entry)
        waiting = metrics.get().sqlite_writes_waiting  # only a writer that waits pays
        waiting.inc()
        limit = self.max_wait if bounded else self.background_wait
        if ticket.acquire(timeout=limit):
            waiting.dec()
            return
        waiting.dec()
        with self._mutex:
            if entry in self._queue:
                self._queue.remove(entry)
                heapq.heapify(self._queue)
                self.refused += 1
                metrics.get().sqlite_writes_refused.inc()
                raise Busy(f"waited {limit:g} s for the database's write lock (SQLite takes "
                           "one writer at a time); try again shortly")
        # Handed over just as the wait ran out: the gate is ours after all.

    def release(self) -> None:
        with self._mutex:
            if self._queue:
                heapq.heappop(self._queue)[2].release()  # still held: now by the next in line
            else:
                self._held = False

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the gate (tests, maintenance): this process's writers wait meanwhile."""
        self.acquire(bounded=False)
        try:
            yield
        finally:
            self.release()


_GATES: dict[str, WriteGate] = {}
_GATES_LOCK = threading.Lock()


def _gate_for(path: str) -> WriteGate:
    """One gate per database file in this process, however many engines open it."""
    key = os.path.realpath(path)
    with _GATES_LOCK:
        return _GATES.setdefault(key, WriteGate())


def write_gate(engine: Engine) -> WriteGate | None:
    """The gate this process's writers to `engine`'s SQLite file queue at (None otherwise)."""
    path = engine.url.database
    if engine.dialect.name != "sqlite" or path in (None, "", ":memory:"):
        return None
    return _gate_for(path)


# What the code running now may do, as the outer layer said: HTTP calls are bounded, and
# GET/HEAD calls only read unless a block says `writing()`.
_BOUNDED: ContextVar[bool] = ContextVar("accord_db_bounded", default=False)
_READS: ContextVar[bool] = ContextVar("accord_db_reads", default=False)
_ARRIVED: ContextVar[float | None] = ContextVar("accord_db_arrived", default=None)


@contextmanager
def serving(*, reads: bool) -> Iterator[None]:
    """An HTTP call: its writers are refused (503) past the gate's bound; with `reads` its
    transactions begin deferred on SQLite and never wait for writers."""
    bounded, reading = _BOUNDED.set(True), _READS.set(reads)
    arrived = _ARRIVED.set(time.monotonic())  # its place in the writers' line
    try:
        yield
    finally:
        _ARRIVED.reset(arrived)
        _READS.reset(reading)
        _BOUNDED.reset(bounded)


@contextmanager
def writing() -> Iterator[None]:
    """Transactions begun in this block write: a GET handler that records something."""
    token = _READS.set(False)
    try:
        yield
    finally:
        _READS.reset(token)


@contextmanager
def reading() -> Iterator[None]:
    """Transactions begun in this block only read, whatever the call: on SQLite they begin
    deferred and skip the write gate (a POST call's token check). End the transaction
    inside the block; a write in it is warned about (see `WriteInReadTransaction`)."""
    token = _READS.set(True)
    try:
        yield
    finally:
        _READS.reset(token)


class WriteInReadTransaction(RuntimeWarning):
    """A write in a transaction begun as a read (a GET handler without `writing()`)."""


_GATE = "accord_gate"  # conn.info: the gate this connection's transaction holds
_DEFERRED = "accord_deferred"  # conn.info: the transaction began as a read
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")


def _sqlite_setup(engine: Engine, gate: WriteGate | None) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN IMMEDIATE is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # Readers that only stream (exports) and GET calls read a snapshot: no lock, no wait.
        if conn.get_execution_options().get(READONLY) or _READS.get():
            conn.exec_driver_sql("BEGIN")
            conn.info[_DEFERRED] = True
            return
        if gate is not None and _GATE not in conn.info:
            gate.acquire(bounded=_BOUNDED.get(), arrived=_ARRIVED.get())
            conn.info[_GATE] = gate
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _drop(conn.info)
            raise

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        info = conn.info
        if info.get(_DEFERRED) and _GATE not in info \
                and statement.lstrip()[:6].upper() in _WRITES:
            message = (f"a write in a transaction begun as a read ({statement[:60]!r}): it "
                       "can fail under contention; begin it inside accord.db.writing()")
            log.warning("%s", message)
            warnings.warn(message, WriteInReadTransaction, stacklevel=2)
            if gate is not None:  # at least wait behind this process's writers
                gate.acquire(bounded=_BOUNDED.get(), arrived=_ARRIVED.get())
                info[_GATE] = gate

    # The commit and rollback events fire before SQLAlchemy commits: do it here, so the
    # next writer is let in only once the lock is free. SQLAlchemy's own call then finds
    # no transaction (or retries a failed one and reports its error the usual way).
    @event.listens_for(engine, "commit")
    def _commit(conn: Any) -> None:
        _finish(conn, "commit")

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Any) -> None:
        _finish(conn, "rollback")

    # Whatever way a connection leaves a transaction behind, its gate is given back.
    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        _drop(record.info)

    @event.listens_for(engine, "invalidate")
    def _invalidate(_dbapi_conn: Any, record: Any, _exc: Any) -> None:
        _drop(record.info)


def _finish(conn: Any, how: str) -> None:
    try:
        info = conn.info
    except Exception:  # an invalidated connection: the pool's events give the gate back
        return
    info.pop(_DEFERRED, None)
    if _GATE not in info:
        return
    try:
        with suppress(Exception):  # SQLAlchemy's own commit/rollback, next, reports it
            getattr(conn.connection.dbapi_connection, how)()
    finally:
        _drop(info)


def _drop(info: dict[Any, Any]) -> None:
    info.pop(_DEFERRED, None)
    held: WriteGate | None = info.pop(_GATE, None)
    if held is not None:
        held.release()


READONLY = "accord_readonly"


def on_sqlite(session: Session) -> bool:
    """Whether `session` is bound to SQLite (one writer, whole-database locks)."""
    return session.get_bind().dialect.name == "sqlite"


def end_read(session: Session) -> None:
    """End a read on SQLite, where even a read transaction pins a WAL snapshot and, in a
    writer's transaction, holds the write lock; on PostgreSQL the call's one transaction
    goes on (ending it would cost a round trip for nothing)."""
    if on_sqlite(session):
        session.commit()


_S = TypeVar("_S", bound=Select[Any])


def skip_locked(session: Session, query: _S) -> _S:
    """`query` locking its rows and skipping rows another transaction holds: on PostgreSQL,
    concurrent workers each take different due rows. SQLite serialises writers anyway."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True)
    return query


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def readonly_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for long reads: on SQLite a deferred BEGIN, so writers are never blocked."""
    bind = sessions.kw.get("bind")
    if isinstance(bind, Engine):
        return sessionmaker(bind.execution_options(**{READONLY: True}), expire_on_commit=False)
    return sessions


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit when the block finishes, roll back when it raises. It may
    write, even inside a GET call (see `writing()`)."""
    with writing(), factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
