"""gateway recordings: their bytes compressed with lz4 instead of pglz on PostgreSQL

pglz compressed a recording's text at about 165 MB/s in the shipper's inserts (the server's
CPU, on the gateway's cores when they share a machine); lz4 does it ten times as fast and a
little smaller. Rows stored before keep pglz: PostgreSQL reads both. A server built without
lz4 (or SQLite) keeps its default.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def _has_lz4() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    values = bind.execute(sa.text(
        "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
    )).scalar()
    return "lz4" in (values or [])


def upgrade() -> None:
    if _has_lz4():
        op.execute("ALTER TABLE gateway_recordings ALTER COLUMN data SET COMPRESSION lz4")


def downgrade() -> None:
    if _has_lz4():
        op.execute("ALTER TABLE gateway_recordings ALTER COLUMN data SET COMPRESSION DEFAULT")
