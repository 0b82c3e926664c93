"""How recording chunks are stored: their bytes by sha256, compressed with lz4 on
PostgreSQL (migration 0021; pglz cost ten times the server's CPU on recorded text)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from accord.db import make_engine
from accord.gateway.models import GatewayRecording
from accord.gateway.recording import blob_insert


def test_a_chunk_is_kept_once_and_compressed_with_lz4(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        with engine.begin() as conn:
            lz4 = "lz4" in (conn.execute(text(
                "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
            )).scalar() or [])
            line = b'[0.5,"o","2026-12-06T01:42:15Z web-1 nginx: GET /api/v1/orders 200\\r\\n"]\n'
            chunk = line * 4000
            digest = hashlib.sha256(chunk).hexdigest()
            row = {"sha256": digest, "size": len(chunk), "data": chunk,
                   "created_at": datetime.now(UTC)}
            conn.execute(blob_insert("postgresql"), [row, row])  # the same bytes: kept once
            kept = conn.execute(select(GatewayRecording.data)
                                .where(GatewayRecording.sha256 == digest)).scalars().all()
            assert kept == [chunk]
            method = conn.execute(text(
                "SELECT pg_column_compression(data) FROM gateway_recordings WHERE sha256 = :d"
            ), {"d": digest}).scalar()
            conn.execute(text("DELETE FROM gateway_recordings WHERE sha256 = :d"), {"d": digest})
        if not lz4:
            pytest.skip("this PostgreSQL was built without lz4")
        assert method == "lz4"
    finally:
        engine.dispose()
