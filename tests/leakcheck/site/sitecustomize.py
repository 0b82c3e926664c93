"""Loaded by every Python subprocess the tests start (the leak check puts this directory on
PYTHONPATH): records the secrets the subprocess mints (`accord serve --demo`'s tokens,
`accord token issue`, ...) for the test process to look for in its logs.

Does nothing unless ACCORD_LEAKCHECK_DIR is set.
"""

from __future__ import annotations

import os


def _start(directory: str) -> None:
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "hooks.py"
    spec = importlib.util.spec_from_file_location("accord_leakcheck_hooks", path)
    if spec is None or spec.loader is None:
        return
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    out = Path(directory) / f"secrets-{os.getpid()}.jsonl"

    def record(secret: str, kind: str) -> None:
        if len(secret) >= 8:
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, "secret": secret}) + "\n")

    hooks.install(record)


if os.environ.get("ACCORD_LEAKCHECK_DIR"):
    _start(os.environ["ACCORD_LEAKCHECK_DIR"])
