"""Rotating the checkpoint key: the next checkpoint is signed by the old and the new key,
later ones by the new key; every stored checkpoint still verifies (signer, integrity
monitor, pages, reports, exports), and `accord audit verify` follows the rotation from a
pinned old key while refusing a "rotation" to a key nobody introduced."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from accord.db import transaction
from accord.detect import service as detect
from accord.ledger import bundle, checkpoints, integrity, keys, rotation
from accord.ledger.checkpoints import LedgerConfig, SigningKeyError
from accord.ledger.events import Actor, EventType, Via
from accord.ledger.keys import KeyRing, Retired
from accord.ledger.models import LedgerCheckpoint, LedgerEntry, LedgerFinding
from accord.ledger.note import (
    NoteError,
    Signer,
    Verifier,
    checkpoint_body,
    open_checkpoint,
    sign_note,
)
from accord.ledger.service import LedgerCorruption, record, tree_size
from accord.ledger.upkeep import integrate_all, sign_if_due
from accord.ledger.verify import Report, verify
from accord.web import evidence
from accord.worker.integrity import IntegrityMonitor
from tests.conftest import Env
from tests.ledger.test_crash import database
from tests.ledger.test_proofs_api import real_env
from tests.ledger.test_tamper import _append, _sign
from tests.worker.test_integrity_monitor import EVERY_TIME, login

__all__ = ["database", "real_env"]

CLI = Actor("system", "accord-cli", Via.CLI)


# ---------------------------------------------------------------- the key ring itself


def _note(size: int, *signers: Signer) -> str:
    return sign_note(checkpoint_body("o", size, bytes(32)), list(signers))


def test_the_key_file_keeps_every_key_and_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "ledger.key"
    first = keys.load_or_create(path, "o")
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.read(path) == first and path.read_text().count("\n") == 1  # the old format
    second = Signer.generate("o")
    pending = first.rotated(second)
    with keys.locked(path):
        keys.write(path, pending)
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.read(path) == pending
    with pytest.raises(NoteError, match="under way"):
        pending.rotated(Signer.generate("o"))
    done = pending.retire_previous(7)
    assert done.previous is None and done.retired == (Retired(first.signer.verifier, 7),)
    assert KeyRing.decode(done.encode()) == done
    assert "PRIVATE" not in done.encode().split("\n", 1)[1]  # the old key's secret is gone
    assert done.chain == [first.signer.verifier, second.verifier]


def test_each_key_signs_its_own_range_and_the_rotation_both() -> None:
    old, new = Signer.generate("o"), Signer.generate("o")
    ring = KeyRing(new, None, (Retired(old.verifier, 10),))
    assert ring.check(_note(4, old)).size == 4
    assert ring.open(_note(10, old, new))[1] == [old.verifier, new.verifier]
    assert ring.check(_note(11, new)).size == 11
    with pytest.raises(NoteError, match="both keys"):
        ring.check(_note(10, old))  # the rotation's checkpoint needs both signatures
    with pytest.raises(NoteError, match="both keys"):
        ring.check(_note(10, new))
    with pytest.raises(NoteError, match="key in force at size 11"):
        ring.check(_note(11, old))  # the retired key signs nothing after its rotation
    with pytest.raises(NoteError, match="key in force at size 4"):
        ring.check(_note(4, new))  # nor the new key before it
    with pytest.raises(NoteError, match="no signature"):
        ring.check(_note(12, Signer.generate("o")))
    # While a rotation is under way, either key is accepted after the last rotation.
    under_way = KeyRing(new, old)
    assert under_way.cosigners(None) == [old, new]
    assert under_way.cosigners(_note(3, old)) == [old, new]
    assert under_way.cosigners(_note(4, old, new)) == [new]
    assert under_way.check(_note(4, old)).size == 4


# ---------------------------------------------------------------- end to end


@pytest.fixture
def rotated(env: Env, tmp_path: Path) -> Iterator[tuple[Env, dict[str, object]]]:
    """A log signed by the old key, rotated, grown and signed by the new key."""
    env.st.ledger.witness_dir = tmp_path / "witness"
    old = env.st.ledger.signer.verifier
    _append(env, 10)
    before = _sign(env)
    done = rotation.rotate(env.st.sessions, env.st.ledger, actor=CLI, now=env.clock,
                           reason="yearly")
    _append(env, 5, start=10)
    after = _sign(env)
    yield env, {"old": old, "new": env.st.ledger.signer.verifier, "before": before,
                "cosigned": done.checkpoint, "size": done.size, "after": after, "done": done}


def _sigs(note: str) -> list[str]:
    return [ln for ln in note.split("\n\n", 1)[1].splitlines() if ln]


def _export(env: Env) -> bytes:
    buf = io.BytesIO()
    ring = env.st.ledger.ring()
    with env.st.sessions() as session:
        bundle.write(session, buf, origin=env.st.ledger.origin,
                     key=ring.signer.verifier.encode(), exported_at=env.clock(),
                     keys=[v.encode() for v in ring.chain])
    return buf.getvalue()


def _verify(data: bytes, **kw: object) -> Report:
    return verify(lambda: io.BytesIO(data), **kw)  # type: ignore[arg-type]


def test_rotation_cosigns_one_checkpoint_and_records_an_event(
        rotated: tuple[Env, dict[str, object]]) -> None:
    env, r = rotated
    old, new = r["old"], r["new"]
    assert isinstance(old, Verifier) and isinstance(new, Verifier) and old != new
    assert old.name == new.name  # one log, one key name, two key ids
    before, cosigned, after = str(r["before"]), str(r["cosigned"]), str(r["after"])
    assert len(_sigs(before)) == 1 and open_checkpoint(before, [old])[1] == [old]
    assert len(_sigs(cosigned)) == 2
    assert open_checkpoint(cosigned, [old, new])[1] == [old, new]  # old first, then new
    assert len(_sigs(after)) == 1 and open_checkpoint(after, [old, new])[1] == [new]
    ring = env.st.ledger.ring()
    assert ring.signer.verifier == new and ring.previous is None
    assert ring.retired == (Retired(old, int(r["size"])),)  # type: ignore[call-overload]
    with env.st.sessions() as s:
        sizes = list(s.execute(select(LedgerCheckpoint.size)
                               .order_by(LedgerCheckpoint.size)).scalars())
        (event,) = s.execute(select(LedgerEntry).where(
            LedgerEntry.type == str(EventType.LEDGER_KEY_ROTATED))).scalars()
    assert len(sizes) == 3 and sizes[1] == r["size"]
    data = json.loads(event.leaf)["data"]
    assert (data["old"]["id"], data["new"]["id"]) == (old.id.hex(), new.id.hex())
    assert (data["old"]["key"], data["new"]["key"]) == (old.encode(), new.encode())
    assert data["reason"] == "yearly" and json.loads(event.leaf)["actor"]["via"] == "cli"
    assert event.idx is not None and event.idx < int(r["size"])  # the cosigned one covers it
    # The witness keeps all three, the cosigned one with both signatures.
    witness = env.st.ledger.witness_dir
    assert witness is not None
    assert sorted(int(p.name) for p in witness.iterdir()) == sizes
    assert (witness / str(r["size"])).read_text() == cosigned
    # Beside the key: the newest checkpoint, which the ring verifies.
    assert env.st.ledger.remembered().size == sizes[-1]  # type: ignore[union-attr]


def test_verify_follows_the_rotation_from_the_old_key_and_the_new(
        rotated: tuple[Env, dict[str, object]]) -> None:
    env, r = rotated
    old, new = r["old"], r["new"]
    data = _export(env)
    witness = env.st.ledger.witness_dir
    by_old = _verify(data, key=old, pin=str(r["before"]), witness=witness)
    assert by_old.ok, by_old.problems
    pinned = int(str(r["before"]).split("\n")[1])
    assert (by_old.checkpoints, by_old.witnessed, by_old.pinned) == (3, 3, pinned)
    assert by_old.keys == [old.encode(), new.encode()]  # type: ignore[union-attr]
    assert by_old.rotations == [f"at size {r['size']}: {old.name} key {old.id.hex()} "  # type: ignore[union-attr]
                                f"introduced {new.name} key {new.id.hex()}"]  # type: ignore[union-attr]
    by_new = _verify(data, key=new, pin=str(r["cosigned"]), witness=witness)
    assert by_new.ok, by_new.problems
    assert by_new.keys == by_old.keys and by_new.rotations == by_old.rotations
    assert _verify(data, key=new, pin=str(r["before"])).ok  # an old pin, a new key


def _forge(data: bytes, extra: list[str], *, keys_: list[str] | None = None,
           key: str | None = None, checkpoints: list[str] | None = None) -> bytes:
    head = bundle.read_header(io.BytesIO(data))
    header = {**head.raw, "checkpoints": [*(checkpoints or head.checkpoints), *extra]}
    if keys_ is not None:
        header["keys"] = keys_
    if key is not None:
        header["key"] = key
    body = data[len(bundle.MAGIC):].split(b"\n", 1)[1]
    return bundle.MAGIC + json.dumps(header).encode() + b"\n" + body


def test_a_rotation_to_a_key_nobody_introduced_fails_naming_the_size(
        signed_env: Env) -> None:
    env = signed_env
    old = env.st.ledger.signer.verifier
    _append(env, 6, start=100)
    honest = _export(env)
    size = bundle.read_header(io.BytesIO(honest)).size
    signed_size = int(bundle.read_header(io.BytesIO(honest)).checkpoints[-1].split("\n")[1])
    root = _verify(honest, key=old, allow_unsigned_tail=True).root
    thief = Signer.generate(old.name)
    forged_note = thief.sign(checkpoint_body(env.st.ledger.origin, size, root))
    forged = _forge(honest, [forged_note], keys_=[old.encode(), thief.verifier.encode()],
                    key=thief.verifier.encode())
    report = _verify(forged, key=old)
    assert not report.ok
    said = " ".join(report.problems)
    assert f"of size {size}" in said and thief.verifier.id.hex() in said
    assert f"entries {signed_size}..{size - 1} are not vouched for" in said
    assert report.first_bad_index == signed_size
    # A "cosigned" note whose old-key signature is made up is a bad signature.
    fake_old = f"\u2014 {old.name} " + base64.b64encode(old.id + bytes(64)).decode()
    lines = forged_note.rstrip("\n").split("\n")
    fake_cosigned = "\n".join([*lines[:4], fake_old, lines[4]]) + "\n"
    report = _verify(_forge(honest, [fake_cosigned],
                            keys_=[old.encode(), thief.verifier.encode()]), key=old)
    assert not report.ok and "bad signature" in " ".join(report.problems)


@pytest.fixture
def signed_env(env: Env) -> Env:
    with env.st.sessions() as session:
        base = tree_size(session)
    _append(env, 100 - base)
    _sign(env)
    return env


def test_the_retired_key_signs_nothing_after_its_rotation(
        rotated: tuple[Env, dict[str, object]]) -> None:
    """Someone holding the old key (a compromise) cannot extend the log with it: a
    checkpoint it signed after the rotation fails, even with the old key pinned."""
    env, r = rotated
    old = r["old"]
    assert isinstance(old, Verifier)
    assert "PRIVATE" not in env.st.ledger.key_path.read_text().split("\n", 1)[1]
    data = _export(env)
    head = bundle.read_header(io.BytesIO(data))
    late = _old_private(r).sign(checkpoint_body(head.origin, head.size,
                                                _verify(data, key=old).root))
    forged = _forge(data, [], checkpoints=[*head.checkpoints[:-1], late])
    report = _verify(forged, key=old)
    assert not report.ok
    said = " ".join(report.problems)
    assert f"of size {head.size}" in said and "key in force" in said
    assert report.first_bad_index == r["size"]


def _old_private(r: dict[str, object]) -> Signer:
    done = r["done"]
    assert isinstance(done, rotation.Rotation)
    return OLD_SIGNERS[done.old.encode()]


OLD_SIGNERS: dict[str, Signer] = {}


@pytest.fixture(autouse=True)
def _keep_old_private_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests play the thief of an old key: keep each private key a rotation retires."""
    real = LedgerConfig.rotate

    def rotate(self: LedgerConfig, new: Signer) -> KeyRing:
        OLD_SIGNERS[self.signer.verifier.encode()] = self.signer
        return real(self, new)

    monkeypatch.setattr(LedgerConfig, "rotate", rotate)


