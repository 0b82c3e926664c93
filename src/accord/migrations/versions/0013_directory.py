"""the directory: people and groups from the identity provider (SCIM, OIDC), the change log
every process catches up from, and SCIM clients' tokens (hashed)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 03:44:16.737464
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('directory_changes',
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_directory_changes'))
    )
    op.create_table('directory_groups',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('name_key', sa.String(length=200), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_directory_groups')),
    sa.UniqueConstraint('display_name', name=op.f('uq_directory_groups_display_name')),
    sa.UniqueConstraint('name_key', name=op.f('uq_directory_groups_name_key'))
    )
    with op.batch_alter_table('directory_groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_directory_groups_external_id'), ['external_id'], unique=False)

    op.create_table('directory_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_directory_state'))
    )
    # The one lock row every directory write takes first: present from the start, so the
    # first writes racing each other queue on it instead of inserting it twice.
    op.bulk_insert(sa.table('directory_state', sa.column('id', sa.Integer),
                            sa.column('seq', sa.Integer)), [{'id': 1, 'seq': 0}])
    op.create_table('directory_users',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('user_name', sa.String(length=200), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=True),
    sa.Column('display_name', sa.String(length=200), nullable=True),
    sa.Column('given_name', sa.String(length=200), nullable=True),
    sa.Column('family_name', sa.String(length=200), nullable=True),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('email_type', sa.String(length=32), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('manager_id', sa.String(length=36), nullable=True),
    sa.Column('department', sa.String(length=200), nullable=True),
    sa.Column('employee_number', sa.String(length=100), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['manager_id'], ['directory_users.id'], name=op.f('fk_directory_users_manager_id_directory_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_directory_users')),
    sa.UniqueConstraint('name', name=op.f('uq_directory_users_name'))
    )
    with op.batch_alter_table('directory_users', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_directory_users_email'), ['email'], unique=False)
        batch_op.create_index(batch_op.f('ix_directory_users_external_id'), ['external_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_directory_users_manager_id'), ['manager_id'], unique=False)

    op.create_table('scim_clients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_scim_clients')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_scim_clients_token_hash'))
    )
    op.create_table('directory_members',
    sa.Column('group_id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.String(length=36), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['directory_groups.id'], name=op.f('fk_directory_members_group_id_directory_groups'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['directory_users.id'], name=op.f('fk_directory_members_user_id_directory_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('group_id', 'user_id', name=op.f('pk_directory_members'))
    )
    with op.batch_alter_table('directory_members', schema=None) as batch_op:
        batch_op.create_index('ix_directory_members_user_id', ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('directory_members', schema=None) as batch_op:
        batch_op.drop_index('ix_directory_members_user_id')

    op.drop_table('directory_members')
    op.drop_table('scim_clients')
    with op.batch_alter_table('directory_users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_directory_users_manager_id'))
        batch_op.drop_index(batch_op.f('ix_directory_users_external_id'))
        batch_op.drop_index(batch_op.f('ix_directory_users_email'))

    op.drop_table('directory_users')
    op.drop_table('directory_state')
    with op.batch_alter_table('directory_groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_directory_groups_external_id'))

    op.drop_table('directory_groups')
    op.drop_table('directory_changes')
