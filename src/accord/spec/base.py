"""What every section of `accord.yaml` shares: strict frozen models, names, durations."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from accord.durations import DurationError, parse_duration

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class Strict(BaseModel):
    """A section of the file: an unknown key is a problem (a typo must not pass silently),
    and a loaded policy never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def as_duration(value: Any) -> timedelta:
    """A duration field's value: `4h`, `30m`, or a whole number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value}s"
    if not isinstance(value, str):
        raise ValueError("must be a duration such as 4h or 30m")
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None
