"""The PostgreSQL gateway: a protocol v3 proxy that enforces grants and audits every statement."""
