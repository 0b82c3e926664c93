"""tool-call requests: access_requests.details (for a tool call held by the MCP gateway:
the tool, its arguments' sha256, the grant, when it ran); `kind` (access | statement |
tool_call) came with statement reviews (0017)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-10 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('access_requests') as batch:
        batch.add_column(sa.Column('details', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('access_requests') as batch:
        batch.drop_column('details')
