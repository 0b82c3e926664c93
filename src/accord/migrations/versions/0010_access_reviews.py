"""access reviews

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('review_campaigns',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('definition', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('started_by', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('policy_version', sa.String(length=64), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_campaigns'))
    )
    with op.batch_alter_table('review_campaigns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_review_campaigns_status'), ['status'], unique=False)
        batch_op.create_index('ix_review_campaigns_definition_started', ['definition', 'started_at'], unique=False)
        batch_op.create_index('uq_review_campaigns_open', ['definition'], unique=True,
                              sqlite_where=sa.text("status = 'open'"),
                              postgresql_where=sa.text("status = 'open'"))
    op.create_table('review_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=64), nullable=False),
    sa.Column('standing', sa.Boolean(), nullable=False),
    sa.Column('period_grants', sa.Integer(), nullable=False),
    sa.Column('grant_ids', sa.JSON(), nullable=False),
    sa.Column('request_ids', sa.JSON(), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('decided_by', sa.String(length=64), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decided_via', sa.String(length=16), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('revoked_grant_ids', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['review_campaigns.id'], name=op.f('fk_review_entries_campaign_id_review_campaigns')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_review_entries'))
    )
    with op.batch_alter_table('review_entries', schema=None) as batch_op:
        batch_op.create_index('uq_review_entries_key', ['campaign_id', 'user', 'resource', 'role'], unique=True)
    op.create_table('review_reviewers',
    sa.Column('entry_id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['review_campaigns.id'], name=op.f('fk_review_reviewers_campaign_id_review_campaigns')),
    sa.ForeignKeyConstraint(['entry_id'], ['review_entries.id'], name=op.f('fk_review_reviewers_entry_id_review_entries')),
    sa.PrimaryKeyConstraint('entry_id', 'username', name=op.f('pk_review_reviewers'))
    )
    with op.batch_alter_table('review_reviewers', schema=None) as batch_op:
        batch_op.create_index('ix_review_reviewers_username', ['username', 'campaign_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('review_reviewers', schema=None) as batch_op:
        batch_op.drop_index('ix_review_reviewers_username')
    op.drop_table('review_reviewers')
    with op.batch_alter_table('review_entries', schema=None) as batch_op:
        batch_op.drop_index('uq_review_entries_key')
    op.drop_table('review_entries')
    with op.batch_alter_table('review_campaigns', schema=None) as batch_op:
        batch_op.drop_index('uq_review_campaigns_open')
        batch_op.drop_index('ix_review_campaigns_definition_started')
        batch_op.drop_index(batch_op.f('ix_review_campaigns_status'))
    op.drop_table('review_campaigns')
