"""`accord.yaml`: its schema, one module per section (`resources`, `workflows`, `gateway`, ...;
`file.PolicyFile` is the whole), its cross-checks (`checks`) and its reading (`load`)."""
