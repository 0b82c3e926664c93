"""The gateway's Python per transaction, without sockets: a tight loop over the data path.

pgbench through the real gateway (`benchmarks/gateway.py`) moves by ±10 % from run to run
on a small machine, far more than one change to the data path makes. This loop runs the
code every proxied message runs, and only that, so such a change shows:

* `simple`: a ProxySession (a real Conversation and AuditWriter spooling to a real
  memory-mapped segment; the transports are stand-ins that keep nothing) handed pgbench's
  select-only transaction in the simple protocol: the Query, then the server's
  RowDescription, DataRow, CommandComplete and ReadyForQuery.
* `extended`: the same in the extended protocol (`-M extended`) with statement reuse on:
  Parse, Bind, Describe, Execute, Sync, and the answer.
* `wide`, `wide_masked`: `SELECT *` of 100 rows from a table of 10 columns (text, numeric,
  int, timestamptz, bool; the rows of `gateway_rules.py`'s `wide_100`), simple protocol,
  without masking and with two of the columns masked whole (`email`, `card`: every row
  rewritten). A tenth of `--transactions`; `wide_masked_vs_wide` is the ratio of their
  costs (what masking leaves of the data path's own throughput).
* `mysql`: a MySQLSession (the same core, `gateway.session`) handed sysbench's
  `oltp_point_select` transaction: a COM_STMT_EXECUTE of a prepared statement, then the
  server's binary result (column count, definition, one row, OK).
* `mysql_read_only`: sysbench's `oltp_read_only` transaction through the same session:
  BEGIN, ten point selects, a range of 100 rows, a sum, the range ordered and distinct,
  COMMIT (16 prepared statements, about 300 row packets). A fiftieth of `--transactions`.
* `spool_read`: the shipper's side, the spool read back into statement rows
  (`spool.Reader.poll`), per statement.

Garbage collection is tuned as `accord gateway` and its shipper tune it.

    .venv/bin/python benchmarks/gateway_datapath.py [--transactions 200000] [--repeat 3]

Prints JSON: microseconds of the process's CPU time per transaction (per statement for
`spool_read`; CPU, not wall-clock time, so that other processes on a busy machine do not
count), the best and every one of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from accord.gateway import audit, records, spool
from accord.gateway.masking import Masker
from accord.gateway.mysql import conversation as mysql_conversation
from accord.gateway.mysql import protocol as my
from accord.gateway.mysql.proxy import MySQLSession
from accord.gateway.mysql.scope import Classifier as MySQLClassifier
from accord.gateway.postgres.conversation import Conversation
from accord.gateway.postgres.mask import SessionMask
from accord.gateway.postgres.proxy import ProxySession
from accord.gateway.postgres.scope import DEFAULT_ROLES, Classifier
from accord.spec.masking import MaskingSpec

QUERY = b"SELECT abalance FROM pgbench_accounts WHERE aid = "
ROW_DESCRIPTION_BODY = b"\0\x01abalance\0" + b"\0" * 6 + b"\0\x17\0\x04\xff\xff\xff\xff\0\0"


def message(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


ANSWER = (message(b"T", ROW_DESCRIPTION_BODY) + message(b"D", b"\0\x01\0\0\0\x041234")
          + message(b"C", b"SELECT 1\0") + message(b"Z", b"I"))


WIDE_TABLE = 16400  # the table's OID in the RowDescription; its columns' types
WIDE_COLUMNS = (("id", 23), ("email", 25), ("card", 25), ("name", 25), ("city", 25),
                ("amount", 1700), ("qty", 23), ("created", 1184), ("flag", 16), ("note", 25))


def wide_answer(first: int) -> bytes:
    """The server's answer to `SELECT * FROM wide WHERE id BETWEEN first AND first + 99`."""
    desc = struct.pack("!h", len(WIDE_COLUMNS)) + b"".join(
        name.encode() + b"\0" + struct.pack("!IhIhih", WIDE_TABLE, i + 1, typ, -1, -1, 0)
        for i, (name, typ) in enumerate(WIDE_COLUMNS))
    rows = []
    for g in range(first, first + 100):
        values = (b"%d" % g, b"user%d@example.com" % g, b"4111 1111 1111 1111", b"name %d" % g,
                  b"city %d" % (g % 50), b"%.1f" % (g * 1.5), b"%d" % (g % 7),
                  b"2026-12-06 03:05:38.123456+00", b"t" if g % 2 == 0 else b"f",
                  b"some note text %d" % g)
        rows.append(message(b"D", struct.pack("!h", len(values)) + b"".join(
            struct.pack("!i", len(v)) + v for v in values)))
    return message(b"T", desc) + b"".join(rows) + message(b"C", b"SELECT 100\0") + \
        message(b"Z", b"I")


