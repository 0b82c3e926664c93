"""grant provisioning

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('login', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('connection', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('secret_box', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('provisioned_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('deprovisioned_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_column('deprovisioned_at')
        batch_op.drop_column('provisioned_at')
        batch_op.drop_column('secret_box')
        batch_op.drop_column('connection')
        batch_op.drop_column('login')

