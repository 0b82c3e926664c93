"""statement reviews: requests of kind `statement` (one exact statement, run once through
the gateway) and what each is about

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False,
                                      server_default='access'))
    op.create_table(
        'statement_reviews',
        sa.Column('request_id', sa.Integer(), nullable=False),
        sa.Column('grant_id', sa.Integer(), nullable=False),
        sa.Column('session', sa.String(length=64), nullable=False),
        sa.Column('protocol', sa.String(length=16), nullable=False),
        sa.Column('statement', sa.Text(), nullable=False),
        sa.Column('params', sa.JSON(), nullable=True),
        sa.Column('param_count', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('rule', sa.String(length=64), nullable=False),
        sa.Column('window_seconds', sa.Integer(), nullable=False),
        sa.Column('run_by', sa.DateTime(timezone=True), nullable=True),
        sa.Column('executed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('executed_session', sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(['request_id'], ['access_requests.id'],
                                name=op.f('fk_statement_reviews_request_id_access_requests')),
        sa.ForeignKeyConstraint(['grant_id'], ['grants.id'],
                                name=op.f('fk_statement_reviews_grant_id_grants')),
        sa.PrimaryKeyConstraint('request_id', name=op.f('pk_statement_reviews')),
    )
    op.create_index('ix_statement_reviews_sha256', 'statement_reviews', ['sha256'])


def downgrade() -> None:
    op.drop_index('ix_statement_reviews_sha256', table_name='statement_reviews')
    op.drop_table('statement_reviews')
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.drop_column('kind')
