"""MySQL statement classes (sqlglot's MySQL dialect): what each statement needs, and that what
a parser could misread is never `read`."""

from __future__ import annotations

import pytest

from accord.gateway.classes import DEFAULT_ROLES
from accord.gateway.mysql.scope import Classifier, classify, classify_text

CASES = [
    ("SELECT id, total FROM orders WHERE id = 1", {"read"}, None),
    ("select @@version_comment limit 1", {"read"}, None),
    ("WITH t AS (SELECT 1) SELECT * FROM t", {"read"}, None),
    ("SHOW TABLES", {"read"}, None),
    ("DESCRIBE orders", {"read"}, None),
    ("EXPLAIN DELETE FROM orders", {"read"}, None),
    ("EXPLAIN ANALYZE DELETE FROM orders", {"read", "write"}, None),
    ("SELECT * FROM orders FOR UPDATE", {"read", "write"}, None),
    ("SELECT GET_LOCK('a', 1)", {"read", "write"}, None),
    ("INSERT INTO orders VALUES (1, 2)", {"write"}, None),
    ("REPLACE INTO orders VALUES (1, 2)", {"write"}, None),
    ("UPDATE orders SET total = 0", {"write"}, None),
    ("DELETE FROM orders", {"write"}, None),
    ("CALL refund(1)", {"write"}, None),
    ("CREATE TABLE t (a INT)", {"ddl"}, None),
    ("DROP TABLE orders", {"ddl"}, None),
    ("TRUNCATE orders", {"ddl"}, None),
    ("BEGIN", {"transaction"}, None),
    ("START TRANSACTION READ ONLY", {"transaction"}, None),
    ("SET autocommit = 0", {"session"}, None),
    ("SET NAMES utf8mb4", {"session"}, None),
    ("SET sql_mode = 'STRICT_TRANS_TABLES'", {"session"}, None),
    ("SET @total := (SELECT SUM(total) FROM orders)", {"read"}, None),
    ("SET ROLE accord_r_other", {"identity"}, "identity"),
    ("SET ROLE NONE", {"identity"}, "identity"),
    ("SET DEFAULT ROLE r FOR alice", {"identity"}, "identity"),
    ("SET PASSWORD = PASSWORD('x')", {"identity"}, "identity"),
    ("GRANT ALL ON *.* TO alice", {"admin", "identity"}, "identity"),
    ("REVOKE SELECT ON shop.* FROM bob", {"admin", "identity"}, "identity"),
    ("CREATE USER eve IDENTIFIED BY 'x'", {"admin", "identity"}, "identity"),
    ("DROP ROLE r", {"admin", "identity"}, "identity"),
    ("CREATE DEFINER=root@localhost VIEW v AS SELECT 1", {"ddl", "identity"}, "identity"),
    ("SET GLOBAL general_log = 1", {"admin"}, "server"),
    ("SET @@global.max_connections = 1", {"admin"}, "server"),
    ("SET sql_log_bin = 0", {"admin"}, "server"),
    ("SET NAMES sjis", {"pinned"}, "encoding"),
    ("SET character_set_client = gbk", {"pinned"}, "encoding"),
    ("SET sql_mode = 'NO_BACKSLASH_ESCAPES'", {"pinned"}, "encoding"),
    ("SET sql_mode = 'ANSI'", {"pinned"}, "encoding"),
    ("SET sql_mode = @m", {"pinned"}, "encoding"),
    ("SELECT LOAD_FILE('/etc/passwd')", {"read", "admin"}, "server"),
    ("SELECT * FROM orders INTO OUTFILE '/tmp/x'", {"read", "admin"}, "server"),
    ("LOAD DATA INFILE '/tmp/x' INTO TABLE orders", {"write", "admin"}, "server"),
    ("SELECT SLEEP(10)", {"read", "admin"}, None),
    ("KILL 12", {"admin"}, "server"),
    ("SHUTDOWN", {"admin"}, "server"),
    ("FLUSH PRIVILEGES", {"admin"}, "server"),
    ("INSTALL SONAME 'ha_connect'", {"admin"}, "server"),
    ("CREATE FUNCTION f RETURNS STRING SONAME 'x.so'", {"admin"}, "server"),
    ("DROP DATABASE shop", {"admin"}, None),
    ("OPTIMIZE TABLE orders", {"admin"}, None),
    ("PREPARE s FROM 'DELETE FROM orders'", {"write"}, None),
    ("PREPARE s FROM @sql", {"unknown"}, None),
    ("EXECUTE IMMEDIATE 'DROP TABLE orders'", {"ddl"}, None),
    ("SELECT 1 /*! , SLEEP(10) */", {"unknown"}, None),
    ("SELECT 1 /*M!100000 , SLEEP(10) */", {"unknown"}, None),
    ("SELEC 1", {"unknown"}, None),
    ("FROBNICATE everything", {"unknown"}, None),
]


@pytest.mark.parametrize(("text", "classes", "escalation"), CASES)
def test_classes(text: str, classes: set[str], escalation: str | None) -> None:
    [st] = classify_text(text).statements
    assert (set(st.classes), st.escalation) == (classes, escalation)


def test_nothing_that_leaves_the_grant_is_read() -> None:
    read = DEFAULT_ROLES["read"]
    for text, classes, escalation in CASES:
        if escalation is not None or "unknown" in classes:
            assert not classes <= read, text


def test_multi_statements_split_where_the_server_splits() -> None:
    texts = [st.text for st in classify_text(
        "SELECT 'a;b'; SELECT `c;d` FROM t; SELECT 1 --1; DELETE FROM orders").statements]
    assert texts == [b"SELECT 'a;b'", b"SELECT `c;d` FROM t", b"SELECT 1 --1",
                     b"DELETE FROM orders"]
    # A backslash escapes a quote: the ; is inside the string, there is one statement.
    assert len(classify_text("SELECT 'a\\'; DELETE FROM orders; '").statements) == 1


def test_special_statements() -> None:
    [use] = classify_text("USE `shop_db`").statements
    assert use.uses == "shop_db"
    [load] = classify_text("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t").statements
    assert load.local_infile
    [ex] = classify_text("EXECUTE s USING @a").statements
    assert ex.executes == "s"
    assert classify(b"SELECT '\xff'").statements[0].classes == {"unknown"}
    assert classify(b"SELECT 1\0").statements[0].classes == {"unknown"}


def test_the_classifier_caches_plain_statements_by_shape() -> None:
    c = Classifier()
    first = c(b"SELECT c FROM sbtest1 WHERE id = 123")
    again = c(b"SELECT c FROM sbtest1 WHERE id = 456")
    assert first.plain and again.plain and again.statements[0].classes == {"read"}
    assert again.statements[0].text == b"SELECT c FROM sbtest1 WHERE id = 456"
