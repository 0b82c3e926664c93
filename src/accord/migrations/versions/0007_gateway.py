"""gateway

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'gateway_tokens',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('user', sa.String(length=64), nullable=False),
        sa.Column('resource', sa.String(length=64), nullable=False),
        sa.Column('grant_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_gateway_tokens')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_gateway_tokens_token_hash')),
    )
    op.create_index(op.f('ix_gateway_tokens_grant_id'), 'gateway_tokens', ['grant_id'])
    op.create_index(op.f('ix_gateway_tokens_expires_at'), 'gateway_tokens', ['expires_at'])
    op.create_table(
        'gateway_usage',
        sa.Column('grant_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('first_used_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('statement_count', sa.BigInteger(), nullable=False),
        sa.Column('violation_count', sa.BigInteger(), nullable=False),
        sa.Column('session_count', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('grant_id', name=op.f('pk_gateway_usage')),
    )
    op.create_table(
        'gateway_spool_marks',
        sa.Column('instance', sa.String(length=64), nullable=False),
        sa.Column('committed', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('instance', name=op.f('pk_gateway_spool_marks')),
    )


def downgrade() -> None:
    op.drop_table('gateway_spool_marks')
    op.drop_table('gateway_usage')
    op.drop_index(op.f('ix_gateway_tokens_expires_at'), table_name='gateway_tokens')
    op.drop_index(op.f('ix_gateway_tokens_grant_id'), table_name='gateway_tokens')
    op.drop_table('gateway_tokens')
