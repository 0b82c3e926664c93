"""Statement classes for MySQL and MariaDB, read with sqlglot's MySQL dialect.

The same classes as PostgreSQL's (`accord.gateway.classes`, docs/gateway.md):

* `read`: SELECT (UNION, WITH), TABLE, VALUES, SHOW, DESCRIBE, EXPLAIN (without
  ANALYZE), HELP, HANDLER, DO, `SET @variable`, GET DIAGNOSTICS.
* `write`: INSERT, REPLACE, UPDATE, DELETE, LOAD DATA (from the client, see below), CALL,
  LOCK TABLES, SELECT ... FOR UPDATE / FOR SHARE / LOCK IN SHARE MODE, and functions with
  effects others see (`GET_LOCK` and kin, sequences' `NEXTVAL`/`SETVAL`).
* `ddl`: CREATE/ALTER/DROP/RENAME of tables, views, indexes, routines, triggers, events,
  sequences; TRUNCATE.
* `admin`: GRANT/REVOKE, users and roles, databases, servers and tablespaces, SET GLOBAL
  (and PERSIST, `@@global.`), KILL, SHUTDOWN, FLUSH, RESET, PURGE, replication, plugins,
  OPTIMIZE/REPAIR/CHECK/ANALYZE TABLE, XA, LOAD DATA INFILE (a server file), SELECT ...
  INTO OUTFILE/DUMPFILE, server file and process functions (`LOAD_FILE`, `SLEEP`,
  `BENCHMARK`, `SYS_EXEC`...), and any statement kind not listed here.
* `transaction`: BEGIN, START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, SET
  TRANSACTION.
* `session`: SET of ordinary session variables, SET NAMES/CHARACTER SET to a safe
  character set, USE of the resource's own database, UNLOCK TABLES, DEALLOCATE PREPARE.
* `identity`: SET ROLE, SET DEFAULT ROLE, SET PASSWORD, user and role management, GRANT
  and REVOKE, and a DEFINER naming anyone but CURRENT_USER.
* `pinned` (no role holds it): changing how the server reads statement text: a character
  set whose multi-byte characters can end in a backslash or quote (`sjis`, `gbk`, `big5`,
  `cp932`, `gb18030`, or a value computed at run time), and an `sql_mode` with
  `NO_BACKSLASH_ESCAPES`, `ANSI_QUOTES`, or a mode that includes one (`ANSI`, `ORACLE`,
  ...), or computed. The upstream login clears those flags (`upstream.PIN_SQL_MODE`).
* `unknown`: text the parser rejects (not valid UTF-8, a NUL, a statement sqlglot cannot
  parse), MySQL's executable comments (`/*! ... */`, `/*M! ... */`: the server runs what
  they hold, a parser reads a comment), PREPARE from a variable, and EXECUTE of a statement
  the session never prepared in SQL.

`LOAD DATA LOCAL` (and `LOAD XML LOCAL`) is also flagged `local_infile`: the gateway refuses
it whatever the role (the client would send a file of its machine; upstream sessions are
opened without the capability, so the server would refuse it too).

PREPARE from a literal takes the classes of the text it prepares; EXECUTE those of the
prepared statement (the conversation keeps them). Multi-statement text is checked statement
by statement; one refused statement refuses the whole text.

Classification is defence in depth: what confines a session is its upstream login, which for
a provisioned role holds only that role's MariaDB role.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlglot import ParseError, TokenError, exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.tokenizer_core import Token, TokenType

from accord.gateway.classes import (
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

_DIALECT = MySQL()


class _Lexer(MySQL.Tokenizer):
    """MySQL's tokens, every statement lexed whole: sqlglot's own tokenizer reads what
    follows PREPARE, EXECUTE, REPLACE, RENAME and FETCH as one opaque string."""

    COMMANDS: set[TokenType] = set()  # type: ignore[misc]  # none read as opaque


_LEXER = _Lexer(dialect=_DIALECT)
# Character sets in which a byte of a multi-byte character can be a backslash or quote: the
# gateway's parser (UTF-8) and the server would read the same bytes differently.
UNSAFE_CHARSETS = frozenset({"big5", "sjis", "gbk", "cp932", "gb18030", "ujis", "eucjpms"})
SAFE_CHARSETS = frozenset({"utf8", "utf8mb3", "utf8mb4", "latin1", "ascii", "binary",
                           "default"})
# sql_mode flags that change how text is tokenized (the composite modes include ANSI_QUOTES).
LEXING_MODES = ("NO_BACKSLASH_ESCAPES", "ANSI_QUOTES", "ANSI", "ORACLE", "MSSQL", "DB2",
                "POSTGRESQL", "MAXDB")
# Collation ids (the handshake's character set byte) of the character sets above.
UNSAFE_COLLATIONS = frozenset({1, 84, 13, 88, 28, 87, 95, 96, 12, 91, 97, 98, 248, 249, 250})
_CHARSET_VARIABLES = frozenset({"character_set_client", "character_set_connection",
                                "character_set_results", "collation_connection"})
# Session variables that need server privileges and reach beyond the session.
_ADMIN_VARIABLES = frozenset({"sql_log_bin", "sql_log_off", "pseudo_thread_id",
                              "pseudo_slave_mode", "gtid_next", "gtid_seq_no", "server_id",
                              "gtid_domain_id", "skip_replication", "debug", "debug_dbug",
                              "wsrep_on", "binlog_format", "sql_slave_skip_counter"})
_SERVER_FUNCTIONS = frozenset({"LOAD_FILE", "SYS_EXEC", "SYS_EVAL", "SYS_GET", "SYS_SET",
                               "MASTER_POS_WAIT", "SOURCE_POS_WAIT", "MASTER_GTID_WAIT",
                               "WAIT_FOR_EXECUTED_GTID_SET", "BINLOG_GTID_POS"})
_ADMIN_FUNCTIONS = frozenset({"SLEEP", "BENCHMARK"})
_WRITE_FUNCTIONS = frozenset({"GET_LOCK", "RELEASE_LOCK", "RELEASE_ALL_LOCKS", "IS_FREE_LOCK",
                              "IS_USED_LOCK", "NEXTVAL", "SETVAL", "LASTVAL", "NEXT",
                              "UUID_SHORT"})
_DDL_OBJECTS = frozenset({"TABLE", "VIEW", "INDEX", "PROCEDURE", "FUNCTION", "TRIGGER",
                          "EVENT", "SEQUENCE", "PACKAGE", "TYPE", "SYNONYM"})
_IDENTITY_OBJECTS = frozenset({"USER", "ROLE"})
_CREATE_SKIP = frozenset({"OR", "REPLACE", "TEMPORARY", "UNIQUE", "FULLTEXT", "SPATIAL",
                          "ONLINE", "OFFLINE", "IGNORE", "AGGREGATE", "IF", "NOT", "EXISTS",
                          "SQL", "SECURITY", "DEFINER", "INVOKER", "ALGORITHM", "UNDEFINED",
                          "MERGE", "TEMPTABLE", "=", "BODY"})
_SERVER_TOP = frozenset({"KILL", "SHUTDOWN", "RESTART", "FLUSH", "RESET", "PURGE", "CHANGE",
                         "INSTALL", "UNINSTALL", "BINLOG", "CACHE", "BACKUP", "CLONE",
                         "IMPORT"})
_ADMIN_TOP = frozenset({"OPTIMIZE", "REPAIR", "CHECK", "CHECKSUM", "XA", "STOP", "SIGNAL",
                        "RESIGNAL"})
_READ_TOP = frozenset({"SHOW", "DESCRIBE", "DESC", "HELP", "HANDLER", "GET"})
_TX_TOP = frozenset({"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "WORK"})
_QUERY_TOP = frozenset({"SELECT", "WITH", "(", "TABLE", "VALUES"})
_DML_TOP = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})


class Statement(NamedTuple):
    """One statement of a query string: its text and what it does."""

    text: bytes  # the statement's own bytes, as sent
    classes: frozenset[str]
    escalation: str | None = None  # identity | encoding | server: an attempt to leave the grant
    prepares: str | None = None  # PREPARE name (SQL level), lower case
    executes: str | None = None  # EXECUTE name: the caller supplies the prepared classes
    forgets: str | None = None  # DEALLOCATE PREPARE name
    uses: str | None = None  # USE database
    local_infile: bool = False  # LOAD DATA LOCAL: refused whatever the role


class Verdict(NamedTuple):
    statements: tuple[Statement, ...]
    plain: bool = False  # a single SELECT or DML statement (cacheable by shape)


def _unknown(text: bytes) -> Verdict:
    return Verdict((Statement(text, frozenset({UNKNOWN})),))


def _word(tok: Token) -> str:
    return tok.text.upper() if tok.token_type not in (TokenType.STRING,
                                                      TokenType.IDENTIFIER) else ""


def _functions(tokens: list[Token]) -> tuple[set[str], str | None]:
    """Classes and escalation of the functions the tokens call (a name then `(`)."""
    classes: set[str] = set()
    escalation = None
    for i in range(len(tokens) - 1):
        if tokens[i + 1].token_type != TokenType.L_PAREN:
            continue
        tok = tokens[i]
        if tok.token_type in (TokenType.STRING, TokenType.IDENTIFIER):
            name = tok.text.upper()  # `sleep`(1) calls SLEEP too
        else:
            name = tok.text.upper()
        if name in _SERVER_FUNCTIONS:
            classes.add(ADMIN)
            escalation = "server"
        elif name in _ADMIN_FUNCTIONS:
            classes.add(ADMIN)
        elif name in _WRITE_FUNCTIONS:
            classes.add(WRITE)
    return classes, escalation


def _has(words: list[str], *seq: str) -> bool:
    n = len(seq)
    return any(tuple(words[i:i + n]) == seq for i in range(len(words) - n + 1))


def _parses(text: str) -> bool:
    if text[:7].upper() == "REPLACE":  # sqlglot reads REPLACE as an opaque command; its
        text = "INSERT" + text[7:]  # grammar is INSERT's
    try:
        trees = _DIALECT.parse(text)
    except (ParseError, TokenError, ValueError, RecursionError):
        return False
    return bool(trees) and not any(isinstance(t, exp.Command) for t in trees if t is not None)


def _query_classes(text: str, tokens: list[Token], words: list[str]) -> tuple[set[str],
                                                                            str | None]:
    """SELECT and DML: parsed whole (a statement sqlglot cannot parse is `unknown`)."""
    classes, escalation = _functions(tokens)
    if words[0] in _DML_TOP:
        classes.add(WRITE)
    else:
        classes.add(READ)
        if _has(words, "FOR", "UPDATE") or _has(words, "FOR", "SHARE") or \
                _has(words, "LOCK", "IN", "SHARE", "MODE"):
            classes.add(WRITE)
    if _has(words, "INTO", "OUTFILE") or _has(words, "INTO", "DUMPFILE"):
        return classes | {ADMIN}, "server"
    if not _parses(text):
        classes.add(UNKNOWN)
    return classes, escalation


def _value_tokens(tokens: list[Token]) -> list[list[Token]]:
    """The comma-separated parts of a SET, at the top level."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for tok in tokens:
        if tok.token_type == TokenType.L_PAREN:
            depth += 1
        elif tok.token_type == TokenType.R_PAREN:
            depth -= 1
        elif tok.token_type == TokenType.COMMA and depth == 0:
            parts.append([])
            continue
        parts[-1].append(tok)
    return [p for p in parts if p]


