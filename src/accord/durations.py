"""Parse and format durations: `45m`, `1h30m`, `2d`, `90s` and ISO 8601 `PT1H30M`."""

from __future__ import annotations

import re
from datetime import timedelta

_SHORT = re.compile(r"(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", re.ASCII)
_NUM = r"(\d+(?:\.\d+)?)"
_ISO = re.compile(
    rf"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?=\d)(?:{_NUM}H)?(?:{_NUM}M)?(?:{_NUM}S)?)?", re.ASCII
)
# Longest accepted duration: beyond any sane grant, small enough that arithmetic never overflows.
MAX = timedelta(days=3650)


class DurationError(ValueError):
    """A duration string that cannot be read."""


def parse_duration(text: str) -> timedelta:
    """Read a duration; raise DurationError with a message meant for the user."""
    raw = text.strip()
    if not raw:
        raise DurationError("is empty; use a form like 45m, 1h30m or PT1H30M")
    if raw.startswith("-"):
        raise DurationError(f"{text!r} is negative; a duration must be positive")
    value: timedelta | None = None
    m = _SHORT.fullmatch(raw.lower())
    if m and any(m.groups()):
        w, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
        value = _safe(lambda: timedelta(weeks=w, days=d, hours=h, minutes=mi, seconds=s), text)
    else:
        m = _ISO.fullmatch(raw.upper())
        if m and any(m.groups()):
            w2, d2 = (int(g) if g else 0 for g in m.groups()[:2])
            h2, mi2, s2 = (float(g) if g else 0.0 for g in m.groups()[2:])
            value = _safe(
                lambda: timedelta(weeks=w2, days=d2, hours=h2, minutes=mi2, seconds=s2), text
            )
    if value is None:
        raise DurationError(f"{text!r} is not a duration; use a form like 45m, 1h30m or PT1H30M")
    if value <= timedelta(0):
        raise DurationError(f"{text!r} is zero; a duration must be positive")
    if value.microseconds:
        raise DurationError(f"{text!r} has a fraction of a second; use whole seconds")
    if value > MAX:
        raise DurationError(f"{text!r} is longer than the longest accepted duration (3650d)")
    return value


def _safe(make: object, text: str) -> timedelta:
    try:
        result = make()  # type: ignore[operator]
    except OverflowError:
        raise DurationError(f"{text!r} is too long") from None
    assert isinstance(result, timedelta)
    return result


def format_duration(value: timedelta) -> str:
    """Compact form, e.g. `1h30m`; `0s` for zero."""
    total = int(value.total_seconds())
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def span(value: timedelta) -> str:
    """A span as people read it: 45s, 12m, 1h29m, 3h, 2d5h. Two units at most, the rest
    dropped, never rounded up (1h29m59s left is 1h29m, not 1h30m and never 1h)."""
    s = max(int(value.total_seconds()), 0)
    units = (("d", 86400), ("h", 3600), ("m", 60))
    for i, (unit, size) in enumerate(units):
        if s >= size:
            rest = s % size
            if i < 2 and rest >= units[i + 1][1]:
                return f"{s // size}{unit}{rest // units[i + 1][1]}{units[i + 1][0]}"
            return f"{s // size}{unit}"
    return f"{s}s"
