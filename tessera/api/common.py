"""Shared base models, identifiers and annotated field types."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from tessera.api.quantities import (
    QuantityError,
    format_duration,
    parse_duration,
    parse_memory_mib,
)

NAME_FORM = "a DNS label: 1-63 lowercase letters, digits or '-', starting with a letter"
# the widest integer a stored integer column holds on every database (PostgreSQL's INTEGER)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1  # BIGINT
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class Model(BaseModel):
    """Base of every domain model and request: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Meta(Model):
    """Identity every stored entity carries."""

    id: uuid.UUID
    version: int = Field(description="Row version for conditional updates.")
    revision: int = Field(description="Change-feed revision of the last write.")
    created_at: datetime
    updated_at: datetime


def is_name(value: str) -> bool:
    """Whether ``value`` is a valid resource name (a DNS label)."""
    return bool(_NAME.match(value))


def _name(value: Any) -> Any:
    if isinstance(value, str) and not _NAME.match(value):
        raise ValueError(f"{value!r} is not {NAME_FORM}")
    return value


def _memory(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, int | str):
        try:
            return parse_memory_mib(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("expected a quantity like 512Mi, 10Gi or 10GiB")


def _duration(value: Any) -> Any:
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, int | float | str):
        try:
            return parse_duration(value)
        except QuantityError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("expected a duration like 90s, 30m, 2h or 1d")


Name = Annotated[str, BeforeValidator(_name), Field(min_length=1, max_length=63)]
"""A DNS-label resource name."""

MemoryMiB = Annotated[int, BeforeValidator(_memory), Field(ge=0)]
"""Memory: accepts ``512Mi``/``10Gi``/``10GiB`` or an integer of MiB; stored as MiB."""

Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A duration: accepts ``90s``, ``30m``, ``2h``, ``1d`` or seconds."""

Labels = dict[Annotated[str, Field(max_length=63)], Annotated[str, Field(max_length=253)]]


T = TypeVar("T")


class Page(Model, Generic[T]):
    """One page of a list; pass ``continue_`` back as ``continue`` for the next."""

    items: list[T]
    continue_: str | None = Field(default=None, alias="continue")
    revision: int = Field(description="Change-feed revision the list was read at.")