def _constant(tokens: list[Token]) -> str | None:
    """The value of a single-constant expression (a string, a name, a number), else None."""
    if len(tokens) == 1 and tokens[0].token_type in (TokenType.STRING, TokenType.VAR,
                                                     TokenType.NUMBER, TokenType.IDENTIFIER):
        return tokens[0].text
    if len(tokens) == 1 and tokens[0].token_type not in (TokenType.PARAMETER,
                                                         TokenType.SESSION_PARAMETER):
        return tokens[0].text  # a keyword such as DEFAULT, ON, OFF
    return None


def _charset_classes(value: str | None) -> tuple[set[str], str | None]:
    if value is not None and value.lower() in SAFE_CHARSETS:
        return {SESSION}, None
    return {PINNED}, "encoding"


def _set_classes(tokens: list[Token]) -> tuple[set[str], str | None]:
    """SET: of what, for whom."""
    words = [_word(t) for t in tokens]
    if len(words) < 2:
        return {UNKNOWN}, None
    second = words[1]
    if second in ("ROLE", "PASSWORD") or (second == "DEFAULT" and words[2:3] == ["ROLE"]):
        return {IDENTITY}, "identity"
    if second in ("GLOBAL", "PERSIST", "PERSIST_ONLY"):
        return {ADMIN}, "server"
    if second == "TRANSACTION" or words[1:3] in (["SESSION", "TRANSACTION"],
                                                 ["LOCAL", "TRANSACTION"]):
        return {TRANSACTION}, None
    if second == "STATEMENT":  # MariaDB: SET STATEMENT var=value[, ...] FOR statement
        try:
            at = words.index("FOR")
        except ValueError:
            return {UNKNOWN}, None
        inner_sets, inner_esc = _set_classes([tokens[0], *tokens[2:at]])
        return inner_sets | {UNKNOWN}, inner_esc  # the statement is re-read by the caller
    if second == "NAMES" or second == "CHARSET" or words[1:3] == ["CHARACTER", "SET"]:
        rest = tokens[3:] if second == "CHARACTER" else tokens[2:]
        charset = rest[0].text if rest else None
        if len(rest) > 1 and _word(rest[1]) != "COLLATE":
            charset = None
        return _charset_classes(charset)
    classes: set[str] = set()
    escalation: str | None = None
    for part in _value_tokens(tokens[1:]):
        # [GLOBAL | SESSION | LOCAL | @@global. | @@session. | @@ | @] name (= | :=) value
        i = 0
        scope = "session"
        user_variable = False
        if part[i].token_type == TokenType.SESSION_PARAMETER:
            i += 1
            if i + 1 < len(part) and part[i + 1].token_type == TokenType.DOT:
                scope = part[i].text.lower()
                i += 2
        elif part[i].token_type == TokenType.PARAMETER:
            user_variable = True
            i += 1
        elif _word(part[i]) in ("GLOBAL", "SESSION", "LOCAL", "PERSIST", "PERSIST_ONLY"):
            scope = part[i].text.lower()
            i += 1
        if i >= len(part):
            return {UNKNOWN}, None
        name = part[i].text.lower()
        eq = i + 1
        if eq >= len(part) or part[eq].token_type not in (TokenType.EQ, TokenType.COLON_EQ):
            return {UNKNOWN}, None
        value = part[eq + 1:]
        found, esc = _functions(value)
        classes |= found
        escalation = escalation or esc
        if any(_word(t) == "SELECT" for t in value):
            classes.add(READ)
        if user_variable:
            classes.add(READ)
            continue
        if scope in ("global", "persist", "persist_only"):
            classes.add(ADMIN)
            escalation = "server"
        elif name in _CHARSET_VARIABLES:
            found, esc = _charset_classes(_constant(value))
            classes |= found
            escalation = escalation or esc
        elif name == "sql_mode":
            mode = _constant(value)
            if mode is None or any(m in mode.upper() for m in LEXING_MODES):
                classes.add(PINNED)
                escalation = "encoding"
            else:
                classes.add(SESSION)
        elif name in _ADMIN_VARIABLES:
            classes.add(ADMIN)
            escalation = escalation or "server"
        elif name in ("role", "default_role"):
            classes.add(IDENTITY)
            escalation = "identity"
        else:
            classes.add(SESSION)
    return classes, escalation


