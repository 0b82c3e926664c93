"""ledger wake: writers NOTIFY the integrators only while they are idle (a NOTIFY at
commit serializes every committing transaction that sent one)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 01:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

# The channel, accord_ledger, is accord.ledger.service.NOTIFY_CHANNEL (migrations stay frozen).


def upgrade() -> None:
    op.create_table('ledger_wake',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('idle', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_wake'))
    )
    op.bulk_insert(sa.table('ledger_wake', sa.column('id', sa.Integer),
                            sa.column('idle', sa.Boolean)), [{'id': 1, 'idle': True}])
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite integrates at commit: nobody listens
    op.execute("""
        CREATE OR REPLACE FUNCTION accord_ledger_notify() RETURNS trigger AS $$
        BEGIN
          IF coalesce((SELECT idle FROM ledger_wake WHERE id = 1), true) THEN
            PERFORM pg_notify('accord_ledger', '');
          END IF;
          RETURN NULL;
        END $$ LANGUAGE plpgsql
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE OR REPLACE FUNCTION accord_ledger_notify() RETURNS trigger AS $$
            BEGIN
              PERFORM pg_notify('accord_ledger', '');
              RETURN NULL;
            END $$ LANGUAGE plpgsql
        """)
    op.drop_table('ledger_wake')