def test_the_integrity_monitor_finds_nothing_wrong_with_a_rotation(
        rotated: tuple[Env, dict[str, object]]) -> None:
    env, _ = rotated
    m = IntegrityMonitor(env.st.sessions, env.st.ledger, env.clock, EVERY_TIME)
    assert m.check() is None
    assert m.full is None and m.last_full is not None  # a whole pass reached the head
    with env.st.sessions() as s:
        assert integrity.first_bad(s, env.st.ledger.ring()) is None
        assert integrity.open_finding(s) is None
        assert detect.unresolved(s, rule="ledger_integrity") == []
        assert evidence.state(s, env.st.ledger).ok
    # Another rotation, with the monitor's walk resuming mid-way: still nothing.
    rotation.rotate(env.st.sessions, env.st.ledger, actor=CLI, now=env.clock)
    _append(env, 3, start=50)
    _sign(env)
    assert m.check() is None
    assert len(env.st.ledger.ring().retired) == 2
    # Offline, from any of the three keys: both rotations are followed, both ways.
    data = _export(env)
    chain = env.st.ledger.ring().chain
    for pinned in chain:
        report = _verify(data, key=pinned, witness=env.st.ledger.witness_dir)
        assert report.ok, (pinned, report.problems)
        assert report.keys == [v.encode() for v in chain] and len(report.rotations) == 2
    # The signer keeps signing: no finding stopped it.
    _append(env, 2, start=60)
    assert len(_sigs(_sign(env))) == 1