def wide_mask() -> SessionMask:
    """Two of the wide table's columns masked whole, as the catalog lookup finds them."""
    masker = Masker.of([MaskingSpec(name="pii", columns=["public.wide.email", "public.wide.card"])],
                       "admin")
    assert masker is not None
    return SessionMask(masker, {(WIDE_TABLE, 2): b"****", (WIDE_TABLE, 3): b"****"})


def aid(i: int) -> bytes:
    return b"%d" % (i * 7919 % 800_000 + 1)


def mysql_execute(i: int) -> bytes:
    """sysbench's point select: COM_STMT_EXECUTE of statement 1, one INT parameter."""
    return my.packet(0, bytes((my.COM_STMT_EXECUTE,)) + (1).to_bytes(4, "little")
                     + b"\0\x01\0\0\0\0\x01\x03\0" + (i * 7919 % 10_000).to_bytes(4, "little"))


MYSQL_PREPARED = (my.packet(1, b"\0" + (1).to_bytes(4, "little") + b"\x01\0\x01\0\0\0\0")
                  + my.packet(2, b"\x03def" + b"p" * 24) + my.packet(3, b"\x03def" + b"c" * 30))
MYSQL_ANSWER = (my.packet(1, b"\x01") + my.packet(2, b"\x03def" + b"c" * 30)
                + my.packet(3, b"\0\0\x78" + b"c" * 120)
                + my.packet(4, b"\xfe\0\0\x02\0\0\0"))


def mysql_rows(count: int, seq: int = 3) -> bytes:
    """`count` binary-protocol rows of sysbench's `c` (a CHAR(120) value of 119 characters),
    then the OK that ends them (CLIENT_DEPRECATE_EOF)."""
    value = b"68487932199-96439406143-93774651418-41631865787-96406072701-" \
        b"20604855487-25459966574-28203206787-41238978918-19503783441"
    out = [my.packet(seq + i, b"\0\0" + bytes((len(value),)) + value) for i in range(count)]
    return b"".join(out) + my.packet(seq + count, b"\xfe\0\0\x02\0\0\0")


MYSQL_OK = my.packet(1, b"\0\0\0\x02\0\0\0")
# sysbench's oltp_read_only, prepared: BEGIN, 10 point selects, a range of 100 rows, a sum,
# the range ordered, its distinct values, COMMIT (statement ids 1..7), and the answers.
MYSQL_READ_ONLY_STATEMENTS = (
    "BEGIN", "SELECT c FROM sbtest1 WHERE id=?",
    "SELECT c FROM sbtest1 WHERE id BETWEEN ? AND ?",
    "SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN ? AND ?",
    "SELECT c FROM sbtest1 WHERE id BETWEEN ? AND ? ORDER BY c",
    "SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN ? AND ? ORDER BY c", "COMMIT")


def mysql_read_only() -> list[tuple[bytes, bytes]]:
    """One oltp_read_only transaction: (what the client sends, what the server answers)."""
    def execute(stmt: int, params: int) -> bytes:
        head = b"\0" + (1).to_bytes(4, "little")
        if params:
            head += b"\0" + b"\x01" + b"\x03\0" * params + b"\x07\0\0\0" * params
        return my.packet(0, bytes((my.COM_STMT_EXECUTE,)) + stmt.to_bytes(4, "little") + head)

    result = my.packet(1, b"\x01") + my.packet(2, b"\x03def" + b"c" * 30)
    point = result + mysql_rows(1)
    rows = result + mysql_rows(100)
    total = result + my.packet(3, b"\0\0\x06505050") + my.packet(4, b"\xfe\0\0\x02\0\0\0")
    return ([(execute(1, 0), MYSQL_OK)] + [(execute(2, 1), point)] * 10
            + [(execute(3, 2), rows), (execute(4, 2), total), (execute(5, 2), rows),
               (execute(6, 2), rows), (execute(7, 0), MYSQL_OK)])


