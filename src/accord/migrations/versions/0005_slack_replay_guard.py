"""slack replay guard

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('slack_seen',
    sa.Column('signature', sa.String(length=80), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('signature', name=op.f('pk_slack_seen'))
    )
    with op.batch_alter_table('slack_seen', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_slack_seen_seen_at'), ['seen_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('slack_seen', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_slack_seen_seen_at'))

    op.drop_table('slack_seen')