def _object_after(words: list[str], start: int) -> str:
    """The kind of object a CREATE/ALTER/DROP names, past its modifiers."""
    i = start
    while i < len(words):
        w = words[i]
        if w == "DEFINER" and words[i + 1:i + 2] == ["="]:  # DEFINER = user[@host]
            i += 3
            if words[i:i + 1] == ["@"] or words[i:i + 2] == ["(", ")"]:  # @host, CURRENT_USER()
                i += 2
            continue
        if w in _CREATE_SKIP or w == "":
            i += 1
            continue
        return w
    return ""


def _definer_other(tokens: list[Token]) -> bool:
    """A DEFINER clause naming anyone but the session's own user."""
    words = [_word(t) for t in tokens]
    for i, w in enumerate(words):
        if w == "DEFINER" and i + 1 < len(words) and tokens[i + 1].token_type == TokenType.EQ:
            after = words[i + 2] if i + 2 < len(words) else ""
            if after not in ("CURRENT_USER",):
                return True
    return False


def _ddl_classes(tokens: list[Token], words: list[str]) -> tuple[set[str], str | None]:
    top = words[0]
    if top == "TRUNCATE":
        return {DDL}, None
    what = _object_after(words, 1)
    if top == "RENAME" and what in ("USER",):
        return {ADMIN, IDENTITY}, "identity"
    classes: set[str]
    escalation: str | None = None
    if what in _IDENTITY_OBJECTS:
        return {ADMIN, IDENTITY}, "identity"
    if what == "FUNCTION" and "SONAME" in words:  # a UDF: a shared library on the server
        return {ADMIN}, "server"
    if what in _DDL_OBJECTS:
        classes = {DDL}
    elif what in ("DATABASE", "SCHEMA", "SERVER", "TABLESPACE", "LOGFILE", "RESOURCE",
                  "SPATIAL", "INSTANCE", "EVENT_SCHEDULER"):
        classes = {ADMIN}
    else:
        classes = {ADMIN}
    if _definer_other(tokens):
        classes.add(IDENTITY)
        escalation = "identity"
    return classes, escalation


