"""Statement classes: what a statement does, read with PostgreSQL's own parser (pglast).

Each statement gets a set of classes; a role may run it when the role holds every one.

* `read`: SELECT/VALUES/TABLE, SHOW, EXPLAIN (without ANALYZE), COPY ... TO STDOUT,
  cursors, LISTEN.
* `write`: INSERT/UPDATE/DELETE/MERGE (anywhere in the tree, CTEs included), COPY ...
  FROM STDIN, SELECT ... FOR UPDATE/SHARE, LOCK, NOTIFY, CALL, nextval/setval and
  large-object writes.
* `ddl`: CREATE/ALTER/DROP of schema objects, GRANT/REVOKE, COMMENT, TRUNCATE, SELECT
  INTO, CREATE TABLE AS, REFRESH, REINDEX, CLUSTER.
* `admin`: server-level work (roles, databases, extensions, VACUUM/ANALYZE, DO, COPY to or
  from files and programs, two-phase commit, ALTER SYSTEM, fast-path function calls,
  server-side file and process functions) and any statement kind not listed here.
* `transaction`: BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE, SET TRANSACTION.
* `session`: SET/RESET/DISCARD of ordinary settings, set_config of ordinary settings.
* `identity`: anything that changes the session's role: SET/RESET ROLE, SESSION
  AUTHORIZATION, RESET ALL, DISCARD ALL, set_config('role', ...).
* `pinned`: changing a setting that alters how the server reads statement text
  (`client_encoding`, `standard_conforming_strings`, `backslash_quote`,
  `escape_string_warning`). The gateway pins them at login so that this parser and the
  server read the same bytes alike; no role ever holds `pinned`.
  A setting named by computed text (set_config) may be any: `identity` and `pinned`.
  `UPDATE pg_settings` is set_config of each row it matches: `write` and the classes of
  the settings its WHERE names, or of any setting when it could match others.
* `unknown`: text the parser rejects (text that is not valid UTF-8 included: it is never
  "repaired" before checking), or an EXECUTE (EXPLAIN ANALYZE EXECUTE, CREATE TABLE AS
  EXECUTE) of a prepared statement the gateway never saw.

EXPLAIN ANALYZE, PREPARE, DECLARE and COPY (query) take the classes of the statement they
run, and so do functions that run SQL text they are given (`query_to_xml`, `ts_stat`,
`ts_rewrite`, `crosstab`, ...): their text, when a constant, is classified like any
statement, and is `unknown` when computed. Functions are classified by what they do:
NOTIFY's `pg_notify`, advisory locks and functions that assign a transaction id are
`write`; server file, process and signal functions, replication, statistics resets,
WAL and backup control, catalog surgery, index maintenance and `pg_sleep` are `admin`
(tests/gateway/postgres/test_confinement.py holds every volatile pg_catalog function to
this). Any other function, a user-defined one included, is `read` as far as this parser
can tell: what it does is bounded by the upstream login's privileges.

Classification is defence in depth. What confines a session is its upstream login: for a
provisioned role the gateway logs in as a login that holds only that role's group
(`accord.provisioning.postgres.gateway_login_name`), so even a statement this parser
misread could not make the session more than its grant.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pglast import parser as pgparser

from accord.gateway.classes import (  # the names every protocol shares, re-exported here
    ADMIN,
    DDL,
    DIGITS,
    IDENTITY,
    MAX_CACHED,
    PINNED,
    READ,
    SESSION,
    TRANSACTION,
    UNKNOWN,
    WRITE,
    VerdictCache,
)
from accord.gateway.classes import (
    ALL as ALL,
)
from accord.gateway.classes import (
    CLASSES as CLASSES,
)
from accord.gateway.classes import (
    DEFAULT_ROLES as DEFAULT_ROLES,
)
from accord.gateway.classes import (
    FALLBACK as FALLBACK,
)
from accord.gateway.classes import (
    role_classes as role_classes,
)

# PostgreSQL settings that change how the server tokenizes statement text, and the values
# the gateway pins them to at login (PostgreSQL's defaults; UTF8 is what the gateway parses).
PINNED_SETTINGS: dict[str, str] = {
    "client_encoding": "UTF8", "standard_conforming_strings": "on",
    "backslash_quote": "safe_encoding", "escape_string_warning": "on",
}

_READ_TOP = {
    "SelectStmt", "VariableShowStmt", "FetchStmt", "ClosePortalStmt", "ListenStmt",
    "UnlistenStmt", "DeallocateStmt",
}
_WRITE_TOP = {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "LockStmt", "NotifyStmt",
              "CallStmt"}
_DDL_TOP = {
    "CreateStmt", "AlterTableStmt", "DropStmt", "IndexStmt", "ViewStmt", "CreateTableAsStmt",
    "RefreshMatViewStmt", "TruncateStmt", "CommentStmt", "GrantStmt", "RenameStmt",
    "CreateSeqStmt", "AlterSeqStmt", "CreateFunctionStmt", "AlterFunctionStmt",
    "CreateSchemaStmt", "CreateDomainStmt", "AlterDomainStmt", "CompositeTypeStmt",
    "CreateEnumStmt", "AlterEnumStmt", "CreateRangeStmt", "DefineStmt", "RuleStmt",
    "CreateTrigStmt", "AlterObjectSchemaStmt", "AlterOwnerStmt", "ReindexStmt", "ClusterStmt",
    "CreatePolicyStmt", "AlterPolicyStmt", "CreateStatsStmt", "AlterStatsStmt",
    "AlterDefaultPrivilegesStmt", "CreateCastStmt", "CreateOpClassStmt", "CreateOpFamilyStmt",
    "AlterOpFamilyStmt", "AlterTypeStmt", "AlterCollationStmt", "CreateConversionStmt",
    "CreateTransformStmt", "SecLabelStmt", "AlterObjectDependsStmt", "AlterOperatorStmt",
    "AlterTSConfigurationStmt", "AlterTSDictionaryStmt", "CreatePLangStmt",
}
_TRANSACTION_OK = {
    "TRANS_STMT_BEGIN", "TRANS_STMT_START", "TRANS_STMT_COMMIT", "TRANS_STMT_ROLLBACK",
    "TRANS_STMT_SAVEPOINT", "TRANS_STMT_RELEASE", "TRANS_STMT_ROLLBACK_TO",
}
_IDENTITY_SETTINGS = frozenset({"role", "session_authorization"})
# The table's name in the JSON tree (or a string constant: `_is_pg_settings` tells apart).
_PG_SETTINGS = '"pg_settings"'
_NESTED_WRITE = ('"InsertStmt":', '"UpdateStmt":', '"DeleteStmt":', '"MergeStmt":',
                 '"lockingClause":')  # node types appear only as keys in the JSON
_WRITE_FUNCTIONS = {
    "nextval", "setval", "lo_create", "lo_creat", "lo_unlink", "lo_put", "lo_from_bytea",
    "lowrite", "lo_truncate", "lo_truncate64",
    # Side effects others see: a notification, a lock held, a transaction id assigned.
    "pg_notify", "pg_advisory_lock", "pg_advisory_lock_shared", "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared", "pg_advisory_unlock",
    "pg_advisory_unlock_shared", "pg_advisory_unlock_all", "txid_current",
    "pg_current_xact_id",
}
# Functions that reach the server's files, programs or other backends, or change what
# every session sees (replication, statistics, WAL, backups): `admin`, and an attempt by
# anyone else is a server-execution attempt (an alert, not only a refusal). Names and
# prefixes (`_server_function`), so that a server version's new kin are caught too.
_SERVER_FUNCTIONS = {
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "pg_rotate_logfile_old", "pg_read_file", "pg_read_file_old", "pg_read_binary_file",
    "pg_stat_file", "pg_switch_wal", "pg_promote", "pg_file_write", "pg_file_unlink",
    "pg_file_rename", "lo_export", "lo_import", "pg_logical_emit_message",
    "pg_import_system_collations", "pg_log_backend_memory_contexts", "pg_current_logfile",
    "pg_backup_start", "pg_backup_stop", "pg_start_backup", "pg_stop_backup",
    "pg_wal_replay_pause", "pg_wal_replay_resume", "pg_replication_slot_advance",
    # server configuration files, read
    "pg_hba_file_rules", "pg_ident_file_mappings", "pg_show_all_file_settings",
    # catalog surgery for pg_upgrade and extension scripts
    "pg_nextoid", "pg_stop_making_pinned_objects", "pg_extension_config_dump",
}
_SERVER_PREFIXES = (
    "dblink", "pg_ls_", "pg_stat_reset", "pg_create_", "pg_drop_", "pg_copy_",
    "pg_replication_origin_", "pg_logical_slot_", "binary_upgrade_",
)
# Not server execution, but no business of a read or write role: a session held asleep,
# index maintenance (as VACUUM), a snapshot exported to other sessions.
_ADMIN_FUNCTIONS = {"pg_sleep", "pg_sleep_for", "pg_sleep_until", "brin_summarize_range",
                    "brin_summarize_new_values", "brin_desummarize_range",
                    "gin_clean_pending_list", "pg_export_snapshot"}


def _server_function(name: str) -> bool:
    return name in _SERVER_FUNCTIONS or name.startswith(_SERVER_PREFIXES)


# Functions that run SQL text they are given, and which arguments hold it (ts_rewrite only
# in its two-argument form). connectby builds its query from names it is given: unknown.
_SQL_TEXT_ARGS: dict[str, tuple[int, ...]] = {
    "query_to_xml": (0,), "query_to_xmlschema": (0,), "query_to_xml_and_xmlschema": (0,),
    "ts_stat": (0,), "crosstab": (0, 1), "crosstab2": (0,), "crosstab3": (0,),
    "crosstab4": (0,),
}
_MAX_NESTING = 4  # SQL text inside SQL text, this deep at most (deeper: unknown)
# Statement kinds that load code into the server or run it as the server's OS user.
_SERVER_TOP = {"LoadStmt", "AlterSystemStmt", "CreateExtensionStmt", "CreatePLangStmt"}


class Statement(NamedTuple):
    """One statement of a query string: its text and what it does."""

    text: bytes  # the statement's own bytes, as sent
    classes: frozenset[str]
    prepares: str | None = None  # PREPARE name (SQL level)
    executes: str | None = None  # EXECUTE name (SQL level): the caller supplies its classes
    forgets: bool = False  # DEALLOCATE or DISCARD ALL: drops the session's prepared statements


class Verdict:
    """The statements of one query string (plain: a single SELECT/DML, see Classifier)."""

    __slots__ = ("plain", "statements")

    def __init__(self, statements: tuple[Statement, ...], plain: bool = False) -> None:
        self.statements = statements
        self.plain = plain

    def __repr__(self) -> str:
        return f"Verdict({self.statements!r}, plain={self.plain})"

    def refused(self, allowed: frozenset[str],
                prepared: Mapping[str, frozenset[str]] | None = None
                ) -> tuple[Statement, frozenset[str]] | None:
        """The first statement the role may not run, with the classes it lacks."""
        for st in self.statements:
            classes = st.classes
            if st.executes is not None:
                classes = classes | (prepared or {}).get(st.executes, frozenset({UNKNOWN}))
            missing = classes - allowed
            if missing:
                return st, frozenset(missing)
        return None


def escalation(statement: Statement, missing: frozenset[str], protocol: str) -> str | None:
    """Whether a refused statement tried to leave its grant, and how: `identity` (become
    another role), `encoding` (change how the server reads text) or `server` (reach the
    server's files, programs or other backends). None for an ordinary refusal.

    Only refusals come here (rarely), so re-parsing the text costs the data path nothing.
    """
    if IDENTITY in missing:
        return "identity"
    if PINNED in missing:
        return "encoding"
    if ADMIN not in missing and UNKNOWN not in missing:
        return None
    if protocol == "function":
        return "server"  # a fast-path call names any function by its OID
    try:
        text = statement.text.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "server" if _reaches_server(text, 0) else None


def _reaches_server(text: str, depth: int) -> bool:
    try:
        tree = json.loads(pgparser.parse_sql_json(text))
    except (pgparser.ParseError, ValueError, RecursionError):
        return False
    for raw_stmt in tree.get("stmts") or []:
        body = raw_stmt.get("stmt") or {}
        for top, node in body.items():
            if top in _SERVER_TOP:
                return True
            if top == "CopyStmt" and isinstance(node, dict) and (
                    node.get("filename") is not None or node.get("is_program")):
                return True
        for call in _walk(body, "FuncCall"):
            names = [n.get("String", {}).get("sval", "") for n in call.get("funcname", [])]
            name = str(names[-1]).lower() if names else ""
            if _server_function(name):
                return True
            args = call.get("args") or []
            positions = (1,) if name == "ts_rewrite" and len(args) == 2 else \
                _SQL_TEXT_ARGS.get(name, ())
            for i in positions:
                inner = _sql_text(args[i]) if i < len(args) else None
                if inner is not None and depth < _MAX_NESTING and \
                        _reaches_server(inner, depth + 1):
                    return True
    return False


# ------------------------------------------------------------------ classification


def _walk(node: Any, kind: str) -> Iterable[dict[str, Any]]:
    """Every node of type `kind` under `node` (the JSON form of the parse tree)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == kind and isinstance(value, dict):
                    yield value
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _const_string(node: Any) -> str | None:
    if isinstance(node, dict) and "A_Const" in node:
        sval = node["A_Const"].get("sval")
        if isinstance(sval, dict) and isinstance(sval.get("sval"), str):
            return str(sval["sval"])
    return None


def _setting_class(name: str) -> str:
    name = name.lower()
    if name in _IDENTITY_SETTINGS:
        return IDENTITY
    return PINNED if name in PINNED_SETTINGS else SESSION


# A setting whose name is computed may be any: the strictest classes.
_ANY_SETTING = frozenset({IDENTITY, PINNED})


def _is_pg_settings(update: dict[str, Any]) -> bool:
    """Whether an UPDATE's table is pg_settings (in any schema: stricter than the server's
    search_path, never laxer), whose rule makes each row updated a set_config."""
    relation = update.get("relation") or {}
    return relation.get("relname") == "pg_settings"


def _column_is_name(node: Any) -> bool:
    if not isinstance(node, dict) or "ColumnRef" not in node:
        return False
    fields = node["ColumnRef"].get("fields") or []
    return bool(fields) and fields[-1].get("String", {}).get("sval") == "name"


def _settings_named(where: Any) -> set[str] | None:
    """The setting names a WHERE clause of an UPDATE of pg_settings restricts it to, or
    None when it could match any row (the strictest reading of anything else)."""
    if not isinstance(where, dict):
        return None
    if "BoolExpr" in where:
        node = where["BoolExpr"]
        parts = [_settings_named(a) for a in node.get("args") or []]
        if node.get("boolop") == "AND_EXPR":  # rows that match every part
            known = [p for p in parts if p is not None]
            return set.intersection(*known) if known else None
        if node.get("boolop") == "OR_EXPR" and parts and all(p is not None for p in parts):
            return set().union(*(p for p in parts if p is not None))
        return None
    expr = where.get("A_Expr")
    if not isinstance(expr, dict) or \
            [n.get("String", {}).get("sval") for n in expr.get("name") or []] != ["="]:
        return None
    left, right = expr.get("lexpr"), expr.get("rexpr")
    if not _column_is_name(left):
        left, right = right, left
    if not _column_is_name(left):
        return None
    if expr.get("kind") == "AEXPR_OP":
        value = _sql_text(right)
        return None if value is None else {value}
    if expr.get("kind") == "AEXPR_IN" and isinstance(right, dict) and "List" in right:
        values = [_sql_text(item) for item in right["List"].get("items") or []]
        return None if any(v is None for v in values) else {v for v in values if v}
    return None


def _pg_settings_classes(update: dict[str, Any]) -> set[str]:
    """The classes of the settings an UPDATE of pg_settings changes, as SET's would be."""
    names = _settings_named(update.get("whereClause"))
    if names is None:
        return set(_ANY_SETTING)
    return {_setting_class(n) for n in names} or {SESSION}


def _sql_text(node: Any) -> str | None:
    """The text of a constant string argument (also cast: `'select 1'::text`)."""
    if isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    return _const_string(node)


def _is_non_string_const(node: Any) -> bool:
    return isinstance(node, dict) and "A_Const" in node and "sval" not in node["A_Const"]


def _function_classes(call: dict[str, Any], depth: int = 0) -> set[str]:
    names = [n.get("String", {}).get("sval", "") for n in call.get("funcname", [])]
    name = str(names[-1]).lower() if names else ""
    args = call.get("args") or []
    if name == "set_config":
        setting = _const_string(args[0]) if args else None
        return set(_ANY_SETTING) if setting is None else {_setting_class(setting)}
    if name in _WRITE_FUNCTIONS:
        return {WRITE}
    if name in _ADMIN_FUNCTIONS or _server_function(name):
        return {ADMIN}
    positions = _SQL_TEXT_ARGS.get(name)
    if name == "ts_rewrite" and len(args) == 2:
        positions = (1,)
    elif name == "connectby":
        return {UNKNOWN}
    if positions is None:
        return set()
    out: set[str] = set()
    for i in positions:
        if i >= len(args) or _is_non_string_const(args[i]):
            continue
        text = _sql_text(args[i])
        if text is None or depth >= _MAX_NESTING:
            out.add(UNKNOWN)  # computed text: nobody can say what it runs
            continue
        for st in _classify_text(text, depth + 1):
            out |= st
    return out or {READ}


def _classify_text(text: str, depth: int) -> list[set[str]]:
    """The classes of each statement of SQL text run by a function (never raises)."""
    try:
        if "\0" in text:
            raise ValueError("NUL in statement text")
        parsed = json.loads(pgparser.parse_sql_json(text))
    except (pgparser.ParseError, ValueError, RecursionError):
        return [{UNKNOWN}]
    out: list[set[str]] = []
    for raw_stmt in parsed.get("stmts") or []:
        body = raw_stmt.get("stmt") or {}
        if not body:
            out.append({UNKNOWN})
            continue
        top, node = next(iter(body.items()))
        classes, _, executes = _classes(top, node if isinstance(node, dict) else {},
                                        json.dumps(body), depth)
        if executes is not None:
            classes.add(UNKNOWN)  # a prepared statement of the session's, out of sight
        out.append(classes)
    return out


def _truthy_option(elem: dict[str, Any]) -> bool:
    arg = elem.get("arg")
    if arg is None:
        return True
    if "String" in arg:
        return str(arg["String"].get("sval", "")).lower() not in ("false", "off", "0", "no")
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    if "A_Const" in arg:
        const = arg["A_Const"]
        if "boolval" in const:
            return bool(const["boolval"].get("boolval", False))
        if "ival" in const:
            return bool(const["ival"].get("ival", 0))
        if "sval" in const:
            return str(const["sval"].get("sval", "")).lower() not in ("false", "off", "0", "no")
    return True


def _classes(top: str, node: dict[str, Any], raw: str, depth: int = 0
             ) -> tuple[set[str], str | None, str | None]:
    """(classes, prepared name, executed name) of one statement's tree."""
    prepares = executes = None
    inner: Any = None
    if top in _READ_TOP:
        out = {READ}
        if '"intoClause":' in raw:
            out.add(DDL)
    elif top in _WRITE_TOP:
        out = {WRITE}
        if top == "CallStmt":
            out |= _function_classes(node.get("funccall") or {})
    elif top in _DDL_TOP:
        out = {DDL}
        query = node.get("query") if top == "CreateTableAsStmt" else None
        if isinstance(query, dict) and "ExecuteStmt" in query:  # CREATE TABLE AS EXECUTE
            executes = str(query["ExecuteStmt"].get("name", ""))
    elif top == "ExplainStmt":
        options = [o.get("DefElem", {}) for o in node.get("options") or []]
        analyze = any(o.get("defname") == "analyze" and _truthy_option(o) for o in options)
        if not analyze:
            return {READ}, None, None  # nothing in it runs
        out = {READ}
        inner = node.get("query")
    elif top == "CopyStmt":
        if node.get("filename") is not None or node.get("is_program"):
            out = {ADMIN}
        elif node.get("is_from"):
            out = {WRITE}
        else:
            out = {READ}
    elif top in ("PrepareStmt", "DeclareCursorStmt"):
        out = {READ} if top == "DeclareCursorStmt" else set()
        inner = node.get("query")
        if top == "PrepareStmt":
            prepares = str(node.get("name", ""))
    elif top == "ExecuteStmt":
        out = set()
        executes = str(node.get("name", ""))
    elif top == "TransactionStmt":
        out = {TRANSACTION} if node.get("kind") in _TRANSACTION_OK else {ADMIN}
    elif top == "VariableSetStmt":
        kind = node.get("kind")
        name = str(node.get("name", "")).lower()
        if kind == "VAR_RESET_ALL":
            out = {IDENTITY}
        elif kind == "VAR_SET_MULTI" and name == "transaction":
            out = {TRANSACTION}
        else:
            out = {_setting_class(name)}
    elif top == "DiscardStmt":
        out = {IDENTITY} if node.get("target") == "DISCARD_ALL" else {SESSION}
    else:
        out = {ADMIN}
    if inner is not None:
        sub = next(iter(inner.items()), None) if isinstance(inner, dict) else None
        if sub is None:
            out.add(UNKNOWN)
        else:
            # EXPLAIN ANALYZE EXECUTE runs a prepared statement: its classes are looked up
            # as for EXECUTE itself (an unknown name is `unknown`).
            more, _, executes = _classes(sub[0], sub[1], json.dumps(inner), depth)
            out |= more
    if any(marker in raw for marker in _NESTED_WRITE):
        out.add(WRITE)
    if _PG_SETTINGS in raw:  # UPDATE pg_settings is SET in other words, CTEs included
        updates = [node] if top == "UpdateStmt" else []
        for update in [*updates, *_walk(node, "UpdateStmt")]:
            if _is_pg_settings(update):
                out |= _pg_settings_classes(update)
    if '"FuncCall":' in raw:
        for call in _walk(node, "FuncCall"):
            out |= _function_classes(call, depth)
    return out, prepares, executes


_FAST_TOP = {"SelectStmt": READ, "InsertStmt": WRITE, "UpdateStmt": WRITE,
             "DeleteStmt": WRITE, "MergeStmt": WRITE}
_STMT = '{"stmt":{"'


def _fast(tree: str, sql: bytes) -> Verdict | None:
    """Plain DML and SELECT without function calls, read from the JSON text alone.

    Node types appear in the JSON only as keys (`"DeleteStmt":`); inside string
    constants quotes are escaped, so a substring test cannot be fooled into missing one.
    """
    start = tree.find(_STMT)
    if start < 0 or tree.find(_STMT, start + 1) >= 0:
        return None
    top = tree[start + len(_STMT):tree.find('"', start + len(_STMT))]
    base = _FAST_TOP.get(top)
    if base is None or '"FuncCall":' in tree or _PG_SETTINGS in tree:
        return None
    classes = {base}
    if ('"InsertStmt":' in tree or '"UpdateStmt":' in tree or '"DeleteStmt":' in tree
            or '"MergeStmt":' in tree or '"lockingClause":' in tree):
        classes.add(WRITE)
    if '"intoClause":' in tree:
        classes.add(DDL)
    return Verdict((Statement(sql.strip(), _frozen(classes)),), plain=True)


_FROZEN: dict[tuple[str, ...], frozenset[str]] = {}


def _frozen(classes: set[str]) -> frozenset[str]:
    key = tuple(sorted(classes))
    hit = _FROZEN.get(key)
    if hit is None:
        hit = _FROZEN[key] = frozenset(classes)
    return hit


def classify(sql: bytes) -> Verdict:
    """Split `sql` into statements and classify each (never raises)."""
    try:
        if b"\0" in sql:  # the server reads up to a NUL, the parser too: refuse the doubt
            raise ValueError("NUL in statement text")
        text = sql.decode("utf-8")  # strict: invalid UTF-8 is never "repaired" to check it
        tree = pgparser.parse_sql_json(text)
    except (UnicodeDecodeError, pgparser.ParseError, ValueError, RecursionError):
        return Verdict((Statement(sql, frozenset({UNKNOWN})),))
    fast = _fast(tree, sql)
    if fast is not None:
        return fast
    parsed = json.loads(tree)
    stmts = parsed.get("stmts") or []
    if not stmts:
        return Verdict(())
    encoded = text.encode("utf-8") if len(stmts) > 1 else sql
    out: list[Statement] = []
    for raw_stmt in stmts:
        body = raw_stmt.get("stmt") or {}
        if len(stmts) > 1:
            start = int(raw_stmt.get("stmt_location", 0))
            length = int(raw_stmt.get("stmt_len", 0))
            piece = (encoded[start:start + length] if length else encoded[start:]).strip()
        else:
            piece = sql.strip()
        if not body:
            out.append(Statement(piece, frozenset({UNKNOWN})))
            continue
        top, node = next(iter(body.items()))
        raw = tree if len(stmts) == 1 else json.dumps(body)
        classes, prepares, executes = _classes(top, node if isinstance(node, dict) else {}, raw)
        forgets = top == "DeallocateStmt" or (
            top == "DiscardStmt" and isinstance(node, dict) and node.get("target") == "DISCARD_ALL")
        out.append(Statement(piece, frozenset(classes), prepares, executes, forgets))
    return Verdict(tuple(out))


_NOT_A_PARAM = re.compile(rb"\$(?![0-9])")


class Classifier(VerdictCache[Verdict]):
    """`classify` with the core's two bounded caches (`VerdictCache`).

    * By exact text: prepared statements (the same text parsed again and again) and
      repeated queries.
    * By shape, for plain SELECT/DML statements without function calls, whose classes
      depend only on which node types occur: the text with every digit turned into 0.
      Changing digits cannot change how such text tokenizes (no dollar quoting, `$tag$`,
      and no `U&` escapes are allowed in it), only literal values and names, which plain
      statements' classes never depend on. So `... WHERE aid = 12345` is parsed once.
    """

    def shape(self, sql: bytes) -> frozenset[str] | None:
        """The classes of a plain statement of a shape seen before, else None (the data
        path's fast check; `__call__` does the rest).

        No need to look for `$tag$` or `U&` first, as `__call__` does before storing a
        shape: turning digits into 0 keeps every `$`, `&` and whether a digit follows a
        `$`, and the text's length, so text whose shape was stored passes those checks too.
        """
        return self._shape.get(sql.translate(DIGITS))

    def __call__(self, sql: bytes) -> Verdict:
        hit = self._exact.get(sql)
        if hit is not None:
            return hit
        key = None
        if (b"$" not in sql or not _NOT_A_PARAM.search(sql)) and b"&" not in sql \
                and len(sql) <= MAX_CACHED:
            key = sql.translate(DIGITS)
            classes = self._shape.get(key)
            if classes is not None:
                return Verdict((Statement(sql.strip(), classes),), plain=True)
        return self.remember(sql, key, classify(sql))
