"""tool-call requests: access_requests.kind (access | tool_call) and .details (for a tool
call held by the MCP gateway: the tool, its arguments' sha256, the grant, when it ran)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-10 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('access_requests') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), server_default='access',
                                   nullable=False))
        batch.add_column(sa.Column('details', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('access_requests') as batch:
        batch.drop_column('details')
        batch.drop_column('kind')
