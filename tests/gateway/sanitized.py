"""A pytest plugin (`-p tests.gateway.sanitized`): the C speedups as built with
AddressSanitizer and UndefinedBehaviorSanitizer (`test_sanitizers.py` builds them into
$ACCORD_SANITIZED), put in place of the installed ones before anything imports them."""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

MODULES = ("accord.gateway.postgres._rows", "accord.gateway.mysql._walk")

_where = Path(os.environ["ACCORD_SANITIZED"])
for _name in MODULES:
    _path = _where / (_name.rsplit(".", 1)[1] + str(sysconfig.get_config_var("EXT_SUFFIX")))
    _spec = importlib.util.spec_from_file_location(_name, _path)
    assert _spec is not None and _spec.loader is not None, _path
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    sys.modules[_name] = _module


def pytest_sessionfinish() -> None:
    """Say which builds the code under test really used (the outer test checks)."""
    from accord.gateway.mysql import conversation
    from accord.gateway.postgres import mask
    (_where / "used.txt").write_text("".join(
        f"{name} {getattr(module, '__file__', None)}\n"
        for name, module in (("_rows", mask._rows), ("_walk", conversation._walk))))