def test_a_checkpoint_signed_by_the_retired_key_later_is_damage(
        rotated: tuple[Env, dict[str, object]]) -> None:
    env, r = rotated
    thief = _old_private(r)
    _append(env, 4, start=70)
    with env.st.sessions() as s:
        size = tree_size(s)
        from accord.ledger.service import root_at
        root = root_at(s, size)
    with transaction(env.st.sessions) as s:
        s.add(LedgerCheckpoint(size=size, root=root, note=thief.sign(
            checkpoint_body(env.st.ledger.origin, size, root)), signed_at=env.clock()))
    m = IntegrityMonitor(env.st.sessions, env.st.ledger, env.clock, EVERY_TIME)
    damage = m.check()
    assert damage is not None and "key in force" in damage.what, damage
    with env.st.sessions() as s:
        assert s.execute(select(LedgerFinding)).scalars().first() is not None


def test_the_audit_page_stays_verified_and_names_both_signatures(
        rotated: tuple[Env, dict[str, object]]) -> None:
    env, r = rotated
    dave = login(env, "dave")
    page = dave.get("/audit")
    verdict = page.text.split('id="ledger-verdict">')[1].split("</dd>")[0]
    assert "✔ verified" in verdict, verdict
    assert env.st.ledger.signer.verifier.encode() in page.text
    # The cosigned checkpoint, the latest for a moment, says both keys signed it.
    with env.st.sessions() as s:
        row = s.get(LedgerCheckpoint, int(r["size"]))  # type: ignore[call-overload]
        assert row is not None
        ring = env.st.ledger.ring()
        _, signed = ring.open(row.note, row.size)
        assert len(signed) == 2
    keys_ = env.get("dave", "/api/v1/audit/keys").json()
    assert [k["key"] for k in keys_["keys"]] == [str(v.encode()) for v in
                                                 (r["old"], r["new"])]  # type: ignore[union-attr]
    assert keys_["keys"][0]["until"] == r["size"] and keys_["keys"][1]["since"] == r["size"]
    assert env.get("dave", "/api/v1/audit/key").text.strip() == keys_["key"]


