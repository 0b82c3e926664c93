"""Confinement: a session through the gateway never becomes more than its grant.

A `read` grant on a resource whose gateway logs in upstream as a superuser's provision
target (the probe's worst case). Every attempt a tester would make to change identity,
change how the server reads text, or reach server-side execution is sent through a real
gateway to a real PostgreSQL, with raw protocol messages, psql and psycopg; after each,
`SELECT current_user, session_user` through the same session shows the session is still
the gateway's login for the read role. Then the parser is bypassed (every class allowed)
to show that the upstream login alone keeps the session within the grant.
"""

from __future__ import annotations

import re
import secrets
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord.gateway import server
from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres import proxy
from accord.gateway.postgres.scope import CLASSES, DEFAULT_ROLES, classify
from accord.ledger.upkeep import integrate_all
from accord.provisioning import postgres as pgconn
from accord.worker.job_runner import detect_all
from tests.gateway.conftest import World
from tests.gateway.rawclient import Raw, error_of

MARKER = Path("/tmp") / f"accord_confinement_{secrets.token_hex(4)}"  # noqa: S108 - writable by the server

# Every client encoding PostgreSQL accepts but UTF8 (the gateway's).
ENCODINGS = [
    "SQL_ASCII", "EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004", "MULE_INTERNAL",
    "LATIN1", "LATIN2", "LATIN3", "LATIN4", "LATIN5", "LATIN6", "LATIN7", "LATIN8", "LATIN9",
    "LATIN10", "WIN1256", "WIN1258", "WIN866", "WIN874", "KOI8R", "WIN1251", "WIN1252",
    "ISO_8859_5", "ISO_8859_6", "ISO_8859_7", "ISO_8859_8", "WIN1250", "WIN1253", "WIN1254",
    "WIN1255", "WIN1257", "KOI8U", "SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB",
    "SHIFT_JIS_2004",
]

IDENTITY = [
    "SET ROLE postgres", "SET LOCAL ROLE postgres", "RESET ROLE", "SET ROLE NONE",
    "SET SESSION AUTHORIZATION postgres", "SET SESSION AUTHORIZATION DEFAULT",
    "RESET SESSION AUTHORIZATION", "RESET ALL", "DISCARD ALL",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT set_config('session_authorization', 'postgres', false)",
    "SELECT set_config(lower('ROLE'), 'postgres', false)",
    "SELECT pg_catalog.set_config('role', 'none', false)",
    # comments between tokens, case, quoted and Unicode-escaped identifiers, dollar quotes
    "RESET/**/ROLE", "reset -- a comment\n role", "SET/* x */ROLE/**/postgres",
    'SET "role" = \'postgres\'', 'SET "ROLE" TO postgres', 'rEsEt RoLe',
    'SELECT "set_config"(\'role\', \'postgres\', false)',
    'SELECT U&"set\\005Fconfig"(\'role\', \'postgres\', false)',
    "SELECT set_config($$role$$, $q$postgres$q$, false)",
    "SELECT set_config/**/('role', 'postgres', false)",
    # inside other statements
    "WITH x AS (SELECT set_config('role', 'postgres', false)) SELECT * FROM x",
    "EXPLAIN ANALYZE SELECT set_config('role', 'postgres', false)",
    "PREPARE p1 AS SELECT set_config('role', 'postgres', false)", "EXECUTE p1",
    "EXPLAIN ANALYZE EXECUTE p1", "EXPLAIN (ANALYZE, BUFFERS) EXECUTE p9(1)",
    "UPDATE pg_settings SET setting = 'postgres' WHERE name = 'role'",
    "WITH u AS (UPDATE pg_catalog.pg_settings SET setting = 'none' WHERE name = 'role' "
    "RETURNING 1) SELECT * FROM u",
    "DECLARE c1 CURSOR FOR SELECT set_config('role', 'postgres', false)",
    "SELECT 1; RESET ROLE; SELECT current_user",
    "DO $$BEGIN PERFORM set_config('role', 'postgres', false); END$$",
    "CALL nonexistent_procedure()",
    # functions that run SQL text
    "SELECT query_to_xml('select set_config(''role'',''none'',false)', true, false, '')",
    "SELECT query_to_xml_and_xmlschema('reset role', true, false, '')",
    "SELECT query_to_xmlschema('set role postgres', true, false, '')",
    "SELECT * FROM ts_stat('select set_config(''role'',''none'',false)')",
    "SELECT ts_rewrite('a'::tsquery, 'select set_config(''role'',''none'',false)')",
    "SELECT query_to_xml(chr(114) || 'eset role', true, false, '')",
]

SERVER = [
    f"COPY orders TO PROGRAM 'touch {MARKER}'",
    "COPY orders FROM PROGRAM 'id'",
    f"COPY orders TO '{MARKER}'",
    "COPY orders FROM '/etc/hostname'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "SELECT lo_import('/etc/passwd')",
    f"SELECT lo_export(1, '{MARKER}')",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT pg_reload_conf()",
    f"SELECT query_to_xml('copy orders to program ''touch {MARKER}''', true, false, '')",
    "SELECT * FROM ts_stat('select pg_terminate_backend(1)')",
    "LOAD 'plpgsql'", "ALTER SYSTEM SET work_mem = '1MB'", "CREATE EXTENSION dblink",
    "SELECT dblink_exec('dbname=postgres', 'select 1')",
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "SELECT pg_notify('ch', 'x')", "NOTIFY ch", "SELECT pg_advisory_lock(1)",
    "SELECT txid_current()", "SELECT pg_sleep(0)",
]

