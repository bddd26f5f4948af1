"""RFC 9457 problem details: every error the API returns."""

from __future__ import annotations

from pydantic import Field

from tessera.api.common import Model

PROBLEM_MEDIA_TYPE = "application/problem+json"


class FieldError(Model):
    field: str = Field(description="Dotted path of the offending field, e.g. groups.0.resources.gpu_memory")
    message: str


class Problem(Model):
    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[FieldError] = Field(default_factory=list)
