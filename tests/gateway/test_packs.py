"""Recording chunks in pack files (`gateway.ssh.recordings_dir`): appended and fsynced
before their round commits, read back by location, a new pack past `PACK_BYTES`, and
nothing read from outside the directory or past a pack's end."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from accord.gateway import packs
from accord.spec.gateway import GatewaySpec


def blobs(n: int, size: int = 1000) -> dict[str, bytes]:
    out = {}
    for _ in range(n):
        blob = os.urandom(size)
        out[hashlib.sha256(blob).hexdigest()] = blob
    return out


def test_chunks_are_read_back_from_where_they_were_appended(tmp_path: Path) -> None:
    writer = packs.PackWriter(tmp_path / "packs", "abc123")
    first, second = blobs(3), blobs(600, 10)  # more buffers than one writev takes
    where = writer.append(first) | writer.append(second)
    writer.close()
    for digest, blob in (first | second).items():
        assert packs.read(tmp_path / "packs", where[digest], len(blob)) == blob
    (pack,) = (tmp_path / "packs").iterdir()
    assert pack.name.startswith("abc123-") and pack.name.endswith(".pack")
    # What was typed and shown: readable by the gateway's user only.
    assert pack.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "packs").stat().st_mode & 0o777 == 0o700
    assert pack.stat().st_size == sum(map(len, (first | second).values()))


def test_a_new_pack_is_begun_past_its_size(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packs, "PACK_BYTES", 2500)
    writer = packs.PackWriter(tmp_path, "gw")
    where = {}
    for _ in range(4):
        where |= writer.append(blobs(1))
    writer.close()
    names = {loc.rpartition("@")[0] for loc in where.values()}
    assert len(names) == 2 and len(list(tmp_path.iterdir())) == 2  # 3000 bytes, then 1000


@pytest.mark.parametrize("location", [
    "../secret.pack@0", "/etc/passwd@0", "gw-1.pack@-1", "gw-1.pack@x", "gw-1.pack",
    "gw-1.txt@0", "missing.pack@0", "gw-1.pack@4000", "gw-1.pack@\u00b2", "gw-1.pack@1@2"])
def test_nothing_is_read_from_outside_the_directory_or_past_a_pack(
        tmp_path: Path, location: str) -> None:
    (tmp_path / "gw-1.pack").write_bytes(b"x" * 4000)
    (tmp_path.parent / "secret.pack").write_bytes(b"s" * 10)
    assert packs.read(tmp_path, location, 10) is None


def test_no_directory_configured_reads_nothing(tmp_path: Path) -> None:
    assert packs.read(None, "gw-1.pack@0", 1) is None


def test_the_directory_is_relative_to_the_data_directory(tmp_path: Path) -> None:
    def spec(where: str | None) -> GatewaySpec:
        return GatewaySpec.model_validate({"ssh": {"recordings_dir": where}} if where
                                          else {"ssh": {}})

    assert packs.root(tmp_path, spec("recordings")) == tmp_path / "recordings"
    assert packs.root(tmp_path, spec("/srv/accord/recordings")) == \
        Path("/srv/accord/recordings")
    assert packs.root(tmp_path, spec(None)) is None
    assert packs.root(tmp_path, GatewaySpec()) is None  # no SSH front
    assert packs.root(tmp_path, None) is None
