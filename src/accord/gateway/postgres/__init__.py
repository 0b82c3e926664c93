"""The PostgreSQL protocol on the gateway's core: the wire protocol (`protocol`), the data
path of one session (`conversation`), statement classes (`scope`), the login upstream
(`upstream`, `scram`) and the server that ties them to the core (`proxy`)."""
