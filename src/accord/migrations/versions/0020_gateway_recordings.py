"""gateway recordings: the bytes of SSH session recording chunks, by sha256; and the public
keys users registered for the SSH gateway

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-09 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'gateway_recordings',
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('size', sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('sha256', name=op.f('pk_gateway_recordings')),
    )
    op.create_table(
        'gateway_ssh_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('user', sa.String(length=64), nullable=False),
        sa.Column('fingerprint', sa.String(length=128), nullable=False),
        sa.Column('public_key', sa.String(length=16384), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gateway_ssh_keys')),
        sa.UniqueConstraint('fingerprint', name=op.f('uq_gateway_ssh_keys_fingerprint')),
    )
    op.create_index(op.f('ix_gateway_ssh_keys_user'), 'gateway_ssh_keys', ['user'])


def downgrade() -> None:
    op.drop_index(op.f('ix_gateway_ssh_keys_user'), table_name='gateway_ssh_keys')
    op.drop_table('gateway_ssh_keys')
    op.drop_table('gateway_recordings')
