"""People's notification preferences: which channels, and immediately or in a daily digest.

A user with no stored preference gets every channel available to them (configured in
`notify:` and with an address for them under `users:`), one message per event. A
stored preference names the channels (a subset of the available ones; an empty list
means no personal messages) and the mode: `immediate`, or `digest` at an hour (UTC).

Which channels carry a given message also depends on the workflow of the request:
`route` takes the channels that are available, chosen by the user and allowed by the
workflow's `notify.channels`, in that order.

Service functions take the session keyword-only and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from accord.errors import Invalid, NotFound
from accord.ledger import service as ledger
from accord.ledger.events import Actor, EventType
from accord.notify.channels import RecipientAddress
from accord.notify.models import Mode, NotificationPreference
from accord.policy.engine import Policy
from accord.spec.notify import NotifySpec

PERSON_CHANNELS = ("email", "slack")  # webhooks are not a person's channel


@dataclass(frozen=True)
class Preferences:
    """One user's preference as stored (or the default when nothing is stored)."""

    user: str
    channels: tuple[str, ...] | None  # None: every available channel
    mode: Mode = Mode.IMMEDIATE
    digest_hour: int | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None

    @property
    def digest(self) -> bool:
        return self.mode == Mode.DIGEST and self.digest_hour is not None

    def as_data(self) -> dict[str, Any]:
        """The choice itself, as recorded in the ledger."""
        return {"channels": list(self.channels) if self.channels is not None else None,
                "mode": str(self.mode), "digest_hour": self.digest_hour}


def configured_channels(spec: NotifySpec) -> list[str]:
    """The people's channels this server can send on."""
    return [c for c in PERSON_CHANNELS if getattr(spec, c) is not None]


def available_channels(spec: NotifySpec, address: RecipientAddress) -> list[str]:
    """Configured channels for which `address` has somewhere to send."""
    return [c for c in configured_channels(spec) if getattr(address, c)]


def route(spec: NotifySpec, address: RecipientAddress, prefs: Preferences,
          allowed: Sequence[str] | None) -> list[str]:
    """The channels one message goes out on: available, chosen, and allowed by the workflow."""
    return [c for c in available_channels(spec, address)
            if (prefs.channels is None or c in prefs.channels)
            and (allowed is None or c in allowed)]


def get(session: Session, *, user: str) -> Preferences:
    """`user`'s stored preference, or the default (every available channel, immediate)."""
    row = session.get(NotificationPreference, user)
    return _of(row) if row is not None else Preferences(user, None)


def _of(row: NotificationPreference) -> Preferences:
    return Preferences(user=row.user,
                       channels=tuple(row.channels) if row.channels is not None else None,
                       mode=Mode(row.mode), digest_hour=row.digest_hour,
                       updated_at=row.updated_at, updated_by=row.updated_by)


def validate(policy: Policy, *, user: str, channels: Sequence[str] | None, mode: str,
             digest_hour: int | None) -> Preferences:
    """The preference asked for, or Invalid naming the field that is wrong."""
    if not policy.is_user(user):
        raise NotFound(f'unknown user "{user}"; users come from accord.yaml')
    spec = policy.loaded.spec.notify
    address = RecipientAddress.from_spec(user, policy.users.get(user))
    if channels is not None:
        for i, channel in enumerate(channels):
            where = f"channels[{i}]"
            if channel not in PERSON_CHANNELS:
                raise Invalid(f'unknown channel "{channel[:40]}"; choose from '
                              + ", ".join(PERSON_CHANNELS), field=where)
            if channel in channels[:i]:
                raise Invalid(f"{channel} is listed twice", field=where)
            if getattr(spec, channel) is None:
                raise Invalid(f"{channel} is not configured on this server (notify.{channel} "
                              "in accord.yaml)", field=where)
            if not getattr(address, channel):
                raise Invalid(f"{user} has no {channel} address (users.{user}.{channel} in "
                              "accord.yaml)", field=where)
    try:
        chosen = Mode(mode)
    except ValueError:
        raise Invalid("must be immediate or digest", field="mode") from None
    if chosen == Mode.DIGEST:
        if digest_hour is None:
            raise Invalid("required when mode is digest (an hour from 0 to 23, UTC)",
                          field="digest_hour")
        if not 0 <= digest_hour <= 23:
            raise Invalid(f"{digest_hour} is not an hour from 0 to 23 (UTC)",
                          field="digest_hour")
    elif digest_hour is not None:
        raise Invalid("only applies when mode is digest", field="digest_hour")
    return Preferences(user, tuple(channels) if channels is not None else None, chosen,
                       digest_hour)


def set_preferences(session: Session, *, policy: Policy, user: str,
                    channels: Sequence[str] | None, mode: str, digest_hour: int | None,
                    actor: Actor, now: datetime) -> Preferences:
    """Replace `user`'s preference; a change is recorded in the ledger with it."""
    wanted = validate(policy, user=user, channels=channels, mode=mode, digest_hour=digest_hour)
    row = _locked(session, user)
    before = _of(row) if row is not None else Preferences(user, None)
    if before.as_data() == wanted.as_data():
        return before  # nothing changes, so nothing to record
    if row is None:
        row = NotificationPreference(user=user)
        try:
            with session.begin_nested():
                _fill(row, wanted, actor, now)
                session.add(row)
        except IntegrityError:  # a concurrent first choice won: change that one
            row = _locked(session, user)
            assert row is not None
            before = _of(row)
            if before.as_data() == wanted.as_data():
                return before
    _fill(row, wanted, actor, now)
    session.flush()
    ledger.record(session, type=EventType.NOTIFICATION_PREFERENCES_CHANGED, actor=actor,
                  subject=f"user:{user}",
                  data={"user": user, **wanted.as_data(), "previous": before.as_data()},
                  time=now)
    return _of(row)


def _locked(session: Session, user: str) -> NotificationPreference | None:
    row: NotificationPreference | None = session.execute(
        select(NotificationPreference).where(NotificationPreference.user == user)
        .with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    return row


def _fill(row: NotificationPreference, wanted: Preferences, actor: Actor, now: datetime) -> None:
    row.channels = list(wanted.channels) if wanted.channels is not None else None
    row.mode = str(wanted.mode)
    row.digest_hour = wanted.digest_hour
    row.updated_at = now
    row.updated_by = actor.id


def describe(prefs: Preferences, spec: NotifySpec, address: RecipientAddress
             ) -> dict[str, Any]:
    """The preference with what it means today (for the API and the CLI)."""
    available = available_channels(spec, address)
    return {
        "user": prefs.user,
        "channels": list(prefs.channels) if prefs.channels is not None else None,
        "effective_channels": route(spec, address, prefs, None),
        "available_channels": available,
        "mode": str(prefs.mode),
        "digest_hour": prefs.digest_hour,
        "updated_at": prefs.updated_at,
        "updated_by": prefs.updated_by,
    }