def test_a_running_process_picks_up_the_new_key(env: Env) -> None:
    """The worker's LedgerConfig was built before `rotate-key` ran in another process (a
    second LedgerConfig on the same file): it reads the changed key file by itself."""
    worker_cfg = env.st.ledger
    cli_cfg = LedgerConfig(origin=worker_cfg.origin, key_path=worker_cfg.key_path)
    old = worker_cfg.signer.verifier
    _append(env, 3)
    _sign(env)
    new = keys.generate(old.name, avoid=[old])
    cli_cfg.rotate(new)  # the key installed; the command stops here (say)
    assert worker_cfg.signer.verifier == new.verifier
    _append(env, 3, start=3)
    note = _sign(env)  # the worker signs next: both keys
    assert open_checkpoint(note, [old, new.verifier])[1] == [old, new.verifier]
    assert worker_cfg.ring().previous is None  # and it retired the old key
    # Running rotate-key again finishes it: the event is recorded, no new key is made.
    done = rotation.rotate(env.st.sessions, cli_cfg, actor=CLI, now=env.clock)
    assert done.resumed and done.new == new.verifier and done.checkpoint == note
    with env.st.sessions() as s:
        events = list(s.execute(select(LedgerEntry.leaf).where(
            LedgerEntry.type == str(EventType.LEDGER_KEY_ROTATED))).scalars())
    assert len(events) == 1 and json.loads(events[0])["data"]["late"] is True
    assert worker_cfg.signer.verifier == new.verifier


