"""Recordings kept in pack files (`gateway.ssh.recordings_dir`) by a real `accord gateway`
process: the rows hold where, not the bytes; the API serves and checks them like rows; an
edited pack fails the check; a server that does not see the directory says so."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from accord.gateway.models import GatewayRecording
from accord.gateway.ssh import views
from tests.gateway.ssh.conftest import World, gateway_process

pytestmark = pytest.mark.ssh


def test_recordings_in_pack_files_are_served_checked_and_an_edited_pack_is_caught(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packs = tmp_path / "packs"
    grant = world.grant("alice")
    with gateway_process(world, tmp_path, "--processes", "1",
                         ssh=f"chunk_interval: 200ms, recordings_dir: {packs}") as (port, _, _):
        r = world.ssh(world.token(grant), "echo packed-$((20+2)); exit 3", port=port)
        assert r.returncode == 3 and "packed-22" in r.stdout, r.stderr
        deadline = time.monotonic() + 30  # the gateway process's own shipper
        while not world.events("gateway.ssh_exec", grant["id"]):
            assert time.monotonic() < deadline, "the recording did not reach the ledger"
            time.sleep(0.05)
    digests = [e["data"]["sha256"] for e in world.events("gateway.ssh_chunk", grant["id"])]
    with world.env.st.sessions() as s:
        rows = s.execute(select(GatewayRecording).where(
            GatewayRecording.sha256.in_(digests))).scalars().all()
        assert len(rows) == len(digests) >= 2
        assert all(row.data is None and row.location for row in rows)
    (pack,) = packs.iterdir()
    assert all(row.location.startswith(pack.name + "@") for row in rows)  # type: ignore[union-attr]
    # The policy the gateway process ran with is the one in force here too.
    listed = world.env.get("alice", f"/api/v1/grants/{grant['id']}/ssh-sessions").json()
    (ch,) = listed[0]["channels"]
    assert ch["verified"] is True and ch["exit_status"] == 3
    blobs = {d: world.env.get("dave", f"/api/v1/recordings/{d}").content for d in digests}
    assert all(hashlib.sha256(b).hexdigest() == d for d, b in blobs.items())
    cast = world.env.get("alice", f"/api/v1/ssh-sessions/{listed[0]['session']}/channels/1/cast")
    assert cast.headers["x-accord-verified"] == "true" and "packed-22" in cast.text
    # An edit of the pack's bytes.
    edited = next(d for d, b in blobs.items() if b"packed-22" in b)
    pack.write_bytes(pack.read_bytes().replace(b"packed-22", b"packed-99"))
    listed = world.env.get("alice", f"/api/v1/grants/{grant['id']}/ssh-sessions").json()
    assert listed[0]["channels"][0]["verified"] is False
    assert "do not match" in " ".join(listed[0]["channels"][0]["problems"])
    assert world.env.get("dave", f"/api/v1/recordings/{edited}").content != blobs[edited]
    # A server that does not see the directory: missing, and it says where to look.
    monkeypatch.setattr(views, "packs_root", lambda st: None)
    r = world.env.get("dave", f"/api/v1/recordings/{edited}")
    assert r.status_code == 404 and "recordings_dir" in r.json()["detail"]
    listed = world.env.get("alice", f"/api/v1/grants/{grant['id']}/ssh-sessions").json()
    assert "missing" in " ".join(listed[0]["channels"][0]["problems"])
