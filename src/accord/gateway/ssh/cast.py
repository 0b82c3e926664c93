"""Recordings in asciicast v2: a header line, then one JSON line per event
(`[seconds, "o" | "i" | "r", text]`: output, input, a window resize). A channel's recording
is cut into chunks as it grows; the chunks, in order, are the whole `.cast` file."""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

Emit = Callable[[int, bytes, bool], None]  # chunk index, bytes, whether it is the last


class Recorder:
    """One channel's recording; `emit` gets each chunk as it is cut (the header at once, so
    what a channel is for is in the spool before anything runs)."""

    def __init__(self, emit: Emit, *, width: int, height: int, term: str | None,
                 command: str | None, title: str, chunk_bytes: int) -> None:
        self.emit = emit
        self.chunk_bytes = chunk_bytes
        self.t0 = time.monotonic()
        self.index = 0
        self.done = False
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        header: dict[str, Any] = {"version": 2, "width": width or 80, "height": height or 24,
                                  "timestamp": int(time.time()), "title": title,
                                  "env": {"TERM": term or ""}}
        if command is not None:
            header["command"] = command
        self.buf = bytearray(json.dumps(header, ensure_ascii=False).encode() + b"\n")
        self.flush()

    @property
    def pending(self) -> bool:
        return bool(self.buf)

    def output(self, data: bytes) -> None:
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        self._event("i", self._in.decode(data))

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def _event(self, code: str, text: str) -> None:
        if not text or self.done:
            return
        # orjson: the same JSON as json.dumps(ensure_ascii=False), several times faster
        self.buf += orjson.dumps([round(time.monotonic() - self.t0, 6), code, text]) + b"\n"
        if len(self.buf) >= self.chunk_bytes:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Cut a chunk of what is buffered (the last one, even empty, when `final`)."""
        if self.done or not (self.buf or final):
            return
        self.emit(self.index, bytes(self.buf), final)
        self.index += 1
        self.buf.clear()
        self.done = final


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


def frames(events: list[tuple[float, str, str]], *, speed: float = 1.0,
           max_idle: float = 2.0) -> Iterator[tuple[float, str]]:
    """Output to show and how long to wait before it (pauses cut to `max_idle`)."""
    last = 0.0
    for t, code, text in events:
        if code != "o":
            continue
        yield min(max(t - last, 0.0), max_idle) / speed, text
        last = t
