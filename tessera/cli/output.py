"""Rendering for the CLI: tables (default, wide), JSON and YAML; errors and exit codes."""

from __future__ import annotations

import enum
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from tessera.client import ApiError, Unreachable

EXIT_OK = 0
EXIT_REFUSED = 1  # the server said no (or could not be reached)
EXIT_USAGE = 2  # bad flags or arguments (typer/click's own code)

# a pipe gets wide lines rather than rich's 80-column default, so tables stay greppable
_WIDTH = shutil.get_terminal_size((200, 24)).columns
out = Console(soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, soft_wrap=True, width=_WIDTH)


class Format(enum.StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


@contextmanager
def server_errors() -> Iterator[None]:
    """Turn refusals into a message naming the field, and exit 1."""
    try:
        yield
    except ApiError as exc:
        fail(f"{exc.describe()} (HTTP {exc.status})")
    except Unreachable as exc:
        fail(str(exc))


def dump(data: BaseModel | Sequence[BaseModel], fmt: Format) -> None:
    doc: Any = (
        data.model_dump(mode="json", by_alias=True)
        if isinstance(data, BaseModel)
        else [d.model_dump(mode="json", by_alias=True) for d in data]
    )
    if fmt is Format.JSON:
        print(json.dumps(doc, indent=2))  # noqa: T201 - machine output goes to plain stdout
    else:
        print(yaml.safe_dump(doc, sort_keys=False), end="")  # noqa: T201


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*row)
    out.print(t)


def age(moment: datetime | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> str:
    if moment is None:
        return "-"
    seconds = int((now() - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
