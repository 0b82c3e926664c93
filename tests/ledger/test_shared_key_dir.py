"""Replicas sharing the key's directory (a mounted secret) and a witness directory write
the remembered checkpoint and the witness copies at the same moments: no writer fails, no
reader sees half a note, and nobody reports a difference that is not there."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from accord.bootstrap import ledger_config
from accord.ledger import checkpoints
from accord.ledger.note import checkpoint_body, sign_note
from accord.policy.engine import Policy
from accord.settings import Settings
from accord.spec.load import parse_policy_text
from tests.conftest import POLICY


def _together(work: list[threading.Thread]) -> None:
    for t in work:
        t.start()
    for t in work:
        t.join(timeout=60)


def test_remembering_at_once_from_many_writers(tmp_path: Path) -> None:
    cfg = ledger_config(Settings.from_env({"ACCORD_DATA_DIR": str(tmp_path)}),
                        Policy(parse_policy_text(POLICY)))
    notes = [sign_note(checkpoint_body(cfg.origin, size, bytes([size]) * 32), [cfg.signer])
             for size in range(1, 9)]
    failures: list[BaseException] = []

    def remember(note: str) -> None:
        try:
            for _ in range(40):
                cfg.remember(note)
                cp = cfg.remembered()  # always a whole note, never half of one
                assert cp is not None
        except BaseException as exc:
            failures.append(exc)

    _together([threading.Thread(target=remember, args=(n,)) for n in notes])
    assert failures == []
    assert cfg.remembered() is not None
    assert [p.name for p in cfg.memory_path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_publishing_one_checkpoint_at_once_from_many_writers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    witness = tmp_path / "witness"
    note = "accord.local/ledger\n5\nAAAA\n\n\u2014 accord.local/ledger xyz\n"
    caplog.set_level(logging.CRITICAL, logger="accord.ledger")
    for size in range(1, 30):
        text = note.replace("\n5\n", f"\n{size}\n")
        _together([threading.Thread(target=checkpoints.publish, args=(witness, size, text))
                   for _ in range(6)])
        assert (witness / str(size)).read_text(encoding="utf-8") == text
    assert [r.getMessage() for r in caplog.records] == []
    assert sorted(p.name for p in witness.iterdir()) == sorted(str(s) for s in range(1, 30))
