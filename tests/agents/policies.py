"""The policy the agent tests share: one agent of alice's, a workflow for agents whose one
step is the agent's owner, and one for people."""

from __future__ import annotations

AGENTS_POLICY = """\
users: [alice, bob, carol, dave, frank]
groups:
  engineers: [alice]
  leads: [bob, carol]
  dba: [carol]
  admins: [frank]
  auditors: [dave]
accord: {admins: [admins], auditors: [auditors]}
resources:
  - {name: orders-db, kind: postgres, labels: {env: prod}, owners: [dba], roles: [read, write]}
workflows:
  - name: agents
    match: 'request.requester.kind == "agent"'
    max_duration: 1h
    require_reason: false
    auto_deny: 'request.role == "write" && request.requester.owner != "alice"'
    steps: [{name: owner, approvers: [owner]}]
  - name: people
    match: 'request.requester.kind == "user"'
    max_duration: 4h
    steps: [{approvers: [leads]}]
agents:
  - {name: buildbot, owner: alice, groups: [engineers], description: CI agent}
  - {name: helper, owner: bob}
"""