def workload(kind: str) -> tuple[list[bytes], list[bytes]]:
    """What the client sends (1,000 variants) and what the server answers (warm-up first,
    then the steady state)."""
    if kind == "mysql":
        return [mysql_execute(i) for i in range(1000)], [MYSQL_ANSWER]
    if kind == "simple":
        return [message(b"Q", QUERY + aid(i) + b";\0") for i in range(1000)], [ANSWER]
    if kind.startswith("wide"):
        return [message(b"Q", b"SELECT * FROM wide WHERE id BETWEEN 100 AND 199;\0")], \
            [wide_answer(100)]
    sql = QUERY + b"$1;"
    sent = [message(b"P", b"\0" + sql + b"\0\0\0")
            + message(b"B", b"\0\0\0\0\0\x01" + len(aid(i)).to_bytes(4, "big") + aid(i)
                      + b"\0\0")
            + message(b"D", b"P\0") + message(b"E", b"\0\0\0\0\0") + message(b"S", b"")
            for i in range(1000)]
    # Before reuse the server answers the Parse too; after, the gateway does.
    return sent, [b"1\0\0\0\x04" + b"2\0\0\0\x04" + ANSWER, b"2\0\0\0\x04" + ANSWER]


class _Gateway:
    """The part of `Gateway` the data path uses; its outcome timer fires in `run`."""

    message_timeout = 30.0
    ticker: object = None

    def arm_tick(self) -> None:
        self.ticker = True


def session(spool: Path, kind: str, mask: SessionMask | None = None
            ) -> tuple[Any, audit.AuditWriter, list[bytes]]:
    conv: Any = Conversation(allowed=DEFAULT_ROLES["admin"], classifier=Classifier(),
                             role="admin", resource="bench", auto_prepare=5, mask=mask)
    cls: Any = ProxySession
    if kind.startswith("mysql"):
        conv = mysql_conversation.Conversation(
            allowed=DEFAULT_ROLES["admin"], classifier=MySQLClassifier(), role="admin",
            resource="bench", database="bench",
            capabilities=my.CLIENT_PROTOCOL_41 | my.CLIENT_DEPRECATE_EOF)
        cls = MySQLSession
    writer = audit.AuditWriter(None, spool)  # type: ignore[arg-type]  # no shipper here
    writer.dir.mkdir(parents=True)
    writer._open_next()
    info = records.SessionInfo(id="bench-1", number=1, grant_id=1, user="bench",
                             resource="bench", role="admin", client="127.0.0.1",
                             application="pgbench", tls=False, upstream_role=None)
    writer.opened(info, conv.in_flight)
    sink: list[bytes] = []
    s = object.__new__(cls)  # the data path only: no sockets, no gateway
    s.ended, s.conv, s.audit, s.info, s._slow = False, conv, writer, info, None
    s._asking = False  # no statement held for review
    s._to_server = s._to_client = sink.append
    s.gateway = _Gateway()  # type: ignore[assignment]
    return s, writer, sink


