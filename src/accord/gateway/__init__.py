"""The gateway: one server per protocol on a protocol-neutral core.

Core (this package): connection tokens and the grant behind each (`tokens`), the server's
accept loop, live-session registry, grant watcher and refused-login budget (`server`),
the audit trail's records (`records`), spool (`spool`), writer (`audit`), shipper
(`shipper`) and their ledger events (`recording`), usage counters (`usage`), the prefork
parent (`prefork`), the connection plumbing (`link`), and the entry points (`cli`,
`views`). A protocol is a subpackage (`postgres/`) with its wire protocol, its data path and
a `GatewayServer` subclass; nothing in the core knows a protocol's bytes.
"""
