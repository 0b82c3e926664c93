"""`accord policy check` with a directory: a group both the file and the provider define is
an error; a name neither defines yet is a warning (the provider may push it later)."""

from __future__ import annotations

from pathlib import Path

import pytest

from accord import migrations
from accord.db import make_engine, make_sessionmaker, transaction, utcnow
from accord.directory.service import Change
from accord.ledger.events import Actor
from accord.policy.engine import Policy
from accord.policy.store import PolicyStore
from accord.spec.load import parse_policy_text
from tests.conftest import POLICY
from tests.policy.test_config import _cli

WITH_SCIM = POLICY.replace("accord: {admins: [admins], auditors: [auditors]}",
                           "accord: {admins: [admins], auditors: [auditors]}\n"
                           "identity: {scim: true}")


def test_policy_check_reads_the_directory(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'accord.db'}"
    monkeypatch.setenv("ACCORD_DATABASE_URL", url)
    engine = make_engine(url)
    migrations.upgrade(engine)
    store = PolicyStore(tmp_path / "accord.yaml", Policy(parse_policy_text(WITH_SCIM)))
    with transaction(make_sessionmaker(engine)) as s:
        change = Change(s, store=store, actor=Actor.scim("okta"), now=utcnow())
        change.create_group("oncall")
        change.finish()
    engine.dispose()

    Path("ok.yaml").write_text(WITH_SCIM.replace("steps: [{approvers: [leads]}]",
                                                 "steps: [{approvers: [oncall, ghosts]}]"),
                               encoding="utf-8")
    code, out = _cli(["policy", "check", "ok.yaml"])
    assert code == 0, out
    assert 'warning: "ghosts" is neither in accord.yaml nor (yet) in the directory' in out
    assert '"oncall"' not in out  # the provider's group: known
    assert _cli(["policy", "check", "--strict", "ok.yaml"])[0] == 1

    Path("clash.yaml").write_text(WITH_SCIM.replace("  auditors: [dave]\n",
                                                    "  auditors: [dave]\n  oncall: [bob]\n"),
                                  encoding="utf-8")
    code, out = _cli(["policy", "check", "clash.yaml"])
    assert code == 1, out
    assert ('clash.yaml: groups.oncall: the identity provider\'s directory also has a group '
            '"oncall"; a group has one source: rename one of them') in out
    assert _cli(["policy", "check", "--offline", "clash.yaml"])[0] == 0  # the file alone is fine