def run_mysql_read_only(n: int, spool: Path) -> tuple[float, audit.AuditWriter]:
    """`run` for sysbench's oltp_read_only: `n` transactions of 16 statements."""
    s, writer, sink = session(spool, "mysql")
    from_client, from_server = s.from_client, s.from_server
    gateway = s.gateway
    for i, text in enumerate(MYSQL_READ_ONLY_STATEMENTS, 1):
        params = text.count("?")
        from_client(my.packet(0, bytes((my.COM_STMT_PREPARE,)) + text.encode()))
        from_server(my.packet(1, b"\0" + i.to_bytes(4, "little")
                              + (0 if text in ("BEGIN", "COMMIT") else 1).to_bytes(2, "little")
                              + params.to_bytes(2, "little") + b"\0\0\0")
                    + b"".join(my.packet(2 + j, b"\x03def" + b"p" * 24) for j in range(params))
                    + (my.packet(2 + params, b"\x03def" + b"c" * 30)
                       if text not in ("BEGIN", "COMMIT") else b""))
    pairs = mysql_read_only()
    for _ in range(5):
        for sent, answer in pairs:
            from_client(sent)
            from_server(answer)
    tick = writer.tick
    start = time.process_time()
    for i in range(n):
        for sent, answer in pairs:
            from_client(sent)
            from_server(answer)
        if i % 4 == 0:  # the loop's timer, every few milliseconds
            gateway.ticker = None
            tick()
            sink.clear()
    elapsed = time.process_time() - start
    if s.ended:
        raise SystemExit(f"mysql_read_only: the session ended ({s.reason})")
    tick()
    return elapsed / n * 1e6, writer


def run(kind: str, n: int, spool: Path) -> tuple[float, audit.AuditWriter]:
    if kind == "mysql_read_only":
        return run_mysql_read_only(n, spool)
    s, writer, sink = session(spool, kind, wide_mask() if kind == "wide_masked" else None)
    sent, answers = workload(kind)
    from_client, from_server = s.from_client, s.from_server
    gateway = s.gateway
    if kind == "mysql":  # sysbench prepares its statement once per connection
        from_client(my.packet(0, bytes((my.COM_STMT_PREPARE,))
                              + b"SELECT c FROM sbtest1 WHERE id=?"))
        from_server(MYSQL_PREPARED)
    for i in range(50):  # reuse starts at the 5th Parse
        from_client(sent[i % len(sent)])
        from_server(answers[0] if i < 5 else answers[-1])
    answer = answers[-1]
    tick = writer.tick
    start = time.process_time()
    for i in range(n):
        from_client(sent[i % len(sent)])
        from_server(answer)
        if i % 64 == 0:  # the loop's timer, every few milliseconds at ~30k transactions/s
            gateway.ticker = None
            tick()
            sink.clear()
    elapsed = time.process_time() - start
    if s.ended:
        raise SystemExit(f"{kind}: the session ended ({s.reason})")
    tick()
    return elapsed / n * 1e6, writer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transactions", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    gc.freeze()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("simple", "extended", "mysql"):
            gc.set_threshold(20_000, 20, 20)  # as accord gateway
            runs = []
            for r in range(args.repeat):
                us, writer = run(kind, args.transactions, Path(tmp) / f"{kind}{r}")
                runs.append(round(us, 3))
            results[kind] = {"us_per_transaction": min(runs), "runs": runs}
            gc.set_threshold(50_000, 20, 20)  # as the shipper
            reads = []
            for _ in range(args.repeat):
                reader = spool.Reader(writer.dir)
                start = time.process_time()
                reader.poll()
                facts = reader.take()
                reads.append(round((time.process_time() - start) / len(facts) * 1e6, 3))
            results[f"spool_read_{kind}"] = {"us_per_statement": min(reads), "runs": reads,
                                             "statements": len(facts) - 1}
        gc.set_threshold(20_000, 20, 20)
        runs = [round(run("mysql_read_only", max(args.transactions // 50, 1),
                          Path(tmp) / f"mysql_read_only{r}")[0], 3) for r in range(args.repeat)]
        results["mysql_read_only"] = {"us_per_transaction": min(runs), "runs": runs}
        for kind in ("wide", "wide_masked"):  # 100 rows a transaction: a tenth as many
            runs = [round(run(kind, max(args.transactions // 10, 1),
                              Path(tmp) / f"{kind}{r}")[0], 3) for r in range(args.repeat)]
            results[kind] = {"us_per_transaction": min(runs), "runs": runs}
        results["wide_masked_vs_wide"] = round(results["wide"]["us_per_transaction"]
                                               / results["wide_masked"]["us_per_transaction"], 3)
    print(json.dumps({"transactions": args.transactions, "results": results}, indent=2))


if __name__ == "__main__":
    main()