ENCODING_CHANGES = [
    *(f"SET client_encoding = '{e}'" for e in ENCODINGS),
    *(f"SET NAMES '{e}'" for e in ("SJIS", "BIG5", "GBK", "GB18030", "UHC", "JOHAB")),
    *(f"SELECT set_config('client_encoding', '{e}', false)" for e in ("SJIS", "BIG5")),
    "RESET client_encoding", "SET client_encoding TO DEFAULT",
    "SET standard_conforming_strings = off", "SET standard_conforming_strings TO DEFAULT",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SET backslash_quote = on", "SET escape_string_warning = off",
    "UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'",
    "UPDATE pg_catalog.pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    'update "pg_settings" set setting = \'on\' where name in (\'backslash_quote\')',
    "UPDATE pg_settings SET setting = 'SJIS' WHERE name LIKE 'client%'",
]


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def confined(world: World) -> Iterator[World]:
    """The world with a table no grant covers (in a schema the groups cannot use)."""
    with psycopg.connect(world.target_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS hr")
        conn.execute("CREATE TABLE IF NOT EXISTS hr.payroll (name text, salary int)")
        conn.execute("INSERT INTO hr.payroll VALUES ('carol', 1)")
    yield world
    MARKER.unlink(missing_ok=True)


def login(world: World, token: dict[str, Any], **params: str) -> tuple[Raw, list[Any]]:
    raw = Raw(world.port)
    raw.send(pq.startup_message({"user": token["user"], "database": world.resource, **params}))
    first = raw.message()
    assert first is not None
    if first[0] == "R" and pq.parse_auth(first[1])[0] == pq.AUTH_CLEARTEXT:
        raw.send(pq.password_message(token["token"].encode()))
        return raw, raw.until("Z", "E")
    return raw, [first, *raw.until("Z", "E")]


def rows(messages: list[tuple[str, bytes]]) -> list[list[str | None]]:
    out = []
    for kind, body in messages:
        if kind == "D":
            (n,), pos, row = struct.unpack_from("!h", body), 2, []
            for _ in range(n):
                (size,) = struct.unpack_from("!i", body, pos)
                pos += 4
                row.append(None if size < 0 else body[pos:pos + size].decode())
                pos += max(size, 0)
            out.append(row)
    return out


def who(raw: Raw) -> list[str | None]:
    answer = raw.query("SELECT current_user, session_user")
    assert error_of(answer) is None, error_of(answer)
    return rows(answer)[0]


def refused_with_42501(messages: list[tuple[str, bytes]]) -> bool:
    err = error_of(messages)
    return err is not None and err["C"] == "42501" and "Accord gateway" in err["M"]


def confinement_login(world: World) -> str:
    return pgconn.gateway_login_name(world.resource, "read")


# ------------------------------------------------------------------ the corpus


def test_every_attempt_is_refused_recorded_and_leaves_the_session_its_grant(
        confined: World) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    me = confinement_login(world)
    raw, hello = login(world, token)
    with raw:
        assert hello[-1][0] == "Z"
        assert who(raw) == [me, me]
        attempts = [*IDENTITY, *SERVER, *ENCODING_CHANGES]
        for sql in attempts:
            answer = raw.query(sql)
            assert refused_with_42501(answer), (sql, error_of(answer))
            assert who(raw) == [me, me], sql
        # The probe's byte sequences now reach a server that reads them as the gateway does:
        # one SELECT of a string literal each, and no RESET ROLE.
        raw.send(pq.message(b"Q", b"SELECT E'\xc3\x81\\'; RESET ROLE; SELECT current_user; -- '"
                            b"\0"))
        answer = raw.until("Z")
        assert error_of(answer) is None and len(rows(answer)) == 1
        answer = raw.query("SELECT 'x\\', $q$'; RESET ROLE; -- $q$")
        assert error_of(answer) is None and rows(answer) == [["x\\", "'; RESET ROLE; -- "]]
        # Text that is not UTF-8 is refused, not repaired before checking.
        raw.send(pq.message(b"Q", b"SELECT '\x81\\'; RESET ROLE; --'\0"))
        assert refused_with_42501(raw.until("Z"))
        # A fast-path function call (pg_reload_conf, by OID)
        raw.send(pq.message(b"F", struct.pack("!ihhh", 2621, 0, 0, 1)))
        assert refused_with_42501(raw.until("Z"))
        assert who(raw) == [me, me]
        payroll = raw.query("SELECT count(*) FROM hr.payroll")
        err = error_of(payroll)
        assert err is not None and err["C"] == "42501" and "Accord" not in err["M"]
    assert not MARKER.exists()
    violations = world.events("gateway.violation", grant["id"])
    assert len(violations) == len(attempts) + 2  # the non-UTF-8 text and the function call
    kinds = {v["data"]["statement"]: v["data"].get("escalation") for v in violations}
    assert kinds["RESET ROLE"] == "identity"
    assert kinds["SET client_encoding = 'SJIS'"] == "encoding"
    assert kinds["UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'"] \
        == "encoding"
    assert kinds["UPDATE pg_settings SET setting = 'postgres' WHERE name = 'role'"] == "identity"
    assert kinds[f"COPY orders TO PROGRAM 'touch {MARKER}'"] == "server"
    assert kinds["SELECT pg_notify('ch', 'x')"] is None  # a write, not an escalation


def test_the_extended_protocol_and_psql_are_confined_too(confined: World) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    me = confinement_login(world)
    with world.connect(token) as conn:
        for sql, params in [("select set_config(%s, %s, false)", ("role", "postgres")),
                            ("select set_config('role', %s, false)", ("postgres",)),
                            ("select set_config(%s, 'SJIS', false)", ("client_encoding",)),
                            ("select query_to_xml(%s, true, false, '')", ("reset role",))]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Accord gateway"):
                conn.execute(sql, params)
            assert conn.execute("select current_user, session_user").fetchone() == (me, me)
    for script in ("SET client_encoding = 'SJIS'", "RESET ROLE",
                   f"COPY orders TO PROGRAM 'touch {MARKER}'"):
        r = world.psql(token, script)
        assert r.returncode != 0 and "Accord gateway" in r.stderr, (script, r.stderr)
    # psql's own \encoding sends SET client_encoding: refused, and psql says so
    r = world.psql(token, "SELECT current_user, session_user", "-At", "-c", "\\encoding SJIS")
    assert "invalid encoding name" in r.stderr
    assert r.stdout.strip() == f"{me}|{me}"
    assert not MARKER.exists()
    texts = [v["data"]["statement"] for v in world.events("gateway.violation", grant["id"])]
    assert "set client_encoding to 'SJIS'" in texts


@pytest.mark.parametrize("params", [
    {"options": "-c role=postgres"}, {"options": "--role=postgres"},
    {"options": "-csession_authorization=postgres"},
    {"options": "-c client_encoding=SJIS"}, {"options": "-c standard_conforming_strings=off"},
    {"options": "--backslash-quote=on"}, {"client_encoding": "SJIS"},
    {"client_encoding": "BIG5"}, {"role": "postgres"}, {"standard_conforming_strings": "off"},
    {"replication": "database"}, {"replication": "true"},
])
def test_startup_parameters_that_would_leave_the_grant_are_refused(
        confined: World, params: dict[str, str]) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    raw, answer = login(world, token, **params)
    with raw:
        err = error_of(answer)
        assert err is not None and err["S"] == "FATAL" and "Accord gateway" in err["M"], err
    refusal = world.events("gateway.login_refused")[-1]
    assert refusal["actor"] == {"kind": "user", "id": "alice", "via": "gateway"}
    assert refusal["data"]["escalation"] in ("identity", "encoding", "server")
    assert refusal["subject"] == f"grant:{grant['id']}"


def test_utf8_spellings_and_libpq_auto_in_the_c_locale_log_in(confined: World) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    for encoding in ("UTF8", "utf-8", "Unicode", "SQL_ASCII"):
        raw, answer = login(world, token, client_encoding=encoding)
        with raw:
            assert error_of(answer) is None, (encoding, error_of(answer))
            status = dict(pq.parse_parameter_status(b) for k, b in answer if k == "S")
            assert status["client_encoding"] == "UTF8"
            assert status["standard_conforming_strings"] == "on"


def test_cancel_requests_with_other_keys_reach_nobody(confined: World) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    blocker = psycopg.connect(world.target_dsn)
    try:
        blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # holds until rollback
        raw, hello = login(world, token)
        with raw:
            (key,) = [b for k, b in hello if k == "K"]
            pid, secret = struct.unpack("!i", key[:4])[0], key[4:]
            raw.send(pq.query("SELECT count(*) FROM orders"))  # waits for the lock
            waiting = "select 1 from pg_stat_activity where query = " \
                      "'SELECT count(*) FROM orders' and wait_event_type = 'Lock'"
            _until(lambda: bool(world.target(waiting)))
            for other in ((pid, bytes(4)), (pid ^ 1, secret), (0, secret)):
                with Raw(world.port) as c:
                    c.send(pq.cancel_request(*other))
                    assert c.message() is None  # closed, no answer either way
            assert world.target(waiting), "a wrong key cancelled the statement"
            with Raw(world.port) as c:  # its own key does
                c.send(pq.cancel_request(pid, secret))
                c.message()
            err = error_of(raw.until("Z"))
            assert err is not None and err["C"] == "57014"
    finally:
        blocker.close()


def _until(check: Any, timeout: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        done.wait(0.02)  # polling the server's own view: nothing to await on
    raise AssertionError("condition not reached")


# ------------------------------------------------------------------ generated spellings


_COMMENTS = st.sampled_from([" ", "  ", "\n", "\t", "/**/", "/* x */", " -- c\n", "/* /* */ */"])


def _case(word: str, flips: list[bool]) -> str:
    return "".join(c.upper() if f else c.lower() for c, f in zip(word, flips * 8, strict=False))


@st.composite
def role_changes(draw: st.DrawFn) -> str:
    """A role change in one of many spellings, maybe wrapped in a carrier statement."""
    sep = draw(_COMMENTS)
    flips = draw(st.lists(st.booleans(), min_size=1, max_size=8))
    setting = draw(st.sampled_from(["role", '"role"', "session authorization",
                                    'U&"r\\006Fle"', '"ROLE"']))
    value = draw(st.sampled_from(["postgres", "'postgres'", "none", "DEFAULT"]))
    core = draw(st.sampled_from([
        f"{_case('set', flips)}{sep}{setting}{sep}{draw(st.sampled_from(['=', 'TO']))}"
        f"{sep}{value}",
        f"{_case('reset', flips)}{sep}{_case('role', flips)}",
        f"{_case('reset', flips)}{sep}{_case('all', flips)}",
        f"{_case('select', flips)}{sep}set_config{sep}('role',{sep}'postgres',{sep}false)",
        f"select{sep}pg_catalog.set_config($x$role$x$, 'none', false)",
    ]))
    carrier = draw(st.sampled_from([
        "{}", "select 1;{}", "{};select 2", "begin;{};commit",
        "select query_to_xml('{}', true, false, '')", "explain analyze {}",
        "prepare p{} as {}", "with w as ({}) select 1",
    ]))
    body = core.replace("'", "''") if "query_to_xml" in carrier else core
    if carrier.startswith("prepare"):
        return carrier.format(draw(st.integers(0, 9)), body)
    return carrier.format(body)


def _respell(sql: str, flips: list[bool], sep: str) -> str:
    """`sql` with the case of its words flipped by `flips` and each space between tokens
    made `sep`, leaving string literals, quoted identifiers and dollar quotes as they are."""
    out: list[str] = []
    i, k, end = 0, 0, ""
    while i < len(sql):
        ch = sql[i]
        if end:  # inside quotes: copied until they close
            if sql.startswith(end, i):
                out.append(end)
                i += len(end)
                end = ""
                continue
            out.append(ch)
        elif ch in "'\"":
            end = ch
            out.append(ch)
        elif ch == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", sql[i:])):
            end = tag.group()
            out.append(end)
            i += len(end)
            continue
        elif ch == " ":
            out.append(sep)
        else:
            out.append(ch.upper() if flips[k % len(flips)] else ch.lower())
            k += 1
        i += 1
    return "".join(out)


def _carried(draw: st.DrawFn, core: str) -> str:
    """`core` maybe inside another statement: several statements, a transaction, a CTE,
    EXPLAIN ANALYZE, PREPARE, SQL text run by a function, a leading comment."""
    carrier = draw(st.sampled_from([
        "{}", "select 1;{}", "{};select 2", "begin;{};commit", "{};",
        "select query_to_xml('{}', true, false, '')", "select * from ts_stat('{}')",
        "explain analyze {}", "prepare p{} as {}", "with w as (select 1) {}",
        "with w as ({}) select 1", "/* why not */ {}",
    ]))
    body = core.replace("'", "''") if "('{}'" in carrier else core
    if carrier.startswith("prepare"):
        return carrier.format(draw(st.integers(0, 9)), body)
    return carrier.format(body)


_FUNCTION_SPELLINGS = ["{}", '"{}"', "pg_catalog.{}", 'pg_catalog."{}"', 'U&"{}"']


@st.composite
def server_reaches(draw: st.DrawFn) -> str:
    """Server-side execution (programs, files, other backends, another server) in one of
    many spellings, maybe carried by another statement."""
    spelling = draw(st.sampled_from(_FUNCTION_SPELLINGS))

    def fn(name: str) -> str:
        if spelling.startswith("U&"):  # U&"pg\005Fread\005Ffile"
            return spelling.format(name.replace("_", "\\005F"))
        return spelling.format(name)

    core = draw(st.sampled_from([
        f"copy orders to program 'touch {MARKER}'", "copy orders from program 'id'",
        f"copy (select 1) to program 'touch {MARKER}'", f"copy orders to '{MARKER}'",
        "copy orders from '/etc/hostname'", "copy orders (id) from program $$id$$",
        f"select {fn('pg_read_file')}('/etc/passwd')",
        f"select {fn('pg_read_binary_file')}('/etc/hostname')",
        f"select * from {fn('pg_ls_dir')}('.')", f"select {fn('pg_stat_file')}('.')",
        f"select {fn('lo_import')}('/etc/passwd')", f"select {fn('lo_export')}(1, '{MARKER}')",
        f"select {fn('dblink_exec')}('dbname=postgres', 'select 1')",
        f"select * from {fn('dblink')}('dbname=postgres', 'select 1') as t(x int)",
        f"select {fn('pg_terminate_backend')}(pg_backend_pid())",
        f"select {fn('pg_reload_conf')}()",
        f"select * from {fn('pg_logical_slot_get_changes')}('s', null, null)",
        f"select {fn('query_to_xml')}('copy orders to program ''touch {MARKER}''', true, "
        "false, '')",
        f"select * from {fn('ts_stat')}('select pg_read_file(''/etc/passwd'')::tsvector')",
        f"select {fn('query_to_xml_and_xmlschema')}('select {fn('pg_read_file')}"
        "(''/etc/passwd'')', true, false, '')",
        "do $$begin perform pg_read_file('/etc/passwd'); end$$",
        f"do language plpgsql $x$begin execute 'copy orders to program ''touch {MARKER}'''; "
        "end$x$",
        "load 'plpgsql'", "alter system set work_mem = '1MB'", "create extension dblink",
    ]))
    flips = draw(st.lists(st.booleans(), min_size=1, max_size=8))
    return _carried(draw, _respell(core, flips, draw(_COMMENTS)))


# Encoding names as a client might spell them: PostgreSQL's, and its aliases' case and
# punctuation, UTF8's own included (changing a pinned setting at all is refused).
_ENCODING_NAMES = st.builds(
    lambda name, flips, punct: _respell(name.replace("_", punct), flips, " "),
    st.sampled_from([*ENCODINGS, "UTF8", "Shift_JIS", "ISO_8859_1", "utf-8", "Unicode"]),
    st.lists(st.booleans(), min_size=1, max_size=6), st.sampled_from(["_", "-", ""]))


@st.composite
def pinned_changes(draw: st.DrawFn) -> str:
    """A change of a setting the gateway pins (client_encoding above all), in one of many
    spellings, maybe carried by another statement."""
    encoding = draw(_ENCODING_NAMES)
    name, value = draw(st.sampled_from([
        ("client_encoding", encoding), ("standard_conforming_strings", "off"),
        ("standard_conforming_strings", "on"), ("backslash_quote", "on"),
        ("escape_string_warning", "off"),
    ]))
    spelled = draw(st.sampled_from([name, f'"{name}"', name.upper(),
                                    'U&"' + name.replace("_", "\\005F") + '"']))
    literal = draw(st.sampled_from(["'{}'", "$${}$$", "E'{}'", "$v${}$v$"])).format(value)
    word = value if value.isidentifier() and draw(st.booleans()) else literal
    core = draw(st.sampled_from([
        f"set {spelled} = {word}", f"set {spelled} to {word}",
        f"set local {spelled} to {word}", f"set session {spelled} = {word}",
        f"set {spelled} to default", f"reset {spelled}",
        f"set names {literal}" if name == "client_encoding" else f"reset {spelled}",
        f"select set_config('{name}', {literal}, false)",
        f"select pg_catalog.set_config($n${name}$n$, {literal}, true)",
        f"select set_config(lower('{name.upper()}'), {literal}, false)",
        f"update pg_settings set setting = {literal} where name = '{name}'",
        f"update pg_catalog.pg_settings s set setting = {literal} where s.name in ('{name}')",
        f"with u as (update pg_settings set setting = {literal} where name = '{name}' "
        "returning 1) select * from u",
    ]))
    flips = draw(st.lists(st.booleans(), min_size=1, max_size=8))
    return _carried(draw, _respell(core, flips, draw(_COMMENTS)))


ESCAPES = st.one_of(role_changes(), server_reaches(), pinned_changes())


@settings(max_examples=600, deadline=None)
@given(ESCAPES)
def test_no_generated_spelling_of_an_escape_passes_a_read_role(sql: str) -> None:
    verdict = classify(sql.encode())
    assert verdict.refused(DEFAULT_ROLES["read"]) is not None, sql


@settings(max_examples=30, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture])
@given(ESCAPES)
def test_generated_spellings_through_the_gateway(confined: World, sql: str) -> None:
    """Refused by the gateway itself (42501, a violation recorded), and the session is
    still the grant's."""
    world = confined
    grant = _read_grant(world)
    token = _TOKENS.get(world.resource) or _TOKENS.setdefault(
        world.resource, world.token(grant, "erin"))
    me = confinement_login(world)
    before = len(world.events("gateway.violation", grant["id"]))
    raw, _ = login(world, token)
    with raw:
        answer = raw.query(sql)
        assert refused_with_42501(answer), (sql, error_of(answer))
        assert who(raw) == [me, me], sql
    violations = world.events("gateway.violation", grant["id"])
    assert len(violations) == before + 1, sql
    assert violations[-1]["data"]["statement"] in sql
    assert not MARKER.exists()


_TOKENS: dict[str, dict[str, Any]] = {}


_GRANTS: dict[str, dict[str, Any]] = {}


def _read_grant(world: World) -> dict[str, Any]:
    if world.resource not in _GRANTS:
        _GRANTS[world.resource] = world.grant("erin", "read")
    return _GRANTS[world.resource]


# ------------------------------------------------------------------ the parser bypassed


def test_with_the_scope_check_bypassed_the_upstream_login_is_the_ceiling(
        confined: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    me = confinement_login(world)
    monkeypatch.setattr(proxy, "role_classes", lambda *a, **k: frozenset(CLASSES))
    raw, _ = login(world, token)
    with raw:
        assert error_of(raw.query("RESET ROLE")) is None  # nothing to go back to
        assert who(raw) == [me, me]
        assert error_of(raw.query("RESET SESSION AUTHORIZATION")) is None
        assert who(raw) == [me, me]
        for sql in ("SET ROLE postgres", "SET SESSION AUTHORIZATION postgres",
                    "SELECT count(*) FROM hr.payroll",
                    f"COPY orders TO PROGRAM 'touch {MARKER}'",
                    "SELECT pg_read_file('/etc/passwd')",
                    "DELETE FROM orders", "ALTER SYSTEM SET work_mem = '1MB'"):
            err = error_of(raw.query(sql))
            assert err is not None and "Accord" not in err["M"], (sql, err)  # the server's
            assert who(raw) == [me, me], sql
        xml = raw.query("SELECT query_to_xml('select set_config(''role'',''none'',false)', "
                        "true, false, '')")
        assert error_of(xml) is None
        assert who(raw) == [me, me]
        # Changing how the server reads text ends the session: the server reports it.
        raw.send(pq.query("SET client_encoding = 'SJIS'"))
        answer = raw.until("Z", "E")
        err = error_of(answer)
        assert err is not None and err["S"] == "FATAL" and "pins it to UTF8" in err["M"]
        assert raw.message() is None  # closed
    assert not MARKER.exists()
    assert world.target("SELECT count(*) FROM orders") == [(100,)]
    closed = world.events("gateway.session_closed", grant["id"])[-1]
    assert closed["data"]["reason"] == "pinned setting changed upstream"


def test_the_gateway_login_holds_nothing_but_its_group(confined: World) -> None:
    world = confined
    world.grant("alice", "read")
    login_ = confinement_login(world)
    (attrs,) = world.target(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
        "FROM pg_roles WHERE rolname = %s", login_)
    assert attrs == (False,) * 5
    member_of = world.target(
        "SELECT g.rolname FROM pg_auth_members am JOIN pg_roles g ON g.oid = am.roleid "
        "JOIN pg_roles m ON m.oid = am.member WHERE m.rolname = %s", login_)
    assert member_of == [(pgconn.group_name(world.resource, "read"),)]
    # A DBA's extra membership is taken away before the next session's login is used,
    # and the gateway login is not reported as drift.
    with psycopg.connect(world.target_dsn, autocommit=True) as conn:
        conn.execute(f'GRANT pg_read_server_files TO "{login_}"')
    proc = world.gateway
    proc.logins._ready.clear()  # as after a restart: the login is made ready again
    token = world.token(world.grant("alice", "read"))
    with world.connect(token) as conn:
        assert conn.execute("select current_user").fetchone() == (login_,)
    assert world.target(
        "SELECT count(*) FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.member "
        "WHERE m.rolname = %s", login_) == [(1,)]
    drift = world.env.st.connectors().get(world.resource).granted()
    assert all(user != login_ for user, _ in drift)


def test_refused_escalations_raise_a_high_alert_visible_on_the_grant(confined: World) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    raw, _ = login(world, token)
    with raw:
        assert refused_with_42501(raw.query("RESET ROLE"))
        assert refused_with_42501(raw.query(f"COPY orders TO PROGRAM 'touch {MARKER}'"))
        assert refused_with_42501(raw.query("DELETE FROM orders"))  # ordinary: no alert
    world.flush()
    st_ = world.env.st
    integrate_all(st_.sessions)
    detect_all(st_.sessions, st_.policies.current, st_.now)
    alerts = world.env.get("dave", "/api/v1/alerts",
                           params={"rule": "gateway_escalation"}).json()["items"]
    mine = [a for a in alerts if a["subject"] == f"grant:{grant['id']}"]
    assert sorted(a["data"]["escalation"] for a in mine) == ["identity", "server"]
    assert all(a["severity"] == "high" for a in mine)
    # each alert's evidence is the ledger index of the refusal it is about
    refusals = {event["data"]["statement"]: idx
                for idx, event in _indexed(world, "gateway.violation", grant["id"])}
    assert {a["data"]["escalation"]: a["evidence"] for a in mine} == {
        "identity": [refusals["RESET ROLE"]],
        "server": [refusals[f"COPY orders TO PROGRAM 'touch {MARKER}'"]]}
    assert world.env.get("alice", f"/api/v1/grants/{grant['id']}").json()["alerts"] is None
    shown = world.env.get("dave", f"/api/v1/grants/{grant['id']}").json()
    assert sorted(a["rule"] for a in shown["alerts"] if a["rule"] != "off_hours") == [
        "gateway_escalation", "gateway_escalation", "scope_violation", "scope_violation",
        "scope_violation"]


def _indexed(world: World, type_: str, grant_id: int) -> list[tuple[int, dict[str, Any]]]:
    """The grant's events of a type with their ledger indices (once integrated)."""
    import json

    from sqlalchemy import select

    from accord.db import transaction
    from accord.ledger.models import LedgerEntry

    with transaction(world.env.st.sessions) as s:
        found = s.execute(select(LedgerEntry.idx, LedgerEntry.leaf).where(
            LedgerEntry.type == type_, LedgerEntry.subject == f"grant:{grant_id}")
            .order_by(LedgerEntry.id)).all()
    return [(int(idx), json.loads(leaf)) for idx, leaf in found if idx is not None]


@pytest.mark.parametrize(("params", "attempt"), [
    ({"options": "-c client_encoding=SJIS"}, "encoding"), ({"role": "postgres"}, "identity"),
    ({"replication": "database"}, "server")])
def test_a_refused_startup_escalation_raises_the_same_high_alert(
        confined: World, params: dict[str, str], attempt: str) -> None:
    world = confined
    grant = world.grant("alice", "read")
    raw, answer = login(world, world.token(grant), **params)
    with raw:
        err = error_of(answer)
        assert err is not None and err["S"] == "FATAL" and "Accord gateway" in err["M"]
    world.flush()
    st_ = world.env.st
    integrate_all(st_.sessions)
    detect_all(st_.sessions, st_.policies.current, st_.now)
    ((idx, refusal),) = _indexed(world, "gateway.login_refused", grant["id"])
    assert refusal["data"]["escalation"] == attempt
    alerts = world.env.get("dave", "/api/v1/alerts",
                           params={"rule": "gateway_escalation"}).json()["items"]
    (alert,) = [a for a in alerts if a["subject"] == f"grant:{grant['id']}"]
    assert alert["severity"] == "high" and alert["evidence"] == [idx]
    assert alert["data"]["escalation"] == attempt
    shown = world.env.get("dave", f"/api/v1/grants/{grant['id']}").json()
    assert "gateway_escalation" in [a["rule"] for a in shown["alerts"]]


# ------------------------------------------------------------------ the smaller holes


def _msg(kind: bytes, body: bytes) -> bytes:
    return pq.message(kind, body)


def _bind_execute_sync(name: bytes, params: list[bytes] | None = None) -> bytes:
    values = params or []
    bind = b"\0" + name + b"\0" + struct.pack("!h", 0) + struct.pack("!h", len(values))
    for v in values:
        bind += struct.pack("!i", len(v)) + v
    bind += struct.pack("!h", 0)
    return _msg(b"B", bind) + _msg(b"E", b"\0" + struct.pack("!i", 0)) + _msg(b"S", b"")


# pg_catalog's functions that are volatile, or named like those with side effects, and that
# the classifier may leave `read`: each is free of side effects others could see.
READ_FUNCTIONS_ALLOWED = {
    # time, randomness, the session's own state (setseed seeds this session's random();
    # the stats snapshot and its flush are this session's; currval/lastval its sequences')
    "clock_timestamp", "timeofday", "random", "gen_random_uuid", "setseed", "current_query",
    "currval", "lastval", "pg_stat_clear_snapshot", "pg_stat_force_next_flush",
    # reading large objects (writing them is `write`: lowrite, lo_put, lo_create, ...)
    "lo_open", "lo_close", "lo_get", "loread", "lo_lseek", "lo_lseek64", "lo_tell",
    "lo_tell64",
    # sizes, locks, transaction ids and snapshots, WAL positions, control data: reads
    "pg_database_size", "pg_indexes_size", "pg_relation_size", "pg_table_size",
    "pg_tablespace_size", "pg_total_relation_size", "pg_filenode_relation",
    "pg_partition_ancestors", "pg_partition_tree", "pg_sequence_last_value",
    "pg_lock_status", "pg_blocking_pids", "pg_safe_snapshot_blocking_pids",
    "pg_isolation_test_session_is_blocked", "pg_notification_queue_usage",
    "pg_prepared_xact", "pg_get_multixact_members", "pg_last_committed_xact",
    "pg_xact_commit_timestamp", "pg_xact_commit_timestamp_origin", "pg_xact_status",
    "txid_status", "pg_current_xact_id_if_assigned", "txid_current_if_assigned",
    "txid_current_snapshot", "txid_snapshot_in", "txid_snapshot_out", "txid_snapshot_recv",
    "txid_snapshot_send", "txid_snapshot_xip", "txid_snapshot_xmax", "txid_snapshot_xmin",
    "txid_visible_in_snapshot", "currtid2", "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn", "pg_current_wal_flush_lsn", "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn", "pg_last_xact_replay_timestamp", "pg_wal_lsn_diff",
    "pg_walfile_name", "pg_walfile_name_offset", "pg_is_in_recovery",
    "pg_is_wal_replay_paused", "pg_get_wal_replay_pause_state",
    "pg_get_wal_resource_managers", "pg_control_checkpoint", "pg_control_init",
    "pg_control_recovery", "pg_control_system", "pg_jit_available",
    "pg_collation_actual_version", "pg_database_collation_actual_version",
    "pg_get_shmem_allocations", "pg_get_backend_memory_contexts",
    "pg_show_replication_origin_status", "pg_stat_have_stats",
    "pg_stat_get_recovery_prefetch", "pg_stat_get_xact_blocks_fetched",
    "pg_stat_get_xact_blocks_hit", "pg_stat_get_xact_function_calls",
    "pg_stat_get_xact_function_self_time", "pg_stat_get_xact_function_total_time",
    "pg_stat_get_xact_numscans", "pg_stat_get_xact_tuples_deleted",
    "pg_stat_get_xact_tuples_fetched", "pg_stat_get_xact_tuples_hot_updated",
    "pg_stat_get_xact_tuples_inserted", "pg_stat_get_xact_tuples_returned",
    "pg_stat_get_xact_tuples_updated",
    # checks that run nothing: an access method's or a PL/pgSQL function's definition
    "amvalidate", "plpgsql_validator",
    # SQL text or a cursor: classified as the text they run (see test_statement_classes)
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat",
    "ts_rewrite", "cursor_to_xml", "cursor_to_xmlschema",
    # not callable from SQL: triggers, and handlers that take `internal` arguments
    "RI_FKey_cascade_del", "RI_FKey_cascade_upd", "RI_FKey_check_ins", "RI_FKey_check_upd",
    "RI_FKey_noaction_del", "RI_FKey_noaction_upd", "RI_FKey_restrict_del",
    "RI_FKey_restrict_upd", "RI_FKey_setdefault_del", "RI_FKey_setdefault_upd",
    "RI_FKey_setnull_del", "RI_FKey_setnull_upd", "suppress_redundant_updates_trigger",
    "tsvector_update_trigger", "tsvector_update_trigger_column", "unique_key_recheck",
    "brinhandler", "bthandler", "ginhandler", "gisthandler", "hashhandler", "spghandler",
    "heap_tableam_handler", "bernoulli", "system", "dsnowball_init", "dsnowball_lexize",
    "plpgsql_call_handler", "plpgsql_inline_handler",
}
# Names of functions with side effects (or server reach), whatever their volatility.
SIDE_EFFECT_NAMES = (
    r"^(pg_(stat_reset|cancel|terminate|reload|rotate|switch|create|drop|copy|replication"
    r"|logical|backup|start|stop|promote|wal|ls_|read|file|advisory|try_advisory|notify"
    r"|sleep|import|log_|export|nextoid|current_xact)|lo_|lo(read|write)|binary_upgrade"
    r"|(set|next|curr|last)val|set_config|dblink|txid_)")


def test_volatile_catalog_functions_are_not_read_unless_known_free_of_side_effects(
        confined: World) -> None:
    names = [name for (name,) in confined.target(
        "SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_namespace n "
        "ON n.oid = p.pronamespace WHERE n.nspname = 'pg_catalog' "
        "AND (p.provolatile = 'v' OR p.proname ~ %s) ORDER BY 1", SIDE_EFFECT_NAMES)]
    assert len(names) > 150  # the catalog was read
    read = [name for name in names if name not in READ_FUNCTIONS_ALLOWED
            and classify(f'SELECT pg_catalog."{name}"()'.encode()).statements[0].classes
            <= {"read"}]
    assert read == [], f"functions with side effects classified read: {read}"
    for name in ("pg_logical_slot_get_changes", "pg_logical_slot_peek_changes", "nextval",
                 "setval", "pg_stat_reset", "lo_unlink", "pg_create_restore_point",
                 "pg_drop_replication_slot", "pg_cancel_backend", "pg_reload_conf",
                 "pg_switch_wal", "set_config", "pg_replication_origin_create",
                 "binary_upgrade_set_next_pg_authid_oid", "pg_hba_file_rules"):
        assert name in names, name


def test_a_refused_reparse_of_a_named_statement_records_what_really_runs(
        confined: World) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    raw, _ = login(world, token)
    with raw:
        raw.send(pq.parse_message(b"s1", b"select 41 + 1") + _msg(b"S", b""))
        assert error_of(raw.until("Z")) is None
        raw.send(pq.parse_message(b"s1", b"delete from orders") + _msg(b"S", b""))
        assert refused_with_42501(raw.until("Z"))
        raw.send(_bind_execute_sync(b"s1"))  # the server still holds the first s1
        answer = raw.until("Z")
        assert error_of(answer) is None and rows(answer) == [["42"]]
    ran = [s for s in world.statements(grant["id"]) if s["protocol"] == "extended"]
    assert [s["text"] for s in ran] == ["select 41 + 1"]
    assert world.target("select count(*) from orders") == [(100,)]


def test_a_bind_with_a_text_parameter_that_is_not_utf8_is_refused(confined: World) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    me = confinement_login(world)
    raw, _ = login(world, token)
    with raw:
        raw.send(pq.parse_message(b"s9", b"select $1::text") + _msg(b"S", b""))
        assert error_of(raw.until("Z")) is None
        # as SJIS, \x81\x5c is one character; as UTF-8 it is no text at all
        raw.send(_bind_execute_sync(b"s9", [b"\x81\\"]))
        answer = raw.until("Z")
        err = error_of(answer)
        assert err is not None and err["C"] == "22021" and "Accord gateway" in err["M"], err
        assert "$1 is not valid UTF-8" in err["M"] and err["D"] == "statement: select $1::text"
        assert [k for k, _ in answer] == ["E", "Z"]  # the Execute was discarded to the Sync
        # The session goes on: UTF-8 text, and the same bytes as a binary parameter.
        raw.send(_bind_execute_sync(b"s9", ["é".encode()]))
        answer = raw.until("Z")
        assert error_of(answer) is None and rows(answer) == [["é"]]
        raw.send(pq.parse_message(b"", b"select length($1::bytea)")
                 + _msg(b"B", b"\0\0" + struct.pack("!hhhi", 1, 1, 1, 2) + b"\x81\\"
                        + struct.pack("!h", 0))
                 + _msg(b"E", b"\0" + struct.pack("!i", 0)) + _msg(b"S", b""))
        answer = raw.until("Z")
        assert error_of(answer) is None and rows(answer) == [["2"]]
        assert who(raw) == [me, me]
    (violation,) = world.events("gateway.violation", grant["id"])
    assert violation["data"]["statement"] == "select $1::text"
    assert "$1 is not valid UTF-8" in violation["data"]["reason"]
    ran = [(s["text"], s["outcome"]) for s in world.statements(grant["id"])
           if s["protocol"] == "extended"]
    assert ran == [("select $1::text", "ok"), ("select length($1::bytea)", "ok")]


def test_parameters_that_are_not_utf8_are_recorded_as_sent() -> None:
    from accord.gateway.postgres.conversation import render_params

    bind = (b"\0\0" + struct.pack("!h", 0) + struct.pack("!h", 2)
            + struct.pack("!i", 2) + b"ok" + struct.pack("!i", 2) + b"\x81\\"
            + struct.pack("!h", 0))
    assert render_params(bind) == ["ok", "\\x815c"]  # never "repaired" to U+FFFD


def test_refused_logins_are_anonymous_and_a_flood_is_summarised(confined: World) -> None:
    world = confined
    clock = [1000.0]
    world.gateway.refusals = server.RefusalBudget(3, clock=lambda: clock[0])
    before = len(world.events("gateway.login_refused"))
    for _ in range(8):
        with pytest.raises(psycopg.OperationalError, match="not a valid"):
            world.connect({"user": "carol", "token": "acg_flood"})
    refused = world.events("gateway.login_refused")[before:]
    assert len(refused) == 3  # the budget; the other 5 are only counted
    assert all(r["actor"] == {"kind": "anonymous", "id": "unauthenticated", "via": "gateway"}
               and r["data"]["user"] == "carol" for r in refused)
    clock[0] += server.RefusalBudget.WINDOW  # the minute is over: the watcher records the rest
    deadline = threading.Event()
    for _ in range(500):
        summaries = world.events("gateway.logins_suppressed")
        if summaries:
            break
        deadline.wait(0.02)
    (summary,) = summaries
    assert summary["data"]["count"] == 5 and summary["data"]["client"] == "127.0.0.1"
    assert summary["actor"]["kind"] == "anonymous"


# ------------------------------------------------------------------ shared credentials


def test_policy_check_warns_about_shared_upstream_logins(confined: World, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from typer.testing import CliRunner

    from accord.cli.main import app
    from tests.gateway.conftest import DSN_ENV, policy_text

    world = confined
    careful = f"accord_careful_{secrets.token_hex(4)}"
    with psycopg.connect(world.target_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {careful} LOGIN CREATEROLE")
        conn.execute(f"GRANT pg_read_server_files TO {careful}")
    try:
        base = world.target_dsn.rsplit("/", 1)[0]
        monkeypatch.setenv("SHARED_SUPER_DSN", world.target_dsn)
        monkeypatch.setenv("SHARED_CAREFUL_DSN", f"{base.replace('postgres@', careful + '@')}"
                                                 f"/{world.database}")
        monkeypatch.setenv(DSN_ENV, world.target_dsn)
        extra = """\
  - {name: shared-super, roles: [read], gateway: {dsn_env: SHARED_SUPER_DSN}}
  - {name: shared-careful, roles: [read], gateway: {dsn_env: SHARED_CAREFUL_DSN}}
"""
        path = tmp_path / "accord.yaml"
        path.write_text(policy_text(world.resource, world.database, extra=extra))
        runner = CliRunner()
        result = runner.invoke(app, ["policy", "check", str(path)])
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())  # as read, whatever the terminal's width
        assert "shared-super: the gateway's shared login postgres is a superuser" in said
        assert f"shared-careful: the gateway's shared login {careful} has CREATEROLE" in said
        assert "is a member of pg_read_server_files" in said
        assert f"resource {world.resource}:" not in said  # its roles log in per role
        assert runner.invoke(app, ["policy", "check", "--strict", str(path)]).exit_code == 1
        quiet = runner.invoke(app, ["policy", "check", "--offline", "--strict", str(path)])
        assert quiet.exit_code == 0 and "warning" not in quiet.output
    finally:
        with psycopg.connect(world.target_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {careful}")


def test_admin_credentials_never_serve_a_session_of_a_role_not_provisioned(
        tmp_path: Path) -> None:
    from cryptography.fernet import Fernet
    from typer.testing import CliRunner

    from accord.cli.main import app
    from accord.gateway.postgres.upstream import UpstreamError, target_for
    from accord.provisioning.secrets import SecretBox
    from accord.spec.resources import (
        PostgresTarget,
        ResourceGatewaySpec,
        ResourceSpec,
        RolePrivileges,
    )
    from tests.gateway.conftest import policy_text

    env = {"ADMIN_DSN": "postgresql://postgres@127.0.0.1:5432/db",
           "SHARED_DSN": "postgresql://app@127.0.0.1:5432/db"}
    box = SecretBox(Fernet.generate_key())
    target = PostgresTarget(type="postgres", dsn_env="ADMIN_DSN",
                            roles={"read": RolePrivileges()})
    half = ResourceSpec(name="half", roles=["read", "analyst"], provision=target)
    with pytest.raises(UpstreamError) as refused:
        target_for(half, "analyst", env, box)
    assert refused.value.code == "08001"
    assert "role analyst is not provisioned" in refused.value.message
    assert "gateway.dsn_env" in refused.value.message
    served = target_for(half, "read", env, box)  # its own login, never the admin DSN's
    assert served.gateway_login == "read" and served.user != "postgres"
    with pytest.raises(UpstreamError):  # no secrets key: no login, and no stand-in
        target_for(half, "read", env)
    shared = half.model_copy(update={"gateway": ResourceGatewaySpec(dsn_env="SHARED_DSN")})
    assert target_for(shared, "analyst", env, box).user == "app"

    # `accord policy check` says so, as an error: every such session would be refused
    extra = """\
  - name: half
    roles: [read, analyst]
    provision:
      type: postgres
      dsn_env: ADMIN_DSN
      roles: {read: {privileges: ["SELECT ON ALL TABLES IN SCHEMA public"]}}
"""
    path = tmp_path / "accord.yaml"
    path.write_text(policy_text("orders", "orders", extra=extra))
    result = CliRunner().invoke(app, ["policy", "check", "--offline", str(path)])
    said = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "resource half: role analyst is not provisioned" in said and "1 error(s)" in said
    path.write_text(policy_text("orders", "orders", extra=extra.replace(
        "    provision:", "    gateway: {dsn_env: SHARED_DSN}\n    provision:")))
    result = CliRunner().invoke(app, ["policy", "check", "--offline", str(path)])
    assert result.exit_code == 0, result.output


# What each shared login holds, and what `shared_login_risks` must say about it.
RISKS = [
    ("GRANT pg_execute_server_program TO {login}",
     "is a member of pg_execute_server_program: server files or programs"),
    ("GRANT pg_write_server_files TO {login}",
     "is a member of pg_write_server_files: server files or programs"),
    ("GRANT pg_read_server_files TO {login}",
     "is a member of pg_read_server_files: server files or programs"),
    ("GRANT pg_read_all_data TO {login}", "is a member of pg_read_all_data: every table"),
    ("GRANT pg_write_all_data TO {login}", "is a member of pg_write_all_data: every table"),
    ("GRANT pg_signal_backend TO {login}",
     "is a member of pg_signal_backend: other sessions can be cancelled or terminated"),
    ("GRANT pg_checkpoint TO {login}", "is a member of pg_checkpoint: server-wide"),
    ("GRANT pg_monitor TO {login}", "is a member of pg_monitor, pg_read_all_settings, "
                                    "pg_read_all_stats, pg_stat_scan_tables: lower risk"),
    ("GRANT pg_read_all_settings TO {login}",
     "is a member of pg_read_all_settings: lower risk"),
    ("ALTER ROLE {login} REPLICATION", "has REPLICATION"),
    ("ALTER ROLE {login} CREATEROLE", "has CREATEROLE"),
    ("ALTER ROLE {login} BYPASSRLS", "has BYPASSRLS"),
    ("ALTER ROLE {login} SUPERUSER", "is a superuser"),
    ("CREATE ROLE {login}_hr; GRANT {login}_hr TO {login}",
     "is a member of {login}_hr: every grant on shared has it as its ceiling"),
]


def test_policy_check_names_every_privilege_a_shared_login_holds_beyond_a_grant(
        confined: World) -> None:
    from accord.gateway.postgres.upstream import shared_login_risks
    from accord.spec.resources import ResourceGatewaySpec, ResourceSpec

    world = confined
    base = world.target_dsn.rsplit("/", 1)[0]
    spec = ResourceSpec(name="shared", roles=["read"],
                        gateway=ResourceGatewaySpec(dsn_env="SHARED_DSN"))
    for setup, expected in [("", None), *RISKS]:
        login_ = f"accord_risk_{secrets.token_hex(4)}"
        with psycopg.connect(world.target_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {login_} LOGIN")
            for step in filter(None, setup.format(login=login_).split("; ")):
                conn.execute(step)
        try:
            env = {"SHARED_DSN": f"{base.replace('postgres@', login_ + '@')}/{world.database}"}
            said = shared_login_risks(spec, env)
            if expected is None:
                assert said == [], said  # a login that holds nothing: nothing to say
            else:
                assert any(expected.format(login=login_) in line for line in said), (setup, said)
        finally:
            with psycopg.connect(world.target_dsn, autocommit=True) as conn:
                conn.execute(f"DROP ROLE {login_}")
                conn.execute(f"DROP ROLE IF EXISTS {login_}_hr")


def test_the_grants_page_shows_a_grants_alerts_to_readers(confined: World) -> None:
    world = confined
    grant = world.grant("alice", "read")
    token = world.token(grant)
    raw, _ = login(world, token)
    with raw:
        assert refused_with_42501(raw.query("SET ROLE postgres"))
    world.flush()
    st_ = world.env.st
    integrate_all(st_.sessions)
    detect_all(st_.sessions, st_.policies.current, st_.now)
    from tests.web.test_pages import Browser, login_form

    b = Browser(world.env)
    r = b.post("/login/token", {"token": world.env.tokens["dave"], "csrf": login_form(b)})
    assert r.status_code == 303, r.text
    html = b.get("/grants").text
    row = html.split(f'id="grant-{grant["id"]}"', 1)[1].split("</tr>", 1)[0]
    assert "alert" in row and 'href="/alerts?view=each"' in row
