"""asyncssh, imported without its warning about DSA (cryptography warns on import; the
gateway never offers or accepts DSA keys)."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import asyncssh

__all__ = ["asyncssh"]