def _pieces(text: str, tokens: list[Token]) -> list[tuple[str, list[Token]]]:
    """Split at top-level semicolons into (statement text, its tokens)."""
    out: list[tuple[str, list[Token]]] = []
    current: list[Token] = []
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            if current:
                out.append((text[current[0].start:current[-1].end + 1], current))
            current = []
            continue
        current.append(tok)
    if current:
        out.append((text[current[0].start:current[-1].end + 1], current))
    return out


def _statement(text: str, tokens: list[Token], depth: int = 0) -> Statement:
    raw = text.encode("utf-8")
    words = [_word(t) for t in tokens]
    top = words[0] if tokens[0].token_type != TokenType.L_PAREN else "("
    esc: str | None = None
    classes: set[str]
    if top in _QUERY_TOP or top in _DML_TOP:
        classes, esc = _query_classes(text, tokens, words)
    elif top in ("EXPLAIN", "DESCRIBE", "DESC", "ANALYZE"):
        rest = tokens[1:]
        if top == "ANALYZE" and words[1:2] in (["TABLE"], ["NO_WRITE_TO_BINLOG"], ["LOCAL"]):
            return Statement(raw, frozenset({ADMIN}))
        if top == "ANALYZE" or (rest and _word(rest[0]) == "ANALYZE"):
            # Runs the statement: its classes (EXPLAIN ANALYZE, MariaDB's ANALYZE stmt).
            inner = rest if top == "ANALYZE" else rest[1:]
            if not inner or depth > 2:
                return Statement(raw, frozenset({UNKNOWN}))
            sub = _statement(text[inner[0].start:inner[-1].end + 1], inner, depth + 1)
            return sub._replace(text=raw, classes=sub.classes | {READ})
        if len(words) > 1 and words[1] in _DML_TOP:  # EXPLAIN of DML does not run it
            classes = {READ}
        else:
            classes, esc = _functions(tokens)
            classes.add(READ)
    elif top in _READ_TOP:
        classes = {READ}
        if top == "HANDLER" and not _has(words, "OPEN") and not _has(words, "READ") and \
                not _has(words, "CLOSE"):
            classes = {UNKNOWN}
    elif top == "DO":
        classes, esc = _functions(tokens)
        classes.add(READ)
    elif top in _TX_TOP or (top == "START" and words[1:2] == ["TRANSACTION"]):
        classes = {TRANSACTION}
    elif top == "SET":
        if words[1:2] == ["STATEMENT"] and "FOR" in words:
            at = words.index("FOR")
            sets, esc = _set_classes([tokens[0], *tokens[2:at]])
            sets.discard(UNKNOWN)
            if at + 1 >= len(tokens) or depth > 2:
                return Statement(raw, frozenset({UNKNOWN}))
            inner = tokens[at + 1:]
            sub = _statement(text[inner[0].start:inner[-1].end + 1], inner, depth + 1)
            return sub._replace(text=raw, classes=sub.classes | sets,
                                escalation=esc or sub.escalation)
        classes, esc = _set_classes(tokens)
    elif top in ("GRANT", "REVOKE"):
        classes, esc = {ADMIN, IDENTITY}, "identity"
    elif top in ("CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE"):
        if top in ("DROP", "DEALLOCATE") and words[1:2] == ["PREPARE"]:
            name = tokens[2].text.lower() if len(tokens) > 2 else None
            return Statement(raw, frozenset({SESSION}), forgets=name)
        classes, esc = _ddl_classes(tokens, words)
    elif top == "DEALLOCATE":
        name = tokens[2].text.lower() if len(tokens) > 2 else None
        return Statement(raw, frozenset({SESSION}), forgets=name)
    elif top == "LOAD":
        if words[1:2] == ["INDEX"]:
            classes, esc = {ADMIN}, "server"
        elif words[1:2] in (["DATA"], ["XML"]):
            local = "LOCAL" in words[2:5]
            if local:
                return Statement(raw, frozenset({WRITE}), local_infile=True)
            classes, esc = {WRITE, ADMIN}, "server"
        else:
            classes = {UNKNOWN}
    elif top == "LOCK":
        classes = {WRITE}
    elif top == "UNLOCK":
        classes = {SESSION}
    elif top == "CALL":
        classes = {WRITE}
    elif top == "USE":
        name = tokens[1].text if len(tokens) == 2 else None
        if name is None:
            return Statement(raw, frozenset({UNKNOWN}))
        return Statement(raw, frozenset({SESSION}), uses=name)
    elif top == "PREPARE":
        if len(tokens) >= 4 and _word(tokens[2]) == "FROM" and len(tokens) == 4 and \
                tokens[3].token_type == TokenType.STRING and depth < 3:
            prepared = classify_text(tokens[3].text, depth + 1)
            sub_classes: set[str] = set()
            sub_esc = None
            for st in prepared.statements:
                sub_classes |= st.classes
                sub_esc = sub_esc or st.escalation
            if len(prepared.statements) != 1:
                sub_classes.add(UNKNOWN)
            return Statement(raw, frozenset(sub_classes or {UNKNOWN}), sub_esc,
                             prepares=tokens[1].text.lower())
        name = tokens[1].text.lower() if len(tokens) > 1 else None
        return Statement(raw, frozenset({UNKNOWN}), prepares=name)
    elif top == "EXECUTE":
        if len(tokens) < 2:
            return Statement(raw, frozenset({UNKNOWN}))
        if _word(tokens[1]) == "IMMEDIATE":  # MariaDB: EXECUTE IMMEDIATE 'text'
            if len(tokens) == 3 and tokens[2].token_type == TokenType.STRING and depth < 3:
                immediate = classify_text(tokens[2].text, depth + 1)
                if len(immediate.statements) == 1:
                    return immediate.statements[0]._replace(text=raw)
            return Statement(raw, frozenset({UNKNOWN}))
        found, esc = _functions(tokens[2:])
        return Statement(raw, frozenset(found | {READ}) if found else frozenset({READ}),
                         esc, executes=tokens[1].text.lower())
    elif top in _SERVER_TOP or (top == "START" and words[1:2] != ["TRANSACTION"]):
        classes, esc = {ADMIN}, "server"
    elif top in _ADMIN_TOP:
        classes = {ADMIN}
    else:
        classes = {UNKNOWN}
    return Statement(raw, frozenset(classes), esc)


