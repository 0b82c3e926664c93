"""Statement classes from PostgreSQL's own parser, role configuration, SCRAM, and the config."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.gateway import prefork
from accord.gateway.postgres.scope import (
    _NOT_A_PARAM,
    DEFAULT_ROLES,
    Classifier,
    classify,
    escalation,
    role_classes,
)
from accord.gateway.postgres.scram import AuthError, ScramClient, md5_password
from accord.spec.load import PolicyError, parse_policy_text


def classes(sql: str) -> list[list[str]]:
    return [sorted(s.classes) for s in classify(sql.encode()).statements]


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM orders WHERE id = 1", [["read"]]),
    ("VALUES (1)", [["read"]]),
    ("SHOW search_path", [["read"]]),
    ("EXPLAIN DELETE FROM orders", [["read"]]),
    ("EXPLAIN ANALYZE DELETE FROM orders", [["read", "write"]]),
    ("EXPLAIN (ANALYZE false) SELECT 1", [["read"]]),
    ("COPY orders TO STDOUT", [["read"]]),
    ("COPY orders FROM STDIN", [["write"]]),
    ("COPY orders TO '/tmp/x'", [["admin"]]),
    ("COPY orders FROM PROGRAM 'id'", [["admin"]]),
    ("COPY (DELETE FROM orders RETURNING *) TO STDOUT", [["read", "write"]]),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", [["read", "write"]]),
    ("SELECT * FROM orders FOR UPDATE", [["read", "write"]]),
    ("SELECT 1 INTO t2", [["ddl", "read"]]),
    ("INSERT INTO orders VALUES (1)", [["write"]]),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", [["write"]]),
    ("SELECT nextval('s')", [["read", "write"]]),
    ("SELECT pg_terminate_backend(1)", [["admin", "read"]]),
    ("CREATE TABLE x (id int)", [["ddl"]]),
    ("TRUNCATE orders", [["ddl"]]),
    ("GRANT SELECT ON orders TO public", [["ddl"]]),
    ("CREATE ROLE x", [["admin"]]),
    ("VACUUM", [["admin"]]),
    ("DO $$ BEGIN END $$", [["admin"]]),
    ("BEGIN", [["transaction"]]),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", [["transaction"]]),
    ("PREPARE TRANSACTION 'x'", [["admin"]]),
    ("SET search_path = public", [["session"]]),
    ("SELECT set_config('search_path', '', false)", [["read", "session"]]),
    ("SET ROLE postgres", [["identity"]]),
    ("RESET ROLE", [["identity"]]),
    ("SET SESSION AUTHORIZATION postgres", [["identity"]]),
    ("RESET ALL", [["identity"]]),
    ("DISCARD ALL", [["identity"]]),
    ("DISCARD PLANS", [["session"]]),
    ("SELECT set_config('role', 'postgres', false)", [["identity", "read"]]),
    # a computed setting name may be any setting: the strictest classes
    ("SELECT pg_catalog.set_config(current_user, 'x', false)",
     [["identity", "pinned", "read"]]),
    ('SELECT U&"\\0073et_config"(\'role\', \'x\', false)', [["identity", "read"]]),
    ("PREPARE p AS DELETE FROM orders", [["write"]]),
    ("this is not sql", [["unknown"]]),
    ("SELECT 1; DELETE FROM orders", [["read"], ["write"]]),
    # settings that change how the server reads text: pinned
    ("SET client_encoding = 'SJIS'", [["pinned"]]),
    ("SET NAMES 'BIG5'", [["pinned"]]),
    ("RESET client_encoding", [["pinned"]]),
    ("SET standard_conforming_strings = off", [["pinned"]]),
    ('SET "BACKSLASH_QUOTE" TO on', [["pinned"]]),
    ("SET LOCAL escape_string_warning = off", [["pinned"]]),
    ("SELECT set_config('client_encoding', 'GBK', false)", [["pinned", "read"]]),
    # UPDATE pg_settings is set_config of each row it matches (the view's rule)
    ("UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'",
     [["pinned", "write"]]),
    ('update PG_CATALOG."pg_settings" set setting = \'off\' where '
     "name = 'standard_conforming_strings'", [["pinned", "write"]]),
    ("UPDATE pg_settings s SET setting = 'on' WHERE 'backslash_quote' = s.name",
     [["pinned", "write"]]),
    ("UPDATE pg_settings SET setting = 'off' WHERE name IN ('escape_string_warning')",
     [["pinned", "write"]]),
    ("UPDATE pg_settings SET setting = 'postgres' WHERE name = 'role'", [["identity", "write"]]),
    ("UPDATE pg_settings SET setting = 'x' WHERE name = 'session_authorization' AND true",
     [["identity", "write"]]),
    ("UPDATE pg_settings SET setting = '1MB' WHERE name = 'work_mem'", [["session", "write"]]),
    ("UPDATE pg_settings SET setting = '1MB' WHERE name = 'work_mem' OR name = 'role'",
     [["identity", "session", "write"]]),
    ("UPDATE pg_settings SET setting = '1MB' WHERE name = 'work_mem' OR true",
     [["identity", "pinned", "write"]]),
    ("UPDATE pg_settings SET setting = '1MB' WHERE name = lower('ROLE')",
     [["identity", "pinned", "write"]]),
    ("UPDATE pg_settings SET setting = 'SJIS' WHERE name LIKE 'client%'",
     [["identity", "pinned", "write"]]),
    ("UPDATE pg_settings SET setting = 'SJIS'", [["identity", "pinned", "write"]]),
    ("WITH u AS (UPDATE pg_settings SET setting = 'none' WHERE name = 'role' RETURNING 1) "
     "SELECT * FROM u", [["identity", "read", "write"]]),
    ("SELECT query_to_xml('update pg_settings set setting = ''SJIS'' "
     "where name = ''client_encoding''', true, false, '')", [["pinned", "read", "write"]]),
    ("UPDATE t SET x = 'pg_settings' WHERE name = 'role'", [["write"]]),
    # functions that run the SQL text they are given take its classes
    ("SELECT query_to_xml('select set_config(''role'',''none'',false)', true, false, '')",
     [["identity", "read"]]),
    ("SELECT query_to_xml_and_xmlschema('delete from t returning 1', true, false, '')",
     [["read", "write"]]),
    ("SELECT * FROM ts_stat('select pg_terminate_backend(1)')", [["admin", "read"]]),
    ("SELECT ts_rewrite('a'::tsquery, 'select set_config($$role$$, $$x$$, false)')",
     [["identity", "read"]]),
    ("SELECT ts_rewrite('a'::tsquery, 'b'::tsquery, 'c'::tsquery)", [["read"]]),
    ("SELECT query_to_xml(q, true, false, '') FROM queries", [["read", "unknown"]]),
    ("SELECT query_to_xml('select 1; reset role', true, false, '')", [["identity", "read"]]),
    ("SELECT * FROM crosstab('select 1', 'select 2')", [["read"]]),
    ("SELECT * FROM connectby('t', 'id', 'parent', '1', 0)", [["read", "unknown"]]),
    # side effects others see are not `read`
    ("SELECT pg_notify('ch', 'x')", [["read", "write"]]),
    ("SELECT pg_advisory_lock(1)", [["read", "write"]]),
    ("SELECT pg_try_advisory_xact_lock(1, 2)", [["read", "write"]]),
    ("SELECT txid_current()", [["read", "write"]]),
    ("SELECT pg_current_xact_id()", [["read", "write"]]),
    ("SELECT pg_sleep(1)", [["admin", "read"]]),
    ("SELECT lo_import('/etc/passwd')", [["admin", "read"]]),
    ("SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)", [["admin", "read"]]),
    ("SELECT pg_catalog.pg_replication_origin_session_setup('o')", [["admin", "read"]]),
    ("SELECT binary_upgrade_set_next_pg_authid_oid(10)", [["admin", "read"]]),
    ("SELECT * FROM pg_hba_file_rules()", [["admin", "read"]]),
    ("SELECT brin_summarize_range('i', 0)", [["admin", "read"]]),
    ("SELECT lo_get(1), currval('s'), random()", [["read"]]),
    ("SELECT 1\0; RESET ROLE", [["unknown"]]),
])
def test_statement_classes(sql: str, expected: list[list[str]]) -> None:
    assert classes(sql) == expected


def test_multi_statement_text_is_split_per_statement() -> None:
    verdict = classify("select 'é;'; delete from t".encode())
    assert [s.text for s in verdict.statements] == ["select 'é;'".encode(), b"delete from t"]
    refused = verdict.refused(DEFAULT_ROLES["read"])
    assert refused is not None and refused[0].text == b"delete from t"


def test_execute_takes_the_classes_of_what_was_prepared() -> None:
    verdict = classify(b"EXECUTE p(1)")
    read = DEFAULT_ROLES["read"]
    assert verdict.refused(read, {"p": frozenset({"read"})}) is None
    assert verdict.refused(read, {"p": frozenset({"write"})}) is not None
    assert verdict.refused(read, {}) is not None  # never saw it prepared: unknown


@pytest.mark.parametrize("sql", ["EXPLAIN ANALYZE EXECUTE p9", "explain (analyze) execute p9(1)",
                                 "EXPLAIN (ANALYZE true, BUFFERS) EXECUTE p9",
                                 "CREATE TABLE t AS EXECUTE p9"])
def test_statements_that_run_a_prepared_statement_take_its_classes(sql: str) -> None:
    verdict = classify(sql.encode())
    read = DEFAULT_ROLES["read"] | {"ddl"}
    assert verdict.refused(read, {"p9": frozenset({"read"})}) is None
    assert verdict.refused(read, {"p9": frozenset({"write"})}) is not None
    refused = verdict.refused(read, {})  # never saw it prepared: unknown, as EXECUTE's
    assert refused is not None and refused[1] == frozenset({"unknown"})
    assert classify(b"EXECUTE p9").refused(read, {}) is not None
    assert verdict.refused(DEFAULT_ROLES["admin"], {"p9": frozenset({"identity"})}) is not None
    assert classify(b"EXPLAIN EXECUTE p9").refused(DEFAULT_ROLES["read"], {}) is None  # no run


def test_the_shape_cache_cannot_be_fooled_by_dollar_quotes() -> None:
    c = Classifier()
    first = c(b"select $q1$ $q2$; delete from t; select $q2$ $q1$")  # one string: read
    assert [sorted(s.classes) for s in first.statements] == [["read"]]
    sneaky = c(b"select $q2$ $q2$; delete from t; select $q1$ $q1$")  # same digits shape
    assert ["write"] in [sorted(s.classes) for s in sneaky.statements]
    a = c(b"select * from t where id = 12345")
    b = c(b"select * from t where id = 67890")
    assert b.plain and b.statements[0].text.endswith(b"67890") and a.statements != b.statements


_TERMS = ["1", "22", "a", "$1", "$2", "$q1$ x $q1$", "$1$ y $1$", "'x1'", 'U&"\\0061"',
          "a & 1", "b2", "(a + 3)"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TERMS), min_size=3, max_size=3).map(
    lambda t: f"select {t[0]} from t where a = {t[1]} and b = {t[2]}"),
    st.lists(st.sampled_from("0123456789"), min_size=100, max_size=100))
def test_the_fast_shape_check_agrees_with_the_full_one(text: str, digits: list[str]) -> None:
    # The data path's `shape` skips the `$tag$` and `U&` checks `__call__` makes before it
    # stores a shape: text of a stored shape (other digits) must pass them all the same.
    c = Classifier()
    sql = text.encode()
    c(sql)
    it = iter(digits)
    other = bytes(ord(next(it)) if 48 <= b <= 57 else b for b in sql)
    if c.shape(other) is not None:
        assert b"&" not in other and not _NOT_A_PARAM.search(other) and len(other) <= 8192
        assert c(other).plain


def test_role_classes_defaults_and_configuration() -> None:
    assert role_classes("read") == DEFAULT_ROLES["read"]
    assert "write" in role_classes("write") and "ddl" not in role_classes("write")
    assert "identity" not in role_classes("admin")
    assert role_classes("analyst") == DEFAULT_ROLES["read"]  # unknown names fail closed
    assert role_classes("analyst", {"analyst": ["read", "ddl"]}) == {"read", "ddl"}
    assert "identity" not in role_classes("ops", {"ops": ["all"]})
    assert "identity" in role_classes("ops", {"ops": ["all", "identity"]})
    # nobody holds `pinned`, whatever accord.yaml says
    assert "pinned" not in role_classes("ops", {"ops": ["all", "identity", "pinned"]})


def test_text_that_is_not_utf8_is_unknown_never_repaired() -> None:
    # The probe's bytes: as UTF-8 one SELECT of a string literal (what the server, pinned to
    # UTF8, reads too); a lone SJIS lead byte is not UTF-8 at all, and never "replaced".
    probe = b"SELECT E'\xc3\x81\\'; RESET ROLE; SELECT current_user; -- '"
    assert [sorted(s.classes) for s in classify(probe).statements] == [["read"]]
    assert [sorted(s.classes) for s in classify(b"SELECT '\x81\\'").statements] == [
        ["unknown"]]


@pytest.mark.parametrize(("sql", "kind"), [
    ("RESET ROLE", "identity"),
    ("SELECT query_to_xml('select set_config(''role'',''x'',false)', true, false, '')",
     "identity"),
    ("SET client_encoding = 'SJIS'", "encoding"),
    ("COPY orders TO PROGRAM 'id'", "server"),
    ("SELECT pg_read_file('/etc/passwd')", "server"),
    ("SELECT * FROM ts_stat('select pg_terminate_backend(1)')", "server"),
    ("SELECT query_to_xml('copy t to program ''id''', true, false, '')", "server"),
    ("LOAD 'plpython3u'", "server"),
    ("DELETE FROM orders", None),
    ("VACUUM", None),
    ("SELECT pg_sleep(1)", None),
])
def test_escalation_names_attempts_to_leave_the_grant(sql: str, kind: str | None) -> None:
    verdict = classify(sql.encode())
    refused = verdict.refused(DEFAULT_ROLES["read"])
    assert refused is not None
    assert escalation(refused[0], refused[1], "simple") == kind


def test_scram_sha_256_rfc7677_vector() -> None:
    client = ScramClient("pencil", user="user", nonce="rOprNGfwEbeRWgbNEkqO")
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = client.final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                         b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(AuthError):
        client.verify(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    with pytest.raises(AuthError, match="nonce"):
        ScramClient("x", nonce="abc").final(b"r=zzz,s=AAAA,i=4096")


def test_md5_password() -> None:
    # md5(md5("secret" + "alice") + salt), as PostgreSQL computes it.
    inner = hashlib.md5(b"secretalice").hexdigest().encode()  # noqa: S324 - PostgreSQL's md5
    expected = b"md5" + hashlib.md5(inner + b"\x01\x02\x03\x04").hexdigest().encode()  # noqa: S324
    assert md5_password("alice", "secret", b"\x01\x02\x03\x04") == expected


BASE = """\
users: [alice]
resources:
  - name: db
    roles: [read, analyst]
    gateway: {dsn_env: X, roles: {analyst: [read, session]}}
