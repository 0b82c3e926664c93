"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=64), nullable=True),
    sa.Column('replaced_by', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['replaced_by'], ['api_tokens.id'], name=op.f('fk_api_tokens_replaced_by_api_tokens')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_user'), ['user'], unique=False)

    op.create_table('grants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grants'))
    )
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_grants_request_id'), ['request_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_grants_resource'), ['resource'], unique=False)
        batch_op.create_index('ix_grants_status_ends_at', ['status', 'ends_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_grants_user'), ['user'], unique=False)

    op.create_table('ledger_checkpoints',
    sa.Column('size', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('root', sa.LargeBinary(length=32), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('size', name=op.f('pk_ledger_checkpoints'))
    )
    op.create_table('ledger_entries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('idx', sa.BigInteger(), nullable=True),
    sa.Column('type', sa.String(length=48), nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=64), nullable=True),
    sa.Column('leaf', sa.LargeBinary(), nullable=False),
    sa.Column('leaf_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('chain', sa.LargeBinary(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries'))
    )
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_entries_actor', ['actor'], unique=False)
        batch_op.create_index('ix_ledger_entries_pending', ['id'], unique=False, postgresql_where=sa.text('idx IS NULL'), sqlite_where=sa.text('idx IS NULL'))
        batch_op.create_index('ix_ledger_entries_resource', ['resource'], unique=False)
        batch_op.create_index('ix_ledger_entries_subject', ['subject'], unique=False)
        batch_op.create_index(batch_op.f('ix_ledger_entries_time'), ['time'], unique=False)
        batch_op.create_index('ix_ledger_entries_type', ['type'], unique=False)
        batch_op.create_index('uq_ledger_entries_idx', ['idx'], unique=True)

    op.create_table('ledger_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('root', sa.LargeBinary(length=32), nullable=False),
    sa.Column('frontier', sa.LargeBinary(), nullable=False),
    sa.Column('chain', sa.LargeBinary(length=32), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_head'))
    )
    op.create_table('ledger_nodes',
    sa.Column('level', sa.SmallInteger(), nullable=False),
    sa.Column('idx', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('level', 'idx', name=op.f('pk_ledger_nodes'))
    )
    op.create_table('ledger_sink_cursors',
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('position', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_ledger_sink_cursors'))
    )
    op.create_table('policy_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('loaded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_state'))
    )
    op.create_table('policy_versions',
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('source', sa.String(length=500), nullable=False),
    sa.Column('first_loaded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('first_loaded_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_policy_versions'))
    )
    op.create_table('access_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('requester', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=64), nullable=False),
    sa.Column('duration_seconds', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_via', sa.String(length=16), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pending_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision_reason', sa.Text(), nullable=True),
    sa.Column('workflow', sa.String(length=64), nullable=True),
    sa.Column('policy_version', sa.String(length=64), nullable=True),
    sa.Column('rule', sa.String(length=32), nullable=True),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('current_step', sa.Integer(), nullable=True),
    sa.Column('extends_grant_id', sa.Integer(), nullable=True),
    sa.Column('grant_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['extends_grant_id'], ['grants.id'], name=op.f('fk_access_requests_extends_grant_id_grants')),
    sa.ForeignKeyConstraint(['grant_id'], ['grants.id'], name=op.f('fk_access_requests_grant_id_grants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_access_requests'))
    )
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_access_requests_extends_grant_id'), ['extends_grant_id'], unique=False)
        batch_op.create_index('ix_access_requests_requester_id', ['requester', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_access_requests_resource'), ['resource'], unique=False)
        batch_op.create_index(batch_op.f('ix_access_requests_status'), ['status'], unique=False)
        batch_op.create_index('ix_access_requests_status_pending_until', ['status', 'pending_until'], unique=False)

    op.create_table('approvals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('approver', sa.String(length=64), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('via', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['access_requests.id'], name=op.f('fk_approvals_request_id_access_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approvals')),
    sa.UniqueConstraint('request_id', 'approver', name=op.f('uq_approvals_request_id'))
    )
    op.create_table('request_approvers',
    sa.Column('request_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['access_requests.id'], name=op.f('fk_request_approvers_request_id_access_requests')),
    sa.PrimaryKeyConstraint('request_id', 'step', 'username', name=op.f('pk_request_approvers'))
    )
    with op.batch_alter_table('request_approvers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_request_approvers_username'), ['username'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('request_approvers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_request_approvers_username'))

    op.drop_table('request_approvers')
    op.drop_table('approvals')
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_access_requests_status_pending_until')
        batch_op.drop_index(batch_op.f('ix_access_requests_status'))
        batch_op.drop_index(batch_op.f('ix_access_requests_resource'))
        batch_op.drop_index('ix_access_requests_requester_id')
        batch_op.drop_index(batch_op.f('ix_access_requests_extends_grant_id'))

    op.drop_table('access_requests')
    op.drop_table('policy_versions')
    op.drop_table('policy_state')
    op.drop_table('ledger_sink_cursors')
    op.drop_table('ledger_nodes')
    op.drop_table('ledger_head')
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_index('uq_ledger_entries_idx')
        batch_op.drop_index('ix_ledger_entries_type')
        batch_op.drop_index(batch_op.f('ix_ledger_entries_time'))
        batch_op.drop_index('ix_ledger_entries_subject')
        batch_op.drop_index('ix_ledger_entries_resource')
        batch_op.drop_index('ix_ledger_entries_pending', postgresql_where=sa.text('idx IS NULL'), sqlite_where=sa.text('idx IS NULL'))
        batch_op.drop_index('ix_ledger_entries_actor')

    op.drop_table('ledger_entries')
    op.drop_table('ledger_checkpoints')
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_grants_user'))
        batch_op.drop_index('ix_grants_status_ends_at')
        batch_op.drop_index(batch_op.f('ix_grants_resource'))
        batch_op.drop_index(batch_op.f('ix_grants_request_id'))

    op.drop_table('grants')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_user'))

    op.drop_table('api_tokens')
