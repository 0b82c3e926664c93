"""The one thing pyproject.toml cannot say: Accord's optional C speedups.

`accord.gateway.postgres._rows` is masking's row loop compiled, `accord.gateway.mysql._walk`
the MySQL conversation's walk over a result (see their sources). They are
optional, as MarkupSafe's and PyYAML's speedups are: where no C compiler or Python headers
are at hand, the build warns and Accord runs the same loop in Python (slower, same
output). ACCORD_PURE_PYTHON=1 skips it on purpose.
"""

import hashlib
import os
from pathlib import Path

from setuptools import Extension, setup

ROWS = "src/accord/gateway/postgres/_rows.c"
WALK = "src/accord/gateway/mysql/_walk.c"


def sha256(path: str) -> str:
    """The source's sha256 goes into the module: a test finds an editable install's stale
    build."""
    source = Path(__file__).parent / path
    return hashlib.sha256(source.read_bytes()).hexdigest() if source.exists() else "unknown"


ext_modules = [] if os.environ.get("ACCORD_PURE_PYTHON") == "1" else [
    Extension("accord.gateway.postgres._rows", [ROWS], optional=True,
              define_macros=[("ROWS_SOURCE_SHA256", f'"{sha256(ROWS)}"')],
              extra_compile_args=["-O2", "-Wall"]),
    Extension("accord.gateway.mysql._walk", [WALK], optional=True,
              define_macros=[("WALK_SOURCE_SHA256", f'"{sha256(WALK)}"')],
              extra_compile_args=["-O2", "-Wall"]),
]

setup(ext_modules=ext_modules)
