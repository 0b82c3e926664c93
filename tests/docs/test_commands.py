"""Every command in a ```sh block of README.md and docs/*.md runs as written against the demo.

The convention: a `sh` block holds commands a reader runs, in order, in a shell where the
demo's printed `export` lines ran (ACCORD_URL and alice's ACCORD_TOKEN, ACCORD_DATA_DIR and
ACCORD_CONFIG) and `.venv` is active; output and other text go in plain blocks. The docs
write what the demo prints as `<bob's token>` and `acg_…` (a gateway token `accord connect`
printed), the demo's URL as http://127.0.0.1:8000 and its gateway's port as 6432, and ids
as a fresh demo gives them (the first request filed is 10): this test substitutes the
values of its own demo, and the ids the commands before printed. Each command must exit 0
(or as EXPECT says, with the output it names); SKIP lists the few that cannot run here,
each with why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import PG_ADMIN_URL, REQUIRE_PG, _pg_reachable
from tests.docs import warm_cli
from tests.serverproc import Demo, demo_postgres_lock

ROOT = Path(__file__).resolve().parents[2]
FILES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]

# (file, the command's start) -> why it is not run here.
SKIP = {
    ("README.md", "./scripts/demo"): "starts the demo: this test runs the same `accord serve "
                                     "--demo`",
    ("README.md", "./scripts/test"): "the test suite itself",
    ("README.md", "accord serve --port 8000"): "a second server on the demo's port",
    ("README.md", "accord worker"): "runs until stopped; the demo's server runs the same "
                                    "jobs in its process",
    ("docs/gateway.md", "source .venv/bin/activate"): "this test runs with .venv's accord on "
                                                      "PATH",
    ("README.md", "accord notify prefs --channels slack"):
        "needs Slack configured (notify.slack); the demo sends no messages",
    ("docs/notifications.md", "accord notify prefs --channels slack"):
        "needs Slack configured (notify.slack); the demo sends no messages",
    ("docs/ledger.md", "pg_dump "): "backs up a PostgreSQL installation; "
                                     "tests/ledger/test_backup.py runs the procedure",
    ("docs/ledger.md", "createdb "): "restores into a new database (Accord stopped); "
                                     "tests/ledger/test_backup.py runs the procedure",
    ("docs/ledger.md", "pg_restore "): "restores into a new database (Accord stopped); "
                                       "tests/ledger/test_backup.py runs the procedure",
    ("docs/ledger.md", "sqlite3 "): "backs up and restores a SQLite file (the restore with "
                                    "Accord stopped); tests/ledger/test_backup.py runs it",
    ("docs/ledger.md", "accord audit accept-restore"): "needs a restore that lost the "
                                                       "ledger's tail; "
                                                       "tests/ledger/test_backup.py makes one",
    ("docs/ledger.md", "accord audit verify --bundle ledger.bundle --key accord.pub --witness"):
        "needs a witness directory (ledger.witness_dir, another machine's disk); the demo "
        "keeps none",
}
VERIFIED = r"OK: \d+ entries of \S+ verified against \d+ signed checkpoints"
# (file, the command's start) -> (exit status, a regex its output must match).
EXPECT = {
    ("README.md", "accord policy test"): (0, r"\n\d+ passed, 0 failed\n"),
    ("README.md", "accord policy replay"): (0, r"Replayed \d+ requests filed since .*\n"
                                               r"\d+ would change: outcome [1-9]"),
    ("README.md", "accord policy explain"): (0, r"Reproduced: denied \(workflow prod, rule "
                                                r"auto_deny\)  ✔ reproduced"),
    ("README.md", "curl -s -X POST"): (0, r'"version":\s*"[0-9a-f]{64}"'),  # the reload
    ("README.md", "accord request create"): (0, r"request \d+ \(alice: orders-db/read for "
                                                r"1h30m\): pending"),
    ("README.md", "accord grant reveal"): (0, r"password: \S+"),
    ("README.md", "accord policy check"): (0, r"accord\.yaml: ok: 7 users, 6 groups, 3 "
                                              r"resources, 2 workflows, 1 agent; version "
                                              r"[0-9a-f]{64}"),
    ("README.md", "accord audit verify --bundle"): (0, VERIFIED),
    ("README.md", "accord audit verify --url"): (0, VERIFIED),
    ("README.md", "curl "): (0, r'"status":\s*"pending"'),
    ("docs/gateway.md", "PGPASSWORD='acg_…' psql 'host=127.0.0.1 port=6432 dbname=orders-db "
                        "user=alice sslmode=disable' -c 'SELECT"): (0, r"ACME Corp"),
    ("docs/gateway.md", "PGPASSWORD='acg_…' psql 'host=127.0.0.1 port=6432 dbname=orders-db "
                        "user=alice sslmode=disable' -c \"UPDATE"):
        (1, r"role read on orders-db may not run write statements"),
    ("docs/ledger.md", "accord audit verify --bundle ledger.bundle --key accord.pub --pin"):
        (0, VERIFIED),
}
FOLLOW = {("README.md", "accord audit tail -f")}  # run until it printed an event, then stopped


@dataclass
class Command:
    file: str
    line: int
    text: str

    def matches(self, table: Any) -> Any:
        for (file, start), value in (table.items() if isinstance(table, dict)
                                     else ((k, k) for k in table)):
            if file == self.file and self.text.startswith(start):
                return value
        return None


def commands(file: str) -> list[list[Command]]:
    """The `sh` blocks of `file`: their commands (continued lines joined)."""
    blocks: list[list[Command]] = []
    lines = (ROOT / file).read_text(encoding="utf-8").splitlines()
    block: list[Command] | None = None
    pending = ""
    start = 0
    for no, line in enumerate(lines, 1):
        if block is None:
            if line.strip() == "```sh":
                block = []
            continue
        if line.startswith("```"):
            blocks.append(block)
            block = None
            continue
        if not pending:
            start = no
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        text = (pending + line).strip()
        pending = ""
        if text and not text.startswith("#"):
            block.append(Command(file, start, text))
    return blocks


@dataclass
class Reader:
    """One reader working through one file against the demo, remembering what it saw."""

    demo: Demo
    gateway_port: int
    cwd: Path
    bin: Path  # first on PATH: the warm `accord` (warm_cli.py)
    request: int | None = None
    gateway_token: str | None = None
    token_id: int | None = None
    campaign: int | None = None
    ran: list[str] = field(default_factory=list)

    def api(self, path: str) -> Any:
        r = httpx.get(self.demo.url + path, headers=self.demo.headers("dave"), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def settle(self) -> None:
        """A person types slower than the worker provisions: wait for the last request's
        grant to leave `provisioning` before the next command (polling another process)."""
        if self.request is None:
            return
        deadline = time.monotonic() + 20
        while (grant := self.api(f"/api/v1/requests/{self.request}").get("grant")) \
                and grant["status"] == "provisioning":
            assert time.monotonic() < deadline, f"grant {grant['id']} stayed provisioning"
            time.sleep(0.1)

    def substitute(self, text: str, env: dict[str, str]) -> str:
        text = text.replace("http://127.0.0.1:8000", self.demo.url)
        text = re.sub(r"<(\w+)'s token>", lambda m: self.demo.tokens[m.group(1)], text)
        text = text.replace("port=6432", f"port={self.gateway_port}")
        if "acg_…" in text:
            assert self.gateway_token, "acg_… before any `accord connect`"
            text = text.replace("acg_…", self.gateway_token)

        def request_id(m: re.Match[str]) -> str:
            assert self.request is not None, f"{m.group(0)} before any request was filed"
            return f"{m.group(1)}{self.request}"

        text = re.sub(r"(accord request (?:approve|deny|show|extend|relinquish|cancel|review) )"
                      r"\d+", request_id, text)
        if m := re.search(r"accord grant (?:reveal|show|revoke|extend) (\d+)", text):
            assert self.request is not None
            grant = self.api(f"/api/v1/requests/{self.request}")["grant"]
            text = text[:m.start(1)] + str(grant["id"]) + text[m.end(1):]
        if m := re.search(r"accord token revoke (\d+)", text):
            assert self.token_id is not None
            text = text[:m.start(1)] + str(self.token_id) + text[m.end(1):]
        if m := re.search(r"accord review (?:show|report|certify|revoke) (\d+)((?: \d+)*)",
                          text):
            assert self.campaign is not None
            ids = m.group(2).split()
            if ids:  # entries: the next ones this reader may decide, in order
                token = env["ACCORD_TOKEN"]
                entries = httpx.get(f"{self.demo.url}/api/v1/reviews/{self.campaign}",
                                    params={"status": "pending", "mine": "true"},
                                    headers={"Authorization": f"Bearer {token}"},
                                    timeout=10).json()["entries"]
                mine = [str(e["id"]) for e in entries if e.get("can_decide")]
                assert len(mine) >= len(ids), (text, entries)
                ids = mine[:len(ids)]
            text = (text[:m.start(1)] + " ".join([str(self.campaign), *ids])
                    + text[m.end(2):])
        return text

    def observe(self, text: str, out: str) -> None:
        if text.startswith("accord request create") and (m := re.search(r"request (\d+)", out)):
            self.request = int(m.group(1))
        if text.startswith("curl ") and (m := re.search(r'^\{"id":\s*(\d+)', out)):
            self.request = int(m.group(1))
        if m := re.search(r"PGPASSWORD='(acg_[^']+)'", out):
            self.gateway_token = m.group(1)
        if text.startswith("accord token issue") and (m := re.search(r"token (\d+)", out)):
            self.token_id = int(m.group(1))
        if text.startswith("accord review start") and (m := re.search(r"review #(\d+)", out)):
            self.campaign = int(m.group(1))

    def run_block(self, block: list[Command]) -> None:
        env = self.demo.client_env("alice")  # a shell where the demo's export lines ran
        env["PATH"] = f"{self.bin}{os.pathsep}{env['PATH']}"
        for cmd in block:
            if (why := cmd.matches(SKIP)) is not None:
                self.ran.append(f"skipped {cmd.file}:{cmd.line}: {why}")
                continue
            tools = {w for w in re.findall(r"(?:^|\| *)(\w+)", cmd.text) if w in ("jq", "curl")}
            if missing := [t for t in tools if shutil.which(t) is None]:
                self.ran.append(f"skipped {cmd.file}:{cmd.line}: {', '.join(missing)} is not "
                                "installed")
                continue
            self.settle()
            text = self.substitute(cmd.text, env)
            where = f"{cmd.file}:{cmd.line}: {cmd.text}\n  ran: {text}"
            if text.startswith("export "):
                for word in shlex.split(text, comments=True)[1:]:
                    name, _, value = word.partition("=")
                    env[name] = value
                continue
            if cmd.matches(FOLLOW):
                self._follow(text, env, where)
                continue
            began = time.monotonic()
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", text], env=env, cwd=self.cwd,
                                  capture_output=True, text=True, timeout=60, check=False,
                                  stdin=subprocess.DEVNULL)
            out = proc.stdout + proc.stderr
            status, pattern = cmd.matches(EXPECT) or (0, None)
            assert proc.returncode == status, f"{where}\n  exit {proc.returncode}:\n{out}"
            if pattern:
                assert re.search(pattern, out), f"{where}\n  output lacks {pattern!r}:\n{out}"
            self.observe(text, out)
            self.ran.append(f"ok {cmd.file}:{cmd.line} ({time.monotonic() - began:.1f} s)")

    def _follow(self, text: str, env: dict[str, str], where: str) -> None:
        with subprocess.Popen(["bash", "-c", f"exec {text}"], env=env, cwd=self.cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL) as proc:
            try:
                assert proc.stdout is not None
                first = proc.stdout.readline()  # blocks until it printed an event
                assert proc.poll() is None, f"{where}\n  it stopped: {first}"
                json.loads(first)
            finally:
                proc.terminate()
        self.ran.append(f"ok {where.splitlines()[0]} (followed, then stopped)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    if not _pg_reachable():
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required but {PG_ADMIN_URL} is unreachable")
        pytest.skip("the docs' gateway walkthrough needs PostgreSQL")
    name = "accord_demo_docs"
    home = tmp_path_factory.mktemp("docs-demo")
    with demo_postgres_lock():
        d = Demo(home, {"ACCORD_DEMO_PG": PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"})
        try:
            yield d.start()
        finally:
            d.stop()
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))


@pytest.fixture(scope="module")
def warm_bin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory whose `accord` is the warm CLI (see warm_cli.py)."""
    import sys

    directory = tmp_path_factory.mktemp("warm-bin")
    sock = directory / "cli.sock"
    with subprocess.Popen([sys.executable, warm_cli.__file__, str(sock)],
                          stdout=subprocess.PIPE, text=True, cwd=ROOT) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            warm_cli.write_client(directory, sock)
            yield directory
        finally:
            proc.terminate()


