"""The SSH protocol's front on the gateway's core (asyncssh): users log in as USER+RESOURCE
with a connection token, the gateway logs in upstream with the resource's key as the login
of the granted role, and records every channel in asciicast v2 chunks."""

from __future__ import annotations

import warnings

# asyncssh imports DSA support from cryptography, which warns about it on import; the
# gateway never offers or accepts DSA keys.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh

__all__ = ["asyncssh"]
