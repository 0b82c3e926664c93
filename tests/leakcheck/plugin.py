"""A pytest plugin: no secret a test created appears in any log of the run.

Records every secret (hooks.py: where Accord mints or is handed one, in this process and,
through site/sitecustomize.py, in every Python subprocess), captures

- every log record of this process at every level down to DEBUG, as `--log-level debug`
  would let through (loggers keep levels set explicitly: SQLAlchemy's WARN, and
  `accord.logs.QUIET`, which every Accord process sets), without changing what the real
  handlers receive;
- the stderr pytest captured for each test (print, StreamHandlers, inherited subprocesses);
- the files each subprocess writes its stderr to (`stderr=` a file, or STDOUT into one),
  and the stderr that `communicate()` returns for a pipe;

and scans them at the end of each test (and of the session) for every secret recorded so far.
Any hit fails the run: the summary names the secret's kind, the test that created it and
where it appeared (log record, file, captured stderr) and the test during which it did,
never the secret (a fingerprint at most).

Left out, each for a stated reason: the loggers of the tests' own HTTP client
(TEST_CLIENT_LOGGERS), and text a harness marks as shown on purpose (`intended_output`: the
demo's banner of its users' tokens).

Cheap: one dictionary probe per 8 characters of output (scanner.py). `--no-leak-check`
turns it off. With xdist each worker checks its own tests and the controller gathers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from accord import logs
from tests.leakcheck import hooks
from tests.leakcheck.scanner import Scanner, fingerprint

SITE = Path(__file__).resolve().parent / "site"
BETWEEN_TESTS = "(outside any test)"
FLUSH_AT = 4 << 20  # characters of log text buffered before a scan within a test
# Loggers of the tests' own HTTP client (starlette's TestClient on httpx2, which Accord never
# uses): they log the URL the test called, query string and all (an OIDC callback's state),
# which no Accord process writes anywhere.
TEST_CLIENT_LOGGERS = ("httpx2",)

# Attributes every LogRecord has; any other is an `extra` a formatter may print.
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


_ACTIVE: list[LeakCheck] = []


def intended_output(path: Path, text: str) -> None:
    """`text`, written to `path`, shows secrets on purpose (the demo's banner prints each
    demo user's new token on stderr, where its logs go too): it is left out of the scan,
    the rest of the file is not. Harnesses call this; tests never need to."""
    for check in _ACTIVE:
        check.intended.setdefault(str(Path(path).resolve()), []).append(text)


@dataclass(frozen=True)
class Finding:
    kind: str         # the secret's kind
    created_by: str   # the test (or process) that created it
    where: str        # the log record, file or capture it appeared in
    during: str       # the test running when it appeared
    fingerprint: str  # sha256 prefix of the secret, never the secret


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-leak-check", action="store_true",
                     help="do not check the run's logs for the secrets its tests created")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--no-leak-check"):
        return
    config.pluginmanager.register(LeakCheck(config), "accord-leakcheck")


class LeakCheck:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.scanner = Scanner()
        self.test = BETWEEN_TESTS
        self.findings: dict[tuple[str, str, str, str], Finding] = {}
        self.worker_findings: list[dict[str, str]] = []
        self.stats = {"secrets": 0, "chars": 0, "records": 0, "files": 0, "seconds": 0.0}
        self.buffer: list[tuple[str, str]] = []  # (where, text) of the current test
        self.buffered = 0
        self.files: dict[str, tuple[int, str]] = {}  # path -> (scanned up to, whose stderr)
        self.intended: dict[str, list[str]] = {}  # path -> texts shown on purpose
        self.subprocess_secrets: dict[Path, int] = {}  # file -> bytes read
        self.dir = Path(tempfile.mkdtemp(prefix="accord-leakcheck-"))
        self._env = {k: os.environ.get(k) for k in ("ACCORD_LEAKCHECK_DIR", "PYTHONPATH")}
        os.environ["ACCORD_LEAKCHECK_DIR"] = str(self.dir)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SITE), os.environ.get("PYTHONPATH")) if p)
        hooks.install(self.record)
        _ACTIVE.append(self)
        # the levels every Accord process sets (logs.configure) whatever its --log-level
        for name, level in logs.QUIET.items():
            logging.getLogger(name).setLevel(level)
        self._patch_logging()
        self._patch_subprocess()

    # -- recording --------------------------------------------------------------------------
    def record(self, secret: str, kind: str) -> None:
        if self.scanner.add(secret, kind, self.test):
            self.stats["secrets"] += 1

    def _ingest_subprocess_secrets(self) -> None:
        if not self.dir.is_dir():
            return
        for path in self.dir.iterdir():
            seen = self.subprocess_secrets.get(path, 0)
            with path.open("rb") as f:
                f.seek(seen)
                data = f.read()
            end = data.rfind(b"\n") + 1  # a line still being written waits
            self.subprocess_secrets[path] = seen + end
            for line in data[:end].splitlines():
                item = json.loads(line)
                origin = f"{self.test} (a subprocess)"
                if self.scanner.add(item["secret"], item["kind"], origin):
                    self.stats["secrets"] += 1

    # -- capturing --------------------------------------------------------------------------
    def _patch_logging(self) -> None:
        enabled, handle = logging.Logger.isEnabledFor, logging.Logger.handle
        clear = logging.Manager._clear_cache  # type: ignore[attr-defined]
        levels: dict[str, int] = {}
        check = self

        def debug_level(logger: logging.Logger) -> int:
            """The logger's level if the root's were DEBUG (`--log-level debug`)."""
            level = levels.get(logger.name)
            if level is None:
                node: logging.Logger | None = logger
                level = logging.DEBUG
                while node is not None and node is not logging.root:
                    if node.level:
                        level = node.level
                        break
                    node = node.parent
                levels[logger.name] = level
            return level

        def is_enabled_for(self: logging.Logger, level: int) -> bool:
            if enabled(self, level):
                return True
            if self.disabled or self.manager.disable >= level:
                return False
            return level >= debug_level(self)

        def handle_(self: logging.Logger, record: logging.LogRecord) -> None:
            if not record.name.startswith(TEST_CLIENT_LOGGERS):
                check.observe(record)
            if enabled(self, record.levelno):  # what the real handlers would have had
                handle(self, record)

        def clear_cache(manager: logging.Manager) -> None:
            levels.clear()
            clear(manager)

        logging.Logger.isEnabledFor = is_enabled_for  # type: ignore[method-assign]
        logging.Logger.handle = handle_  # type: ignore[method-assign]
        logging.Manager._clear_cache = clear_cache  # type: ignore[attr-defined]
        for logger in logging.Logger.manager.loggerDict.values():
            if isinstance(logger, logging.Logger):
                logger._cache.clear()  # type: ignore[attr-defined]

    def observe(self, record: logging.LogRecord) -> None:
        try:
            parts = [record.getMessage()]
        except Exception:  # a bad format string: what a handler would show
            parts = [str(record.msg), repr(record.args)]
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        extras = record.__dict__.keys() - _STANDARD
        parts.extend(repr(record.__dict__[k]) for k in extras)
        text = "\n".join(parts)
        self.stats["records"] += 1
        self.buffer.append((f"log record {record.name} {record.levelname}", text))
        self.buffered += len(text)
        if self.buffered > FLUSH_AT:
            self.scan_buffer()

    def _patch_subprocess(self) -> None:
        init, communicate = subprocess.Popen.__init__, subprocess.Popen.communicate
        check = self

        def popen_init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
            init(self, args, *a, **kw)
            target = kw.get("stderr")
            if target == subprocess.STDOUT:
                target = kw.get("stdout")
            argv = [args] if isinstance(args, str | bytes) else list(args)
            command = " ".join(Path(str(x)).name[:40] for x in argv[:2])
            self._leakcheck_command = command  # type: ignore[attr-defined]
            check.follow(target, command)

        def communicate_(self: subprocess.Popen[Any], *a: Any, **kw: Any) -> Any:
            out, err = communicate(self, *a, **kw)
            if err:
                text = err.decode(errors="replace") if isinstance(err, bytes) else err
                command = getattr(self, "_leakcheck_command", "?")
                check.buffer.append((f"stderr of `{command}` (communicate)", text))
                check.buffered += len(text)
            return out, err

        subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign]
        subprocess.Popen.communicate = communicate_  # type: ignore[method-assign]

    def follow(self, target: Any, command: str) -> None:
        """Scan, from now on, the file a subprocess writes its stderr into."""
        if target is None or (isinstance(target, int) and target < 0):
            return  # inherited (pytest captures it) or a pipe/DEVNULL constant
        try:
            fd = target if isinstance(target, int) else target.fileno()
            path = str(Path(f"/proc/self/fd/{fd}").readlink())
        except (OSError, AttributeError, ValueError):
            return
        if not path.startswith("/") or path == os.devnull or not Path(path).is_file():
            return
        if path not in self.files:
            self.files[path] = (0, command)
            self.stats["files"] += 1

    # -- scanning ---------------------------------------------------------------------------
    def _scan(self, where: str, text: str) -> None:
        self.stats["chars"] += len(text)
        for secret in self.scanner.find(text):
            rec = self.scanner.secrets[secret]
            key = (rec.kind, rec.origin, where, self.test)
            if key not in self.findings:
                for other in self.scanner.find(where):  # a command line may hold one too
                    where = where.replace(other, "***")
                self.findings[key] = Finding(rec.kind, rec.origin, where, self.test,
                                             fingerprint(secret))

    def scan_buffer(self) -> None:
        started = time.perf_counter()
        buffer, self.buffer, self.buffered = self.buffer, [], 0
        for where, text in buffer:
            self._scan(where, text)
        self.stats["seconds"] += time.perf_counter() - started

    def scan_files(self) -> None:
        started = time.perf_counter()
        for path, (offset, command) in list(self.files.items()):
            try:
                with Path(path).open("rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                del self.files[path]
                continue
            if data:
                self.files[path] = (offset + len(data), command)
                text = data.decode(errors="replace")
                for shown in self.intended.get(str(Path(path).resolve()), ()):
                    text = text.replace(shown, "")
                self._scan(f"{path} (stderr of `{command}`)", text)
        self.stats["seconds"] += time.perf_counter() - started

    def scan_all(self) -> None:
        self._ingest_subprocess_secrets()
        self.scan_buffer()
        self.scan_files()

    # -- pytest hooks -----------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        self.scan_all()  # what came between tests belongs to no test
        self.test = item.nodeid
        try:
            return (yield)
        finally:
            self.scan_all()
            self.test = BETWEEN_TESTS

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, "node") or not report.capstderr:
            return  # a report an xdist worker sent (it checked it itself), or nothing
        self.buffer.append((f"captured stderr ({report.when})", report.capstderr))
        self.buffered += len(report.capstderr)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {}).get("accord_leakcheck")
        if output:
            self.worker_findings.extend(output["findings"])
            for key, value in output["stats"].items():
                self.stats[key] += value

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.scan_all()
        shutil.rmtree(self.dir, ignore_errors=True)
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        mine = [asdict(f) for f in self.findings.values()]
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports
            workeroutput["accord_leakcheck"] = {"findings": mine, "stats": self.stats}
            return
        self.all_findings = mine + self.worker_findings
        if self.all_findings:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if getattr(self.config, "workeroutput", None) is not None:
            return
        findings = getattr(self, "all_findings", [])
        s = self.stats
        tr = terminalreporter
        if findings:
            tr.section("SECRET LEAK CHECK FAILED", sep="=", red=True, bold=True)
            for f in sorted(findings, key=lambda f: (f["during"], f["where"])):
                tr.line(f"{f['kind']} (created by {f['created_by']}, fingerprint "
                        f"{f['fingerprint']}) appeared in {f['where']} during {f['during']}")
        tr.line(f"leak check: {s['secrets']} secrets looked for in {s['records']} log records "
                f"and {s['chars'] / 1e6:.1f} M characters of output ({s['files']} subprocess "
                f"files), {s['seconds']:.1f} s; {len(findings)} leak(s)")


def iter_findings(config: pytest.Config) -> Iterator[dict[str, str]]:
    """The findings of a finished run (for tests of the check)."""
    plugin = config.pluginmanager.get_plugin("accord-leakcheck")
    yield from getattr(plugin, "all_findings", [])
