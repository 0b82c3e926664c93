"""The leak check catches what it should, and says where without saying the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.leakcheck.hooks import secret_value
from tests.leakcheck.scanner import MIN_LEN, Scanner

ROOT = Path(__file__).resolve().parents[2]


def test_the_scanner_finds_each_secret_anywhere_in_a_text() -> None:
    scanner = Scanner()
    token = "acc_" + "Zq9x-Lm2_" * 5
    scanner.add(token, "API token", "t1")
    scanner.add("hunter2hunter", "password", "t2")  # shorter than 2*K-1: looked for directly
    scanner.add("short", "password", "t3")  # too short to look for
    assert len(scanner) == 2 and len("short") < MIN_LEN
    for cut in range(12):  # every alignment against the 8-character probes
        text = "x" * cut + f"Authorization: Bearer {token}" + "y" * cut
        assert scanner.find(text) == [token]
    assert scanner.find(token[:-1]) == []  # a prefix is not the secret
    assert scanner.find(token) == [token]  # the whole text
    assert scanner.find("user=alice password=hunter2hunter") == ["hunter2hunter"]
    assert scanner.find("nothing here, not even short") == []


def test_what_of_a_secret_setting_is_secret() -> None:
    assert secret_value("postgresql://app:p%40ss-word-9@db:5432/accord") == [
        ("p%40ss-word-9", "password in a database URL"),
        ("p@ss-word-9", "password in a database URL")]
    assert secret_value("postgresql://postgres@127.0.0.1/accord") == []
    assert secret_value("https://hooks.slack.com/services/T0/B0/xyz") == [
        ("https://hooks.slack.com/services/T0/B0/xyz", "secret URL (webhook)")]
    assert secret_value("xoxb-123-abc") == [("xoxb-123-abc", "secret setting")]


INNER = '''
import logging, subprocess, sys
from cryptography.fernet import Fernet
from accord.provisioning.secrets import SecretBox
from accord.settings import Secret

def test_clean():
    Secret("postgresql://app:never-logged-pw@db/accord")
    logging.getLogger("accord.x").debug("connecting to db as app")

def test_leaks_at_debug():
    Secret("postgresql://app:debug-leaked-pw@db/accord")
    logging.getLogger("accord.db").debug("connecting to postgresql://app:debug-leaked-pw@db")

def test_leaks_into_a_subprocess_log(tmp_path):
    password = SecretBox(Fernet.generate_key()).derive("a gateway login")
    with (tmp_path / "server.log").open("wb") as log:
        subprocess.run([sys.executable, "-c", "import sys; print(sys.argv[1], file=sys.stderr)",
                        password], stdout=log, stderr=log, check=True)

def test_a_banner_shown_on_purpose_is_not_a_leak(tmp_path):
    from tests.leakcheck.plugin import intended_output
    password = SecretBox(Fernet.generate_key()).derive("a demo login")
    banner = f"Demo logins:\\n  alice {password}\\n"
    with (tmp_path / "demo.log").open("wb") as log:
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write(sys.argv[1])",
                        banner], stdout=log, stderr=log, check=True)
    intended_output(tmp_path / "demo.log", banner)

def test_a_subprocess_secret_in_its_own_stderr(tmp_path):
    code = ("import sys; from accord.settings import Secret; Secret('xoxb-minted-in-the-child');"
            " print('xoxb-minted-in-the-child', file=sys.stderr)")
    with (tmp_path / "child.log").open("wb") as log:
        subprocess.run([sys.executable, "-c", code], stderr=log, check=True)
'''


@pytest.mark.parametrize("select", ["clean", "all"])
def test_a_run_that_logs_a_secret_fails_and_names_it_without_showing_it(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, select: str) -> None:
    # the inner run is a run of its own: not this run's subprocess recorder
    monkeypatch.delenv("ACCORD_LEAKCHECK_DIR", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    pytester.makeconftest('pytest_plugins = ["tests.leakcheck.plugin"]\n')
    pytester.makepyfile(test_inner=INNER)
    args = ["-p", "no:cacheprovider", "-k", "clean"] if select == "clean" else []
    result = pytester.runpytest_subprocess(*args)
    out = result.stdout.str()
    if select == "clean":
        assert result.ret == 0, out
        assert "LEAK CHECK FAILED" not in out and "0 leak(s)" in out
        return
    assert result.ret == 1, out
    for line in [  # in any order
        "*SECRET LEAK CHECK FAILED*",
        "password in a database URL (created by test_inner.py::test_leaks_at_debug,*) "
        "appeared in log record accord.db DEBUG during test_inner.py::test_leaks_at_debug",
        "derived password (SecretBox.derive) (created by "
        "test_inner.py::test_leaks_into_a_subprocess_log,*) appeared in "
        "*server.log (stderr of `python* -c*`) during "
        "test_inner.py::test_leaks_into_a_subprocess_log",
        "secret setting (created by test_inner.py::test_a_subprocess_secret_in_its_own_stderr "
        "(a subprocess),*) appeared in *child.log (stderr of `python* -c*`) during*",
        "*5 passed*",
    ]:
        result.stdout.fnmatch_lines([line])
    assert "3 leak(s)" in out
    for secret in ("debug-leaked-pw", "xoxb-minted-in-the-child"):
        assert secret not in out
    assert "never-logged-pw" not in out
