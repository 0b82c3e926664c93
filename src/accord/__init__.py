"""Accord: self-service access requests with a tamper-evident audit ledger."""

__version__ = "0.1.0"
