"""tessera admin check: the store's invariants, for operators (and after every fault test)."""

from __future__ import annotations

from typing import Annotated

import typer

from tessera.cli.output import Format, dump, out, server_errors, table
from tessera.client import Client

admin_app = typer.Typer(help="Cluster administration (admin token).", no_args_is_help=True)


@admin_app.command("check")
def check(
    output: Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml.")] = Format.TABLE,
) -> None:
    """Verify the store: no GPU over-committed, no orphan tasks or slices, consistent states.
    Exits 1 when anything is wrong."""
    with server_errors(), Client() as client:
        report = client.admin_check()
    if output in (Format.JSON, Format.YAML):
        dump(report, output)
    else:
        counts = ", ".join(f"{n} {what}" for what, n in report.checked.items())
        if report.ok:
            out.print(f"ok: {counts}; every invariant holds", highlight=False)
        else:
            table(["KIND", "OBJECT", "PROBLEM"], [[p.kind, p.object, p.message] for p in report.problems])
            out.print(f"{len(report.problems)} problem(s) in {counts}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)
