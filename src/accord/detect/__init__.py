"""Detectors over the ledger, the alerts they raise, and break-glass oversight."""
