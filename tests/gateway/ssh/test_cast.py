"""The asciicast recorder on its own: whatever bytes go by, in whatever reads, the recording
gives them back exactly (text as `o`/`i` events, what is not UTF-8 as `ob`/`ib`)."""

from __future__ import annotations

import random

from accord.gateway.ssh.cast import Recorder, frames, output, parse


def record(reads: list[tuple[str, bytes]], chunk_bytes: int = 1024) -> tuple[bytes, list[int]]:
    spooled: list[bytes] = []
    chunks: list[bytes] = []
    cuts: list[int] = []
    mark = [0]

    def cut(index: int, final: bool) -> None:
        cuts.append(index)
        data = b"".join(spooled)
        chunks.append(data[mark[0]:])
        mark[0] = len(data)

    rec = Recorder(lambda *parts: spooled.extend(parts), cut, width=80, height=24,
                   term="xterm", command=None, title="t", chunk_bytes=chunk_bytes)
    for code, data in reads:
        (rec.output if code == "o" else rec.input)(data)
    rec.flush(final=True)
    assert b"".join(chunks) == b"".join(spooled)  # the chunks, in order, are the file
    return b"".join(chunks), cuts


def test_text_binary_and_split_characters_come_back_exactly() -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, not secrets
    stream = ("héllo wörld ✓ 😀 \x1b[31mred\x1b[0m\r\n".encode() * 50 + rng.randbytes(3000)
              + "après 😀".encode() + b"\xe2\x9c")  # ends inside a character
    reads, at = [], 0
    while at < len(stream):
        n = rng.randint(1, 40)
        reads.append(("o", stream[at:at + n]))
        at += n
    reads[3:3] = [("i", "ls ✓\r".encode()), ("i", b"\xff\x00")]
    data, cuts = record(reads)
    assert cuts == list(range(len(cuts))) and len(cuts) > 3
    header, events = parse(data)
    assert header["version"] == 2
    assert output(events) == stream
    assert b"".join(d for _, d in frames(events)) == stream
    codes = {c for _, c, _ in events}
    assert {"o", "ob", "i", "ib"} <= codes
    texts = [t for _, c, t in events if c == "o"]
    assert "😀" in "".join(texts)  # characters split across reads are whole in `o` events


def test_plain_text_stays_plain_asciicast() -> None:
    data, _ = record([("o", b"hello\r\n"), ("i", b"x"), ("o", b"bye\r\n")])
    _, events = parse(data)
    assert [(c, t) for _, c, t in events] == [("o", "hello\r\n"), ("i", "x"), ("o", "bye\r\n")]
