"""`agents:`: AI agents (and other programs) that act for a person, their owner.

An agent requests access like a person does (API, CLI, MCP) with a token its owner or an
admin issued; it is in the groups listed here (for routing: CEL's
`request.requester.groups`), never in anyone's approver set: an agent never approves.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from accord.spec.base import NAME, Strict
from accord.spec.detect import WorkingHours


class AgentSpec(Strict):
    name: str
    owner: str = Field(description="the user the agent acts for; approves steps naming owner")
    groups: list[str] = Field(default_factory=list, description="groups it requests as")
    description: str = ""
    # When its owner works (the `agent_off_hours` detector); default: detect.off_hours's.
    owner_hours: WorkingHours | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be lowercase letters, digits, '.', '_' or '-' (max 63)")
        return v
