"""notification preferences

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('notification_preferences',
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('channels', sa.JSON(), nullable=True),
    sa.Column('mode', sa.String(length=16), nullable=False),
    sa.Column('digest_hour', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('user', name=op.f('pk_notification_preferences'))
    )
    op.create_table('notification_digest_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_index', sa.BigInteger(), nullable=False),
    sa.Column('show_index', sa.BigInteger(), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=64), nullable=False),
    sa.Column('recipient', sa.String(length=64), nullable=False),
    sa.Column('approver', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('digest', sa.String(length=200), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_digest_items')),
    sa.UniqueConstraint('event_index', 'channel', 'recipient', name=op.f('uq_notification_digest_items_event_index'))
    )
    with op.batch_alter_table('notification_digest_items', schema=None) as batch_op:
        batch_op.create_index('ix_notification_digest_items_unsent', ['recipient'], unique=False, postgresql_where=sa.text('sent_at IS NULL'), sqlite_where=sa.text('sent_at IS NULL'))


def downgrade() -> None:
    with op.batch_alter_table('notification_digest_items', schema=None) as batch_op:
        batch_op.drop_index('ix_notification_digest_items_unsent', postgresql_where=sa.text('sent_at IS NULL'), sqlite_where=sa.text('sent_at IS NULL'))

    op.drop_table('notification_digest_items')
    op.drop_table('notification_preferences')
