"""web sessions remember the API token they were opened with

A session opened by pasting an API token ends when that token is revoked or expires.
Sessions opened by token before this revision do not know their token; the web ends
them (recorded) the next time they are used.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_web_sessions_token_id_api_tokens'),
                                    'api_tokens', ['token_id'], ['id'])
        batch_op.create_index(batch_op.f('ix_web_sessions_token_id'), ['token_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('web_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_web_sessions_token_id'))
        batch_op.drop_constraint(batch_op.f('fk_web_sessions_token_id_api_tokens'),
                                 type_='foreignkey')
        batch_op.drop_column('token_id')
