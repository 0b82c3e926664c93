"""`PolicyFile`: the whole of `accord.yaml`, one field per section."""

from __future__ import annotations

from pydantic import Field

from accord.spec.agents import AgentSpec
from accord.spec.base import Strict
from accord.spec.detect import DetectSpec
from accord.spec.gateway import GatewaySpec
from accord.spec.ledger import LedgerSpec
from accord.spec.notify import NotifySpec
from accord.spec.people import AccordRoles, IdentitySpec, UserSpec
from accord.spec.policytests import PolicySection
from accord.spec.resources import ResourceSpec
from accord.spec.reviews import ReviewSpec
from accord.spec.service import WebSpec, WorkerSpec
from accord.spec.workflows import BreakGlassSpec, WorkflowSpec


class PolicyFile(Strict):
    accord: AccordRoles = Field(default_factory=AccordRoles)
    policy: PolicySection = Field(default_factory=PolicySection)
    identity: IdentitySpec = Field(default_factory=IdentitySpec)
    gateway: GatewaySpec | None = None
    worker: WorkerSpec = Field(default_factory=WorkerSpec)
    notify: NotifySpec = Field(default_factory=NotifySpec)
    web: WebSpec = Field(default_factory=WebSpec)
    detect: DetectSpec = Field(default_factory=DetectSpec)
    break_glass: BreakGlassSpec | None = None
    reviews: list[ReviewSpec] = Field(default_factory=list)
    ledger: LedgerSpec = Field(default_factory=LedgerSpec)
    users: dict[str, UserSpec | None] | list[str] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    resources: list[ResourceSpec] = Field(default_factory=list)
    workflows: list[WorkflowSpec] = Field(default_factory=list)
    agents: list[AgentSpec] = Field(default_factory=list)

    def user_specs(self) -> dict[str, UserSpec]:
        """Every known user: those listed under `users` and every group member."""
        out: dict[str, UserSpec] = {}
        if isinstance(self.users, list):
            out.update({u: UserSpec() for u in self.users})
        else:
            out.update({u: (s or UserSpec()) for u, s in self.users.items()})
        for members in self.groups.values():
            for m in members:
                out.setdefault(m, UserSpec())
        return out
