"""ledger tables are append-only: triggers refuse UPDATE and DELETE

The single UPDATE allowed is the integrator's: a pending leaf (idx IS NULL) gets its
index and chain value, and nothing else about the row changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import hashlib

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NOTIFY_CHANNEL = "accord_ledger"  # = accord.ledger.service.NOTIFY_CHANNEL (migrations stay frozen)
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162: the root of an empty tree
FROZEN = ("ledger_nodes", "ledger_checkpoints")
ENTRY_UNCHANGED = (
    "OLD.idx IS NULL AND NEW.idx IS NOT NULL AND NEW.chain IS NOT NULL"
    " AND NEW.id = OLD.id AND NEW.leaf = OLD.leaf AND NEW.leaf_hash = OLD.leaf_hash"
    " AND NEW.type = OLD.type AND NEW.time = OLD.time AND NEW.actor = OLD.actor"
    " AND NEW.subject = OLD.subject AND NEW.resource IS NOT DISTINCT FROM OLD.resource"
)


def upgrade() -> None:
    # The head row exists from the start, so appenders only ever lock it, never race to create it.
    values = f"(1, 0, {_hex(EMPTY_ROOT)}, {_hex(b'')}, {_hex(bytes(32))}, CURRENT_TIMESTAMP)"
    op.execute(f"INSERT INTO ledger_head (id, size, root, frontier, chain, updated_at) "  # noqa: S608
               f"VALUES {values}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION accord_ledger_guard() RETURNS trigger AS $$
            BEGIN
              IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'ledger_entries' THEN
                -- only here do NEW and OLD have these columns
                IF {ENTRY_UNCHANGED} THEN
                  RETURN NEW;
                END IF;
              END IF;
              RAISE EXCEPTION 'the audit ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
            END $$ LANGUAGE plpgsql
        """)
        # Wake integrators when events commit, without a NOTIFY round trip per transaction.
        op.execute(f"""
            CREATE FUNCTION accord_ledger_notify() RETURNS trigger AS $$
            BEGIN
              PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
              RETURN NULL;
            END $$ LANGUAGE plpgsql
        """)
        op.execute("CREATE TRIGGER ledger_entries_notify AFTER INSERT ON ledger_entries"
                   " FOR EACH STATEMENT EXECUTE FUNCTION accord_ledger_notify()")
        for table in ("ledger_entries", *FROZEN):
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
                       " FOR EACH ROW EXECUTE FUNCTION accord_ledger_guard()")
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}"
                       " FOR EACH STATEMENT EXECUTE FUNCTION accord_ledger_guard()")
        return
    # SQLite: IS NOT DISTINCT FROM is spelled IS.
    allowed = ENTRY_UNCHANGED.replace("IS NOT DISTINCT FROM", "IS")
    op.execute("CREATE TRIGGER ledger_entries_no_update BEFORE UPDATE ON ledger_entries"
               f" WHEN NOT ({allowed}) BEGIN"
               " SELECT RAISE(ABORT, 'the audit ledger is append-only: UPDATE refused'); END")
    for table in ("ledger_entries", *FROZEN):
        op.execute(f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} BEGIN"
                   " SELECT RAISE(ABORT, 'the audit ledger is append-only: DELETE refused'); END")
    for table in FROZEN:
        op.execute(f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} BEGIN"
                   " SELECT RAISE(ABORT, 'the audit ledger is append-only: UPDATE refused'); END")


def _hex(value: bytes) -> str:
    if op.get_bind().dialect.name == "postgresql":
        return f"'\\x{value.hex()}'::bytea"
    return f"X'{value.hex()}'"


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in ("ledger_entries", *FROZEN):
            op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute("DROP TRIGGER ledger_entries_notify ON ledger_entries")
        op.execute("DROP FUNCTION accord_ledger_notify()")
        op.execute("DROP FUNCTION accord_ledger_guard()")
        return
    op.execute("DROP TRIGGER ledger_entries_no_update")
    for table in ("ledger_entries", *FROZEN):
        op.execute(f"DROP TRIGGER {table}_no_delete")
    for table in FROZEN:
        op.execute(f"DROP TRIGGER {table}_no_update")
