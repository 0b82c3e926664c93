"""The durable job queue: leases kept alive by a heartbeat, retries, one run across workers.

Domains enqueue jobs in their own transactions (`service.enqueue`); each domain's
handlers live in its `scheduled.py`; `worker/` runs the loops that claim and run them.
"""
