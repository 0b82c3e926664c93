"""The C speedups under AddressSanitizer and UndefinedBehaviorSanitizer.

`_rows.c` and `_walk.c` read bytes that come from database servers. Here both are built
again with `-fsanitize=address,undefined`, and the tests that drive them (their property
tests against the Python loops, and `test_c_arguments.py`'s arbitrary arguments) run in a
Python that loads those builds (`-p tests.gateway.sanitized`), with every object its own
allocation (`PYTHONMALLOC=malloc`), so a read past a buffer, a use after free or undefined
behaviour ends the run with the sanitizer's report. A canary first proves the set-up
catches a one-byte over-read of a `bytes` object.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"_rows": ("src/accord/gateway/postgres/_rows.c", "ROWS_SOURCE_SHA256"),
           "_walk": ("src/accord/gateway/mysql/_walk.c", "WALK_SOURCE_SHA256")}
SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))
FLAGS = ["-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         f"-I{sysconfig.get_path('include')}"]
CANARY = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
/* peek(data, i): data[i] without a bounds check, the bug the sanitizers are here for. */
static PyObject *peek(PyObject *self, PyObject *args) {
    Py_buffer b; Py_ssize_t i;
    if (!PyArg_ParseTuple(args, "y*n", &b, &i)) return NULL;
    int v = ((const unsigned char *)b.buf)[i];
    PyBuffer_Release(&b);
    return PyLong_FromLong(v);
}
static PyMethodDef methods[] = {{"peek", peek, METH_VARARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "canary", NULL, -1, methods};
PyMODINIT_FUNC PyInit_canary(void) { return PyModule_Create(&module); }
"""


def runtime(cc: str, name: str) -> str | None:
    found = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True,
                           text=True).stdout.strip()
    return found if Path(found).is_absolute() and Path(found).exists() else None


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The two modules built with the sanitizers, and the environment to load them in."""
    cc = shutil.which("gcc")
    asan = runtime(cc, "libasan.so") if cc else None
    ubsan = runtime(cc, "libubsan.so") if cc else None
    if cc is None or asan is None or ubsan is None:
        pytest.skip("gcc with libasan and libubsan is needed (Debian: gcc)")
    where = tmp_path_factory.mktemp("sanitized")
    for name, (source, macro) in SOURCES.items():
        digest = hashlib.sha256((ROOT / source).read_bytes()).hexdigest()
        subprocess.run([cc, *FLAGS, f'-D{macro}="{digest}"', str(ROOT / source),
                        "-o", str(where / (name + SUFFIX))], check=True)
    (where / "canary.c").write_text(CANARY)
    subprocess.run([cc, *FLAGS, str(where / "canary.c"), "-o", str(where / ("canary" + SUFFIX))],
                   check=True)
    env = {**os.environ, "LD_PRELOAD": f"{asan}:{ubsan}", "PYTHONMALLOC": "malloc",
           # CPython frees little at exit by design: leaks are not what this looks for.
           "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:abort_on_error=0",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
           "ACCORD_SANITIZED": str(where), "PYTHONPATH": str(ROOT)}
    return where, env


def test_the_set_up_catches_a_read_past_a_bytes_object(
        sanitized: tuple[Path, dict[str, str]]) -> None:
    where, env = sanitized
    code = "import sys; sys.path.insert(0, sys.argv[1]); import canary; " \
           "print(canary.peek(b'abcdef', 5)); canary.peek(b'abcdef', 8)"
    run = subprocess.run([sys.executable, "-c", code, str(where)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "102"  # in bounds: read as usual
    assert run.returncode != 0
    assert "heap-buffer-overflow" in run.stderr, run.stderr[-2000:]


def test_the_c_loops_pass_their_tests_under_the_sanitizers(
        sanitized: tuple[Path, dict[str, str]]) -> None:
    where, env = sanitized
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.gateway.sanitized", "-p", "no:xdist",
         "-p", "no:cacheprovider", "-q", "-x",
         "tests/gateway/test_c_arguments.py", "tests/gateway/test_masking.py",
         "tests/gateway/mysql/test_protocol.py",
         # The C loops' tests only: not their Python twins ([python]), nor the databases'.
         "-k", "(compiled or not python) and not sqlite and not postgresql"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (run.stdout[-3000:] + run.stderr[-3000:])
    assert run.returncode == 0, tail
    assert "ERROR: AddressSanitizer" not in run.stderr and "runtime error" not in run.stderr
    used = (where / "used.txt").read_text().splitlines()
    # The runs used the sanitized builds, not the installed ones.
    assert sorted(used) == sorted(f"{name} {where / (name + SUFFIX)}" for name in SOURCES)
    assert " passed" in run.stdout and " failed" not in run.stdout
