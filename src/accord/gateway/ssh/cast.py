"""Recordings in asciicast v2: a header line, then one JSON line per event
(`[seconds, code, text]`): `"o"` output and `"i"` input as text, `"r"` a window resize, and,
for output or input that is not UTF-8 (a binary file sent to a terminal or a command's
stdin), `"ob"` and `"ib"`: the same stream's bytes in base64. Replaying `o`/`ob` events in
order gives back exactly the bytes the client received (an `"o"` text is never cut inside a
UTF-8 sequence: an incomplete one at the end of a read waits for the next). A channel's
recording is cut into chunks as it grows; the chunks, in order, are the whole `.cast` file."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pybase64

Write = Callable[..., None]  # an event's line (in parts), to spool before the bytes go on
Cut = Callable[[int, bool], None]  # a chunk ends: its index, whether it is the last
RAW = {"o": "ob", "i": "ib"}
_LINE = orjson.OPT_APPEND_NEWLINE


def _held(data: bytes) -> int:
    """How many bytes at the end of `data` start a UTF-8 sequence that is not complete."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:  # a lead byte: complete when its sequence fits
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if need > back else 0
    return 0


class Recorder:
    """One channel's recording. Each event's line goes to `write` at once (the caller puts
    it in the spool before forwarding the bytes, so a killed gateway loses none of it);
    `cut` ends a chunk at `chunk_bytes` (and when asked). The header is chunk 0, cut at
    once, so what a channel is for is in the spool before anything runs."""

    def __init__(self, write: Write, cut: Cut, *, width: int, height: int,
                 term: str | None, command: str | None, title: str, chunk_bytes: int) -> None:
        self.write = write
        self.cut = cut
        self.chunk_bytes = chunk_bytes
        self.t0 = time.monotonic()
        self.index = 0
        self.done = False
        self.size = 0  # of the chunk being filled
        self.parts: list[bytes] = []  # its lines (`carry` re-spools them in a new segment)
        self._tails = {"o": b"", "i": b""}  # an incomplete UTF-8 sequence, held back
        header: dict[str, Any] = {"version": 2, "width": width or 80, "height": height or 24,
                                  "timestamp": int(time.time()), "title": title,
                                  "env": {"TERM": term or ""}}
        if command is not None:
            header["command"] = command
        self._line(json.dumps(header, ensure_ascii=False).encode() + b"\n")
        self.flush()

    @property
    def pending(self) -> bool:
        return self.size > 0

    def output(self, data: bytes) -> None:
        self._bytes("o", data)

    def input(self, data: bytes) -> None:
        self._bytes("i", data)

    def resize(self, width: int, height: int) -> None:
        if not self.done:
            self._line(orjson.dumps([self._now(), "r", f"{width}x{height}"], option=_LINE))

    def _now(self) -> float:
        return round(time.monotonic() - self.t0, 6)

    def _bytes(self, code: str, data: bytes) -> None:
        if self.done or not data:
            return
        tail = self._tails[code]
        if tail:
            data = tail + data
        keep = _held(data)
        try:  # the common case: text (one pass in C, no copy of the bytes first)
            text = str(memoryview(data)[:-keep], "utf-8") if keep else data.decode("utf-8")
        except UnicodeDecodeError:
            self._tails[code] = b""
            self._raw(code, data)
            return
        self._tails[code] = data[-keep:] if keep else b""
        if text:
            self._line(orjson.dumps([self._now(), code, text], option=_LINE))

    def _raw(self, code: str, data: bytes) -> None:
        """An `ob`/`ib` event (its base64 goes to the spool as it is, not copied into a line)."""
        self._line(b'[%b,"%b","' % (orjson.dumps(self._now()), RAW[code].encode()),
                   pybase64.b64encode(data), b'"]\n')

    def _line(self, *parts: bytes) -> None:
        self.write(*parts)
        self.parts += parts
        self.size += sum(map(len, parts))
        if self.size >= self.chunk_bytes:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Cut a chunk of what was written since the last (the last one, even empty, and
        with any bytes still held back, when `final`)."""
        if self.done or not (self.size or final):
            return
        if final:
            for code, tail in self._tails.items():
                if tail:
                    self._tails[code] = b""
                    self._raw(code, tail)
        self.done = final
        index, self.index = self.index, self.index + 1
        self.cut(index, final)  # `parts` still the chunk's: a segment started now carries it
        self.parts.clear()
        self.size = 0


def parse(data: bytes) -> tuple[dict[str, Any], list[tuple[float, str, str]]]:
    """A recording's header and events."""
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines:
        raise ValueError("an empty recording")
    header = json.loads(lines[0])
    events = []
    for line in lines[1:]:
        if line.strip():
            t, code, text = json.loads(line)
            events.append((float(t), str(code), str(text)))
    return header, events


def event_bytes(code: str, text: str) -> bytes:
    """An output or input event's bytes, as they went by."""
    return pybase64.b64decode(text) if code in ("ob", "ib") else text.encode()


def output(events: list[tuple[float, str, str]]) -> bytes:
    """Every byte of output, as the client received it."""
    return b"".join(event_bytes(c, text) for _, c, text in events if c in ("o", "ob"))


def frames(events: list[tuple[float, str, str]], *, speed: float = 1.0,
           max_idle: float = 2.0) -> Iterator[tuple[float, bytes]]:
    """Output to show (bytes, as they were) and how long to wait before it (pauses cut to
    `max_idle`)."""
    last = 0.0
    for t, code, text in events:
        if code not in ("o", "ob"):
            continue
        yield min(max(t - last, 0.0), max_idle) / speed, event_bytes(code, text)
        last = t
