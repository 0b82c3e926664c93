"""gateway recordings: a chunk's bytes may live in a pack file instead of the row

With `gateway.ssh.recordings_dir` set, a shipper appends chunks to pack files under that
directory (`accord.gateway.packs`) and the row keeps where (`location`, `name@offset`)
instead of the bytes (`data` null). Rows stored before keep their bytes.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gateway_recordings") as batch:
        batch.add_column(sa.Column("location", sa.String(256), nullable=True))
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM gateway_recordings WHERE data IS NULL")
    with op.batch_alter_table("gateway_recordings") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("location")
