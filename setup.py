"""The one thing pyproject.toml cannot say: Accord's optional C speedup.

`accord.gateway.postgres._rows` is masking's row loop compiled (see its source). It is
optional, as MarkupSafe's and PyYAML's speedups are: where no C compiler or Python headers
are at hand, the build warns and Accord runs the same loop in Python (slower, same
output). ACCORD_PURE_PYTHON=1 skips it on purpose.
"""

import os

from setuptools import Extension, setup

ext_modules = [] if os.environ.get("ACCORD_PURE_PYTHON") == "1" else [
    Extension("accord.gateway.postgres._rows", ["src/accord/gateway/postgres/_rows.c"],
              optional=True, extra_compile_args=["-O2", "-Wall"]),
]

setup(ext_modules=ext_modules)