def test_the_convention_finds_the_commands_and_every_skip_is_still_there() -> None:
    found = [cmd for file in FILES for block in commands(file) for cmd in block]
    assert len(found) > 40
    for table in (SKIP, EXPECT, FOLLOW):
        for file, start in table:
            assert any(c.file == file and c.text.startswith(start) for c in found), \
                f"{file}: no command starts with {start!r} any more"


def test_every_command_in_the_readme_and_docs_runs_against_the_demo(
        demo: Demo, warm_bin: Path, tmp_path: Path) -> None:
    port = int(re.search(r"gateway listens on 127\.0\.0\.1:(\d+)",  # type: ignore[union-attr]
                         demo.printed).group(1))

    def read(files: list[str]) -> list[str]:
        ran: list[str] = []
        for file in files:
            cwd = tmp_path / file.replace("/", "_")
            cwd.mkdir()
            reader = Reader(demo, port, cwd, warm_bin)
            for block in commands(file):
                reader.run_block(block)
            ran += reader.ran
        return ran

    # Two readers at a time (the CLI spends most of its time starting Python): one takes
    # the pages that act on alice's access (the review revokes some), one all the others.
    alices = ["README.md", "docs/gateway.md", "docs/reviews.md"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(read, [alices, [f for f in FILES if f not in alices]]))
    ran = [line for result in results for line in result]
    print("\n".join(ran))
    assert sum(line.startswith("ok ") for line in ran) > 35
