"""Who is acting, and through which channel (`via`): what every command records."""

from __future__ import annotations

from dataclasses import dataclass

from accord.ledger.events import Actor


@dataclass(frozen=True)
class Caller:
    """Who is acting and through which channel; for an agent, also the person it acts for."""

    user: str
    via: str
    owner: str | None = None  # set: `user` is an agent acting for `owner`

    @property
    def is_agent(self) -> bool:
        return self.owner is not None

    @property
    def actor(self) -> Actor:
        if self.owner is not None:
            return Actor.agent(self.user, self.owner, self.via)
        return Actor.user(self.user, self.via)