def classify_text(text: str, depth: int = 0) -> Verdict:
    """Split `text` into statements and classify each (never raises)."""
    if "/*!" in text or "/*M!" in text or "\0" in text:
        return _unknown(text.encode("utf-8", "surrogateescape"))
    try:
        tokens = _LEXER.tokenize(text)
    except (TokenError, ValueError, RecursionError):
        return _unknown(text.encode("utf-8"))
    pieces = _pieces(text, tokens)
    if not pieces:
        return Verdict(())
    out = tuple(_statement(piece, toks, depth) for piece, toks in pieces)
    plain = len(out) == 1 and bool(pieces[0][1]) and _word(pieces[0][1][0]) in (
        "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE") and out[0].escalation is None
    return Verdict(out, plain)


def classify(sql: bytes) -> Verdict:
    """`classify_text` of bytes: text that is not UTF-8 is `unknown`, never repaired."""
    try:
        text = sql.decode("utf-8")
    except UnicodeDecodeError:
        return _unknown(sql)
    return classify_text(text)


class Classifier(VerdictCache[Verdict]):
    """`classify` with the core's two bounded caches (`VerdictCache`): plain SELECT/DML
    (their classes depend only on keywords and function names, none of which holds a
    digit) by shape."""

    def __call__(self, sql: bytes) -> Verdict:
        hit = self._exact.get(sql)
        if hit is not None:
            return hit
        key = None
        if len(sql) <= MAX_CACHED:
            key = sql.translate(DIGITS)
            classes = self._shape.get(key)
            if classes is not None:
                return Verdict((Statement(sql, classes),), plain=True)
        return self.remember(sql, key, classify(sql))
