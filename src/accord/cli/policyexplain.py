"""`accord policy explain`: why a request was decided as it was (talks to ACCORD_URL).

A client command, like `accord request show`: the server reproduces the decision
(`GET /api/v1/requests/{id}/explain`, for the requester, admins and auditors) and this
prints it. A reproduction that differs from what was recorded is printed in red and the
command exits 1.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.text import Text

from accord.cli.output import JSON, JsonOpt, api, as_obj, console, dump, say, when

RequestId = Annotated[int, typer.Argument(help="ID of the access request.", min=1)]
EXIT_MISMATCH = 1


def policy_explain(request_id: RequestId, as_json: JsonOpt = False) -> None:
    """Explain a request's decision, reproduced under the policy version that made it.

    Each workflow in order with its match, each rule evaluated with the inputs it read,
    the steps and who may approve them. The decision is reproduced from what the ledger
    recorded; any difference from the record is printed in red and exits 1.

    For the requester, admins and auditors (talks to ACCORD_URL with ACCORD_TOKEN).
    """
    with api() as client:
        data = as_obj(client.get(f"/requests/{request_id}/explain"))
    if as_json:
        dump(data)
    else:
        _print(data)
    if data.get("mismatch"):
        raise typer.Exit(EXIT_MISMATCH)


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _result(check: JSON) -> Text:
    if check.get("error"):
        return Text(f"error: {check['error']}", style="red")
    result = check.get("result")
    return Text("true" if result else "false", style="green" if result else "")


def _print(data: JSON) -> None:
    req = data.get("request") or {}
    policy = data.get("policy") or {}
    if req:
        say(f"Request {data['request_id']}: {req['requester']} asked for {req['role']} on "
            f"{req['resource']} for {req['duration']} at {when(req['time'])}"
            + (f' ("{req["reason"]}")' if req.get("reason") else "")
            + (" (break-glass)" if req.get("emergency") else "")
            + (" (an extension)" if req.get("extension") else ""))
    if policy:
        where = f" ({policy['source']})" if policy.get("source") else ""
        in_force = policy.get("in_force")
        force = "" if in_force is None else \
            "; in force now" if in_force else "; not the version in force now"
        ledger = data.get("ledger_index")
        say(f"Policy version {policy['version'][:12]}{where}"
            + (f", ledger #{ledger}" if ledger is not None else "") + force)
    recorded, reproduced = data.get("recorded"), data.get("reproduced")
    if recorded:
        say(f"Recorded:   {recorded['said']}")
    if reproduced:
        line = Text(f"Reproduced: {reproduced['said']}")
        if not data.get("mismatch"):
            line.append("  ✔ reproduced", style="green")
        console.print(line)
    for w in data.get("workflows") or []:
        style = {"matched": "bold", "error": "red", "not reached": "dim"}.get(w["status"], "")
        console.print(Text(f"  {w['order']}. {w['name']}: {w['status']}", style=style))
        for c in w.get("checks") or []:
            line = Text(f"       {c['rule']}: {c['expression']} → ")
            line.append_text(_result(c))
            console.print(line)
            for path, value in (c.get("inputs") or {}).items():
                say(f"         {path} = {_value(value)}")
    if reproduced and reproduced.get("steps"):
        say("Steps:")
        eligible = reproduced.get("eligible") or []
        for i, step in enumerate(reproduced["steps"]):
            people = ", ".join(eligible[i]) if i < len(eligible) else "?"
            name = step.get("name") or f"step {i + 1}"
            say(f"  {i + 1}. {name}{' (elevated)' if step.get('elevated') else ''}: "
                f"{step['min_approvals']} of [{people}] (approvers: "
                f"{', '.join(step['approvers'])})")
    if reproduced:
        say(f"Decided: {reproduced['reason']}")
    for note in data.get("notes") or []:
        say(f"Note: {note}")
    for m in data.get("mismatch") or []:
        console.print(Text(f"MISMATCH: {m}", style="bold red"), soft_wrap=True)
