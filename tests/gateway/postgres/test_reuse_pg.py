"""Statement reuse against PostgreSQL itself: the same client bytes sent straight to the
server and through a `Conversation` (reuse on) must get the same answers, or, in the few
pipelines where the gateway cannot know which messages the server skipped, an error,
never another statement's result."""

from __future__ import annotations

import random
import socket

import pytest
from psycopg.conninfo import conninfo_to_dict

from accord.gateway.postgres import protocol as pq
from accord.gateway.postgres.conversation import Conversation
from accord.gateway.postgres.scope import Classifier
from tests.gateway.postgres.test_protocol import ADMIN, FLUSH, SYNC, bind, describe, execute, parse

A = b"select 'A:' || $1::text as a"
X = b"select 100 / ($1::int + (random() * 0)::int) as x"  # fails for 0, at Execute
C = b"select 'C:' || $1::text as c"


def one(text: bytes, value: bytes) -> bytes:
    """libpq's one-off statement: Parse, Bind, Describe, Execute, Sync."""
    return parse(b"", text) + bind(b"", b"", [value]) + describe() + execute() + SYNC


def q(text: bytes) -> bytes:
    return pq.message(b"Q", text + b"\0")


def messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        n = int.from_bytes(data[pos + 1:pos + 5], "big")
        out.append((data[pos:pos + 1], data[pos + 5:pos + 1 + n]))
        pos += 1 + n
    return out


def shown(data: bytes) -> list[str]:
    """What the client sees, with error texts naming statements left out."""
    out = []
    for kind, body in messages(data):
        if kind == b"E":
            out.append("E" + pq.parse_fields(body).get("C", ""))
        elif kind in (b"D", b"C", b"Z"):
            out.append(kind.decode() + repr(body))
        else:
            out.append(kind.decode())
    return out


class Server:
    """A raw protocol-3 connection to PostgreSQL."""

    def __init__(self, where: dict[str, str]) -> None:
        self.sock = socket.create_connection(
            (where.get("host") or "127.0.0.1", int(where.get("port") or 5432)), timeout=10)
        self.sock.sendall(pq.startup_message({"user": where.get("user") or "postgres",
                                              "database": where["dbname"]}))
        self.buf = b""
        self.until(1)

    def until(self, readies: int) -> bytes:
        """Whole messages up to the `readies`-th ReadyForQuery (0: up to an error)."""
        got, seen = b"", 0
        while True:
            while len(self.buf) >= 5:
                n = int.from_bytes(self.buf[1:5], "big")
                if len(self.buf) < 1 + n:
                    break
                message, self.buf = self.buf[:1 + n], self.buf[1 + n:]
                got += message
                seen += message[:1] == b"Z"
                if (readies and seen == readies) or (not readies and message[:1] == b"E"):
                    return got
            chunk = self.sock.recv(65536)
            assert chunk, "the server closed the connection"
            self.buf += chunk
        return got

    def close(self) -> None:
        self.sock.close()


class Through:
    """The same, through the gateway's conversation, cut where the test says."""

    def __init__(self, where: dict[str, str], threshold: int) -> None:
        self.server = Server(where)
        self.conv = Conversation(allowed=ADMIN, classifier=Classifier(), role="admin",
                                 resource="db", auto_prepare=threshold)

    def send(self, data: bytes, readies: int, cut: int = 0) -> bytes:
        pieces = [data[:cut], data[cut:]] if 0 < cut < len(data) else [data]
        for piece in pieces:
            up = self.conv.client(piece)
            if up:
                self.server.sock.sendall(up)
        return self.conv.server(self.server.until(readies))


@pytest.fixture
def database(pg_url: str) -> dict[str, str]:
    """Where to connect: this test process's PostgreSQL database (any would do)."""
    return {k: str(v) for k, v in conninfo_to_dict(pg_url).items()}


def both(database: dict[str, str], steps: list[tuple[bytes, int]], threshold: int = 1,
         cuts: list[int] | None = None) -> list[tuple[list[str], list[str]]]:
    direct, through = Server(database), Through(database, threshold)
    try:
        out = []
        for i, (data, readies) in enumerate(steps):
            direct.sock.sendall(data)
            cut = cuts[i] if cuts else 0
            out.append((shown(direct.until(readies)),
                        shown(through.send(data, readies, cut))))
        return out
    finally:
        direct.close()
        through.server.close()


def same(database: dict[str, str], steps: list[tuple[bytes, int]], threshold: int = 1,
         cuts: list[int] | None = None) -> None:
    for i, (direct, through) in enumerate(both(database, steps, threshold, cuts)):
        assert through == direct, f"step {i}"