def test_a_process_whose_key_file_lags_behind_a_rotation_signs_nothing(
        env: Env, tmp_path: Path) -> None:
    """A replica on another host that still has the old key file: it must not sign with
    the old key after the new one took over (that would break the chain)."""
    other = tmp_path / "other-host"
    other.mkdir()
    shutil.copy(env.st.ledger.key_path, other / "ledger.key")
    stale = LedgerConfig(origin=env.st.ledger.origin, key_path=other / "ledger.key")
    _append(env, 3)
    rotation.rotate(env.st.sessions, env.st.ledger, actor=CLI, now=env.clock)
    _append(env, 3, start=3)
    with pytest.raises(SigningKeyError, match=r"rotated\s+on another host"), \
            transaction(env.st.sessions) as s:
        checkpoints.sign(s, stale, now=env.clock(), force=True)


def test_the_cli_sign_path_on_sqlite_drafts_with_both_keys(env: Env) -> None:
    """`sign_if_due` (the worker's path: a draft read without the write lock on SQLite)."""
    cfg = env.st.ledger
    old = cfg.signer.verifier
    _append(env, 3)
    _sign(env)
    new = keys.generate(old.name, avoid=[old])
    cfg.rotate(new)
    with transaction(env.st.sessions) as s:
        record(s, type=EventType.POLICY_LOADED, actor=Actor.system(), subject="test:x",
               time=env.clock.advance(seconds=5))
    sign_if_due(env.st.sessions, cfg, env.clock.advance(seconds=5))
    with env.st.sessions() as s:
        last = checkpoints.latest(s)
        assert last is not None
        assert open_checkpoint(last.note, [old, new.verifier])[1] == [old, new.verifier]
    assert cfg.ring().retired[-1].until == last.size


def test_rotation_is_refused_while_the_ledger_is_damaged(env: Env) -> None:
    _append(env, 3)
    _sign(env)
    with transaction(env.st.sessions) as s:
        s.add(LedgerFinding(idx=1, what="changed", found_at=env.clock()))
    before = env.st.ledger.key_path.read_text()
    with pytest.raises(LedgerCorruption, match="index 1"):
        rotation.rotate(env.st.sessions, env.st.ledger, actor=CLI, now=env.clock)
    assert env.st.ledger.key_path.read_text() == before


# ---------------------------------------------------------------- real commits


def test_rotation_on_a_real_database_with_the_worker_running(real_env: Env) -> None:
    """Real commits (on PostgreSQL events wait to be integrated): the worker's path signs
    before and after a rotation made by the command, and everything verifies."""
    env = real_env
    cfg = env.st.ledger
    old = cfg.signer.verifier
    _append(env, 5)
    integrate_all(env.st.sessions)
    sign_if_due(env.st.sessions, cfg, env.clock.advance(seconds=5))
    cli_cfg = LedgerConfig(origin=cfg.origin, key_path=cfg.key_path)
    done = rotation.rotate(env.st.sessions, cli_cfg, actor=CLI, now=env.clock)
    assert len(_sigs(done.checkpoint)) == 2
    _append(env, 5, start=5)
    integrate_all(env.st.sessions)
    sign_if_due(env.st.sessions, cfg, env.clock.advance(seconds=5))
    with env.st.sessions() as s:
        notes = list(s.execute(select(LedgerCheckpoint.note)
                               .order_by(LedgerCheckpoint.size)).scalars())
        assert integrity.first_bad(s, cfg.ring()) is None
        event = s.execute(select(LedgerEntry).where(
            LedgerEntry.type == str(EventType.LEDGER_KEY_ROTATED))).scalar_one()
    assert [len(_sigs(n)) for n in notes][-3:] == [1, 2, 1]
    assert event.idx is not None and event.idx < done.size
    report = _verify(_export(env), key=old)
    assert report.ok, report.problems
    assert report.rotations and report.keys[-1] == cfg.signer.verifier.encode()
    m = IntegrityMonitor(env.st.sessions, cfg, env.clock, EVERY_TIME)
    assert m.check() is None


