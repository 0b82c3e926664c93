"""agent tokens: api_tokens.kind says whether a token was issued to a user or to an agent
(accord.yaml `agents:`)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-10 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), server_default='user',
                                   nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('api_tokens') as batch:
        batch.drop_column('kind')
