"""Compliance reports: who had access, why, who approved and how, with ledger evidence."""