def test_the_pages_say_the_cosigned_checkpoint_introduced_the_new_key(env: Env) -> None:
    _append(env, 3)
    _sign(env)
    rotation.rotate(env.st.sessions, env.st.ledger, actor=CLI, now=env.clock)
    with env.st.sessions() as s:
        state = evidence.state(s, env.st.ledger)
    assert state.ok, state.problems
    assert any("this checkpoint introduced the new key" in c for c in state.checks)
    page = login(env, "dave").get("/audit")
    verdict = page.text.split('id="ledger-verdict">')[1].split("</dd>")[0]
    assert "✔ verified" in verdict and "introduced the new key" in verdict, verdict


# ---------------------------------------------------------------- real processes


def test_a_running_server_signs_with_the_key_rotated_by_the_command(
        database: str, tmp_path: Path) -> None:
    """`accord serve` runs; `accord audit rotate-key` runs in another process; the server
    then signs with the new key (no restart), and its integrity monitor finds nothing."""
    import os
    import subprocess
    import time

    import httpx

    from accord.bootstrap import build_state
    from accord.detect.models import Alert
    from accord.identity import service as identity
    from accord.settings import Settings
    from tests.conftest import POLICY
    from tests.serverproc import ACCORD, Server

    config = tmp_path / "accord.yaml"
    config.write_text(POLICY, encoding="utf-8")
    env = {**os.environ, "ACCORD_DATABASE_URL": database, "ACCORD_DATA_DIR": str(tmp_path)}
    st = build_state(Settings.from_env(env), config_path=config, upgrade="always")
    with transaction(st.sessions) as session:
        tokens = {u: identity.issue(session, policy=st.policies.current, user=u,
                                    actor=Actor.system("cli"), now=st.now())[1]
                  for u in ("alice", "dave")}
    old = st.ledger.signer.verifier
    st.sessions.kw["bind"].dispose()
    server = Server(env, config, tmp_path / "server.log")
    server.start()
    try:
        def ask() -> None:
            r = httpx.post(server.url + "/api/v1/requests", json={
                "resource": "staging-db", "role": "read", "duration": "1h"},
                headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=10)
            assert r.status_code == 201, r.text

        def fresh() -> str:
            r = httpx.get(server.url + "/api/v1/audit/checkpoint", params={"fresh": "true"},
                          headers={"Authorization": f"Bearer {tokens['dave']}"}, timeout=10)
            assert r.status_code == 200, r.text
            return r.text

        ask()
        assert open_checkpoint(fresh(), [old])[1] == [old]
        done = subprocess.run([ACCORD, "audit", "rotate-key", "--config", str(config),
                               "--reason", "test"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert len(_sigs(done.stdout)) == 2
        ask()
        after = fresh()  # signed by the server process
        new = Verifier.decode(httpx.get(
            server.url + "/api/v1/audit/key", timeout=10,
            headers={"Authorization": f"Bearer {tokens['dave']}"}).text)
        assert new != old
        assert open_checkpoint(after, [old, new])[1] == [new]
        time.sleep(2.5)  # the server's integrity monitor looks every second
    finally:
        server.stop()
    st = build_state(Settings.from_env(env), config_path=config, upgrade="never")
    try:
        with st.sessions() as s:
            assert integrity.open_finding(s) is None
            assert s.execute(select(Alert).where(
                Alert.rule == "ledger_integrity")).first() is None
        assert "NOT signing" not in (tmp_path / "server.log").read_text()
        report = _verify(_export_state(st), key=old)
        assert report.ok, report.problems
        assert report.keys == [old.encode(), st.ledger.signer.verifier.encode()]
    finally:
        st.sessions.kw["bind"].dispose()


def _export_state(st: object) -> bytes:
    from accord.state import AppState

    assert isinstance(st, AppState)
    buf = io.BytesIO()
    ring = st.ledger.ring()
    if st.sessions.kw["bind"].dialect.name == "postgresql":
        integrate_all(st.sessions)
    with transaction(st.sessions) as session:
        cp = checkpoints.sign(session, st.ledger, now=st.now(), force=True)
    checkpoints.after_commit(st.ledger, cp)
    with st.sessions() as session:
        bundle.write(session, buf, origin=st.ledger.origin, key=ring.signer.verifier.encode(),
                     exported_at=st.now(), keys=[v.encode() for v in ring.chain])
    return buf.getvalue()