def never_another(database: dict[str, str], steps: list[tuple[bytes, int]],
                  threshold: int = 1) -> None:
    """Where the gateway differs, it is by an error: no row or completion the server
    would not have sent."""
    for i, (direct, through) in enumerate(both(database, steps, threshold)):
        extra = [m for m in through if m[:1] in ("D", "C") and m not in direct]
        assert not extra, f"step {i}: {through} against {direct}"


def test_pgbench_style_reuse_answers_as_the_server(database: dict[str, str]) -> None:
    same(database, [(one(A, b"%d" % i), 1) for i in range(8)], threshold=3)


def test_reuse_stops_inside_a_failed_transaction(database: dict[str, str]) -> None:
    setup = [(one(A, b"1"), 1), (one(A, b"2"), 1), (one(A, b"3"), 1), (q(b"begin"), 1),
             (q(b"select 1/0"), 1)]
    same(database, [*setup, (one(A, b"4"), 1), (q(b"rollback"), 1)])
    same(database, [*setup, (parse(b"", A) + SYNC, 1), (q(b"rollback"), 1),
                    (bind(b"", b"", [b"9"]) + execute() + SYNC, 1)])


def test_deallocate_through_the_extended_protocol_twice(database: dict[str, str]) -> None:
    dealloc = parse(b"", b"DEALLOCATE ALL") + bind(b"", b"", []) + execute() + SYNC
    same(database, [(one(A, b"1"), 1), (one(A, b"2"), 1), (one(A, b"3"), 1), (dealloc, 1),
                    (one(A, b"4"), 1), (one(A, b"5"), 1), (one(A, b"6"), 1), (dealloc, 1),
                    (one(A, b"7"), 1)], threshold=2)


def test_a_query_in_the_same_read_destroys_the_unnamed_statement(database: dict[str, str]) -> None:
    same(database, [(q(b"select 2"), 1), (one(A, b"1"), 1), (one(A, b"2"), 1),
                    (one(A, b"3"), 1),
                    (q(b"select 2") + bind(b"", b"", [b"5"]) + execute() + SYNC, 2)])


def test_the_clients_own_0a000_leaves_reuse_alone(database: dict[str, str]) -> None:
    bad = parse(b"n", b"select count(*) from pg_class for update") + SYNC
    same(database, [(one(A, b"1"), 1), (one(A, b"2"), 1), (one(A, b"3"), 1),
                    (parse(b"", A) + SYNC, 1), (bad, 1),
                    (bind(b"", b"", [b"9"]) + execute() + SYNC, 1)])


def test_an_error_answered_on_a_flush_is_not_followed_by_our_parse_complete(
        database: dict[str, str]) -> None:
    """The error to a Bind comes on a Flush; the server skips what follows until Sync."""
    same(database, [
        (one(A, b"1"), 1), (one(A, b"2"), 1), (one(A, b"3"), 1),
        (parse(b"", C) + bind(b"", b"", []) + FLUSH, 0), (one(A, b"4"), 1), (one(A, b"5"), 1)])


def test_a_parse_the_server_skipped_never_runs_another_statement(database: dict[str, str]) -> None:
    failing = parse(b"", X) + bind(b"", b"", [b"0"]) + execute()
    never_another(database, [
        (one(A, b"1"), 1), (one(A, b"2"), 1), (one(A, b"3"), 1),
        (failing + parse(b"", A) + SYNC, 1), (bind(b"", b"", [b"5"]) + execute() + SYNC, 1)])
    never_another(database, [
        (one(A, b"1"), 1), (one(A, b"2"), 1), (parse(b"", A) + SYNC, 1),
        (bind(b"", b"", []) + execute() + parse(b"", C) + SYNC, 1),
        (bind(b"", b"", [b"7"]) + execute() + SYNC, 1)])


def test_random_pipelines_of_well_behaved_clients(database: dict[str, str]) -> None:
    """Segments as libpq sends them, sometimes several per write and cut anywhere; errors
    only at an Execute: the client sees exactly what the server would send."""
    for seed in range(12):
        rng = random.Random(seed)  # noqa: S311 - reproducible pipelines, not secrets
        steps = []
        for _ in range(rng.randint(4, 12)):
            data, readies = b"", 0
            for _ in range(rng.randint(1, 3)):
                text, value = rng.choice((A, X, C)), rng.choice((b"0", b"1", b"5"))
                r = rng.random()
                if r < 0.55:
                    data += one(text, value)
                elif r < 0.7:
                    data += parse(b"", text) + SYNC
                elif r < 0.8:
                    data += bind(b"", b"", [value]) + execute() + SYNC
                elif r < 0.9:
                    data += q(rng.choice((b"select 1", b"select 2")))
                else:
                    data += parse(b"", text) + describe(b"S") + FLUSH + SYNC
                readies += 1
            steps.append((data, readies))
        cuts = [rng.randint(0, len(d)) if rng.random() < 0.3 else 0 for d, _ in steps]
        same(database, steps, threshold=seed % 3 + 1, cuts=cuts)