workflows: [{name: w, auto_approve: 'true'}]
"""


def test_gateway_config_is_validated_with_paths() -> None:
    loaded = parse_policy_text(BASE + "gateway: {listen: '0.0.0.0:7432', flush_interval: 250ms}")
    spec = loaded.spec.gateway
    assert spec is not None and spec.host_port == ("0.0.0.0", 7432)  # noqa: S104
    assert spec.flush_interval.total_seconds() == 0.25 and spec.redact_parameters
    bad = BASE.replace("[read, session]", "[read, sudo]").replace("X}", "X, roles2: 1}")
    with pytest.raises(PolicyError) as exc:
        parse_policy_text(bad.replace("roles2: 1", "set_role: true")
                          + "gateway: {listen: nowhere, tls: {required: true}}")
    text = str(exc.value)
    assert 'resources[0].gateway.roles.analyst[1]: unknown statement class "sudo"' in text
    assert "gateway.listen: must be HOST:PORT" in text
    assert "gateway.tls.required: needs cert and key" in text
    with pytest.raises(PolicyError, match="needs dsn_env or dsn_file"):
        parse_policy_text(BASE.replace("dsn_env: X, ", ""))


def test_gateway_processes_default_to_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_policy_text(BASE + "gateway: {}").spec.gateway
    assert spec is not None and spec.processes == "auto"
    # auto: one per core, at most 4, where several are tested (Linux, PostgreSQL)
    cores = len(os.sched_getaffinity(0))
    assert prefork.auto_count("postgresql") == max(1, min(cores, prefork.AUTO_MAX))
    assert prefork.auto_count("sqlite") == 1
    monkeypatch.setattr(prefork.sys, "platform", "darwin")
    assert prefork.auto_count("postgresql") == 1
    for text, count in (("3", 3), ("'3'", 3), ("auto", "auto")):
        spec = parse_policy_text(BASE + f"gateway: {{processes: {text}}}").spec.gateway
        assert spec is not None and spec.processes == count
    for bad in ("0", "65", "many", "2.5", "true"):
        with pytest.raises(PolicyError, match=r"gateway\.processes: must be auto or a number"):
            parse_policy_text(BASE + f"gateway: {{processes: {bad}}}")


def test_gateway_priority_is_a_nice_value_or_unset() -> None:
    spec = parse_policy_text(BASE + "gateway: {}").spec.gateway
    assert spec is not None and spec.priority is None
    spec = parse_policy_text(BASE + "gateway: {priority: -5}").spec.gateway
    assert spec is not None and spec.priority == -5
    for bad in ("-21", "20", "high"):
        with pytest.raises(PolicyError, match=r"gateway\.priority"):
            parse_policy_text(BASE + f"gateway: {{priority: {bad}}}")
