"""Backup and recovery (docs/ledger.md, "Backup and restore"): `pg_dump`/`pg_restore` into a
fresh database and SQLite's online backup, after which the ledger verifies against the
pinned key and checkpoint and the signer continues the same tree; and a restore that lost
its tail, which the signer refuses until an admin accepts the loss, as a ledger event."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction
from accord.ledger import checkpoints, integrity, recovery
from accord.ledger.events import Actor, EventType, Via
from accord.ledger.models import LedgerEntry
from accord.ledger.service import LedgerCorruption, record
from accord.ledger.upkeep import integrate_all
from accord.worker.integrity import IntegrityMonitor
from tests.conftest import PG_ADMIN_URL, Env, make_env
from tests.ledger.test_rotation import _export, _verify
from tests.ledger.test_tamper import _leaf, _set_leaf
from tests.worker.test_integrity_monitor import EVERY_TIME

CLI = Actor("system", "accord-cli", Via.CLI)


@dataclass
class Installation:
    """One Accord database, its backups and the fresh databases they are restored into."""

    kind: str
    tmp: Path
    engine: Engine
    made: list[str] = field(default_factory=list)  # databases to drop afterwards
    engines: list[Engine] = field(default_factory=list)

    def backup(self) -> Path:
        out = self.tmp / f"backup-{uuid.uuid4().hex[:6]}"
        if self.kind == "postgresql":
            # A consistent snapshot while the installation keeps writing (the documented way).
            subprocess.run(["pg_dump", "--format=custom", "--file", str(out),
                            "--dbname", _url(self.engine)], check=True)
        else:
            # What `sqlite3 accord.db ".backup backup.db"` does: SQLite's online backup.
            src = sqlite3.connect(str(self.engine.url.database))
            dst = sqlite3.connect(out)
            with dst:
                src.backup(dst)
            src.close()
            dst.close()
        return out

    def restore(self, backup: Path) -> Engine:
        """Into a fresh database (PostgreSQL) or a fresh file (SQLite)."""
        if self.kind == "postgresql":
            name = f"accord_restore_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            self.made.append(name)
            url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
            subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "--dbname", url,
                            str(backup)], check=True)
        else:
            target = self.tmp / f"restored-{uuid.uuid4().hex[:6]}.db"
            shutil.copy(backup, target)
            url = f"sqlite:///{target}"
        engine = make_engine(url)
        assert migrations.current(engine) == migrations.head()
        self.engines.append(engine)
        return engine


def _url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def installation(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Installation]:
    if request.param == "postgresql":
        if shutil.which("pg_dump") is None:
            pytest.skip("pg_dump is not installed (apt-get install postgresql-client)")
        engine: Engine = request.getfixturevalue("fresh_pg")
    else:
        engine = make_engine(f"sqlite:///{tmp_path / 'accord.db'}")
        migrations.upgrade(engine)
    inst = Installation(request.param, tmp_path, engine)
    yield inst
    for e in inst.engines:
        e.dispose()
    if request.param == "sqlite":
        engine.dispose()
    for name in inst.made:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env(engine: Engine, data: Path) -> Env:
    """The app over `engine`, its key and the checkpoint kept beside it in `data`."""
    data.mkdir(exist_ok=True)
    return make_env(make_sessionmaker(engine), data)


def _append(env: Env, n: int, tag: str = "e") -> None:
    with transaction(env.st.sessions) as session:
        for i in range(n):
            record(session, type=EventType.POLICY_LOADED, actor=Actor.system(),
                   subject=f"test:{tag}{i}", data={"n": i},
                   time=env.clock.advance(seconds=1))
    integrate_all(env.st.sessions)  # PostgreSQL leaves them pending; SQLite: nothing to do


def _sign(env: Env) -> str:
    integrate_all(env.st.sessions)
    with transaction(env.st.sessions) as session:
        cp = checkpoints.sign(session, env.st.ledger, now=env.clock(), force=True)
    checkpoints.after_commit(env.st.ledger, cp)
    assert cp is not None
    return cp.note


def _size(note: str) -> int:
    return int(note.split("\n")[1])


def _writing(env: Env) -> Callable[[], int]:
    """Keep appending (a live installation) until the returned function is called."""
    stop = threading.Event()
    count = [0]

    def run() -> None:
        while not stop.is_set():
            with transaction(env.st.sessions) as session:
                record(session, type=EventType.POLICY_LOADED, actor=Actor.system(),
                       subject=f"test:live{count[0]}", data={"n": count[0]})
            count[0] += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def done() -> int:
        stop.set()
        thread.join(timeout=10)
        return count[0]

    return done


def test_a_backup_restored_into_a_fresh_database_verifies_and_the_signer_continues(
        installation: Installation) -> None:
    data = installation.tmp / "data"
    env = _env(installation.engine, data)
    _append(env, 30)
    pin = _sign(env)
    key = env.st.ledger.signer.verifier
    stop = _writing(env)  # writes go on while the backup runs
    backup = installation.backup()
    assert stop() > 0
    restored = _env(installation.restore(backup), data)  # same key and memory beside it
    integrate_all(restored.st.sessions)  # rows the backup caught pending (PostgreSQL)
    report = _verify(_export(restored), key=key, pin=pin, allow_unsigned_tail=True)
    assert report.ok, report.problems
    _append(restored, 5, "after")
    after = _sign(restored)  # the signer continues: it extends the pinned checkpoint
    assert _size(after) > _size(pin)
    report = _verify(_export(restored), key=key, pin=pin)
    assert report.ok and report.size == _size(after), report.problems
    with restored.st.sessions() as s:
        assert integrity.first_bad(s, restored.st.ledger.ring()) is None


def test_a_restore_that_lost_its_tail_is_refused_until_an_admin_accepts_it(
        installation: Installation) -> None:
    data = installation.tmp / "data"
    env = _env(installation.engine, data)
    _append(env, 20)
    kept = _sign(env)
    key = env.st.ledger.signer.verifier
    backup = installation.backup()
    _append(env, 40, "lost")
    lost = _sign(env)  # remembered beside the key; the backup does not have it
    restored = _env(installation.restore(backup), data)
    integrate_all(restored.st.sessions)

    with pytest.raises(LedgerCorruption, match="accept-restore"), \
            transaction(restored.st.sessions) as session:
        checkpoints.sign(session, restored.st.ledger, now=restored.clock(), force=True)
    monitor = IntegrityMonitor(restored.st.sessions, restored.st.ledger, restored.clock,
                               EVERY_TIME)
    damage = monitor.check()
    assert damage is not None and "removed from the end" in damage.what
    with restored.st.sessions() as s:
        assert integrity.open_finding(s) is not None

    done = recovery.accept_restore(restored.st.sessions, restored.st.ledger, actor=CLI,
                                   now=restored.clock, reason="restored the 02:00 backup")
    assert done.lost.size == _size(lost) and done.lost.text == lost
    assert done.moved_to.read_text() == lost and done.checkpoint is not None
    with restored.st.sessions() as s:
        (event,) = s.execute(select(LedgerEntry.leaf).where(
            LedgerEntry.type == str(EventType.LEDGER_RESTORE_ACKNOWLEDGED))).scalars()
        assert integrity.open_finding(s) is None
        mended = s.execute(select(LedgerEntry.leaf).where(
            LedgerEntry.type == str(EventType.LEDGER_MENDED))).scalars().all()
    body = json.loads(event)
    assert body["data"]["lost"]["size"] == _size(lost)
    assert body["data"]["lost"]["checkpoint"] == lost
    assert body["data"]["restored_size"] == done.restored_size < _size(lost)
    assert body["data"]["reason"] == "restored the 02:00 backup"
    assert body["actor"]["via"] == "cli" and len(mended) == 1
    assert _size(done.checkpoint.note) > done.restored_size  # it covers the event

    # The signer continues the restored tree; the monitor finds nothing wrong.
    _append(restored, 50, "new")  # past the lost size: another history than the lost one
    assert _size(_sign(restored)) > _size(lost)
    assert monitor.check() is None
    report = _verify(_export(restored), key=key, pin=kept)
    assert report.ok, report.problems
    # A pin from the lost tail no longer matches: the event says why.
    assert not _verify(_export(restored), key=key, pin=lost).ok
    with pytest.raises(recovery.NothingToAccept):
        recovery.accept_restore(restored.st.sessions, restored.st.ledger, actor=CLI,
                                now=restored.clock, reason="again")


def test_accept_restore_refuses_a_restored_ledger_that_is_itself_damaged(
        installation: Installation) -> None:
    data = installation.tmp / "data"
    env = _env(installation.engine, data)
    _append(env, 10)
    _sign(env)
    backup = installation.backup()
    _append(env, 10, "lost")
    _sign(env)
    restored = _env(installation.restore(backup), data)
    integrate_all(restored.st.sessions)
    _set_leaf(restored, 3, _leaf(restored, 3).replace(b'"v":1', b'"v":2'))
    with pytest.raises(LedgerCorruption, match="index 3"):
        recovery.accept_restore(restored.st.sessions, restored.st.ledger, actor=CLI,
                                now=restored.clock, reason="x")
    assert restored.st.ledger.memory_path.exists()  # nothing was accepted


# ---------------------------------------------------------------- the commands, SQLite

runner = CliRunner()


def test_the_sqlite_procedure_with_the_commands(tmp_path: Path) -> None:
    from accord.cli.main import app
    from tests.cli.test_audit_cli import _signed_log

    env, key, pin, _ = _signed_log(tmp_path)
    db = tmp_path / "data" / "accord.db"
    backup = tmp_path / "backup.db"
    r = subprocess.run(["sqlite3", str(db), f".backup '{backup}'"], capture_output=True,
                       text=True) if shutil.which("sqlite3") else None
    if r is None or r.returncode != 0:  # no sqlite3 shell here: the same online backup
        with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(backup)) as dst:
            src.backup(dst)
    for user in ("dave", "erin"):
        assert runner.invoke(app, ["token", "issue", user], env=env).exit_code == 0
    assert runner.invoke(app, ["audit", "checkpoint"], env=env).exit_code == 0
    # Restore, Accord stopped: `sqlite3 accord.db ".restore backup.db"` (SQLite's backup,
    # the other way round: it rewrites the file and its write-ahead log together).
    with closing(sqlite3.connect(backup)) as src, closing(sqlite3.connect(db)) as dst:
        src.backup(dst)
    r = runner.invoke(app, ["audit", "checkpoint"], env=env)
    assert r.exit_code == 1 and "accept-restore" in " ".join(r.stderr.split())
    r = runner.invoke(app, ["audit", "accept-restore", "--reason", "disk lost, INC-7"], env=env)
    assert r.exit_code == 0, r.output
    assert "recorded as ledger.restore_acknowledged" in " ".join(r.stderr.split())
    assert r.stdout.startswith("accord.local/ledger\n")  # the checkpoint signed after it
    (tmp_path / "pin.txt").write_text(pin)
    bundle = tmp_path / "restored.bundle"
    assert runner.invoke(app, ["audit", "export", "--out", str(bundle)], env=env).exit_code == 0
    r = runner.invoke(app, ["audit", "verify", "--bundle", str(bundle), "--key", key,
                            "--pin", str(tmp_path / "pin.txt")], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", "accept-restore", "--reason", "again"], env=env)
    assert r.exit_code == 0 and "nothing to accept" in r.stderr
