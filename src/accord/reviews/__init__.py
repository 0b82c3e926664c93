"""Access reviews: periodic campaigns in which reviewers certify or revoke standing and
recurring access, with every decision in the ledger and a completion report."""
