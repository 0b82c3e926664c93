"""The `accord` command: one group, one module per area."""

from __future__ import annotations

import typer
from typer.core import TyperOption

from accord.cli import admin, policyexplain, policyreplay, policytest, serve
from accord.cli.audit import audit_app
from accord.cli.mcp import mcp
from accord.cli.request import grant_app, request_app
from accord.detect.cli import alert_app
from accord.directory.cli import directory_app, scim_app
from accord.gateway import cli as gateway_cli
from accord.notify.cli import notify_app
from accord.reports.cli import report_app
from accord.reviews.cli import review_app
from accord.web.cli import session_app

_type_shown = TyperOption.display_type_rich


def _no_type_for_flags(self: TyperOption, ctx: typer.Context) -> str | None:
    # typer's rich help writes "<bool>" beside every flag; a flag takes no value, and
    # people read "<bool>" as one they must give.
    return None if self.is_flag else _type_shown(self, ctx)


TyperOption.display_type_rich = _no_type_for_flags  # type: ignore[method-assign,assignment]

app = typer.Typer(
    name="accord",
    help="Self-service access requests with a tamper-evident audit ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("worker")(serve.worker)
app.command("gateway")(gateway_cli.gateway)
app.command("connect")(gateway_cli.connect)
app.command("exec")(gateway_cli.exec_request)
app.command("mcp")(mcp)
app.add_typer(admin.db_app, name="db")
app.add_typer(admin.token_app, name="token")
app.add_typer(admin.policy_app, name="policy")
admin.policy_app.command("test")(policytest.policy_test)
admin.policy_app.command("replay")(policyreplay.policy_replay)
admin.policy_app.command("explain")(policyexplain.policy_explain)
app.add_typer(request_app, name="request")
app.add_typer(grant_app, name="grant")
app.add_typer(audit_app, name="audit")
app.add_typer(alert_app, name="alert")
app.add_typer(directory_app, name="directory")
app.add_typer(notify_app, name="notify")
app.add_typer(report_app, name="report")
app.add_typer(review_app, name="review")
app.add_typer(session_app, name="session")
app.add_typer(scim_app, name="scim")

if __name__ == "__main__":
    app()
