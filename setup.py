"""The one thing pyproject.toml cannot say: Accord's optional C speedup.

`accord.gateway.postgres._rows` is masking's row loop compiled (see its source). It is
optional, as MarkupSafe's and PyYAML's speedups are: where no C compiler or Python headers
are at hand, the build warns and Accord runs the same loop in Python (slower, same
output). ACCORD_PURE_PYTHON=1 skips it on purpose.
"""

import hashlib
import os
from pathlib import Path

from setuptools import Extension, setup

ROWS = "src/accord/gateway/postgres/_rows.c"
# The source's sha256 goes into the module: a test finds an editable install's stale build.
source = hashlib.sha256((Path(__file__).parent / ROWS).read_bytes()).hexdigest() \
    if (Path(__file__).parent / ROWS).exists() else "unknown"

ext_modules = [] if os.environ.get("ACCORD_PURE_PYTHON") == "1" else [
    Extension("accord.gateway.postgres._rows", [ROWS], optional=True,
              define_macros=[("ROWS_SOURCE_SHA256", f'"{source}"')],
              extra_compile_args=["-O2", "-Wall"]),
]

setup(ext_modules=ext_modules)
