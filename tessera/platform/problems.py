"""API errors as ``application/problem+json``, each naming the field and accepted form."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DisconnectionError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.api.problems import PROBLEM_MEDIA_TYPE, FieldError, Problem
from tessera.jobs.states import InvalidTransition
from tessera.platform.store.feed import Compacted


class ApiError(Exception):
    """An error the API reports as a problem document."""

    status = 400
    title = "Bad Request"

    def __init__(
        self, detail: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = [FieldError(field=field, message=detail)] if field else []
        self.headers = headers or {}


class Invalid(ApiError):
    status = 422
    title = "Unprocessable Content"


class NotFound(ApiError):
    status = 404
    title = "Not Found"


class Conflict(ApiError):
    status = 409
    title = "Conflict"


class PreconditionFailed(ApiError):
    """A conditional request (If-Match) whose condition no longer holds (RFC 9110, 412)."""

    status = 412
    title = "Precondition Failed"


class Unauthorized(ApiError):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="tessera"'})


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class Unavailable(ApiError):
    status = 503
    title = "Service Unavailable"


class Gone(ApiError):
    status = 410
    title = "Gone"


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(mode="json"),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _field_path(loc: tuple[Any, ...], kind: str = "") -> str:
    if kind == "json_invalid":
        return "body"  # pydantic locates a JSON syntax error by character offset
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    # pydantic adds the validator name for some errors, e.g. "function-after[...]"
    parts = [p for p in parts if not p.startswith(("function-", "constrained-"))]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid value"))
    kind = error.get("type", "")
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "extra_forbidden":
        return "unknown field; remove it (see the API schema for accepted fields)"
    if kind == "missing":
        return "field required"
    return message


def validation_problem(exc: RequestValidationError) -> Problem:
    errors = [
        FieldError(field=_field_path(tuple(e.get("loc", ())), e.get("type", "")), message=_message(e))
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return Problem(title="Unprocessable Content", status=422, detail=detail, errors=errors)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem document."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        problem = Problem(title=exc.title, status=exc.status, detail=exc.detail, errors=exc.errors)
        return problem_response(problem, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(exc))

    @app.exception_handler(InvalidTransition)
    async def _transition(_: Request, exc: InvalidTransition) -> JSONResponse:
        return problem_response(Problem(title="Conflict", status=409, detail=str(exc)))

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        # e.g. a NUL character, which PostgreSQL cannot store in text; nothing was written
        detail = "a value cannot be stored (text must not contain NUL characters; numbers must fit)"
        return problem_response(Problem(title="Unprocessable Content", status=422, detail=detail))

    @app.exception_handler(OperationalError)
    @app.exception_handler(DisconnectionError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # the database is unreachable (stopped, restarting, failing over) or busy: a retry is the
        # answer (a submission with its Idempotency-Key); the pool reconnects once it is back
        detail = "the database is unavailable; retry shortly"
        problem = Problem(title="Service Unavailable", status=503, detail=detail)
        return problem_response(problem, {"Retry-After": "1"})

    @app.exception_handler(StaleDataError)
    async def _stale(_: Request, exc: StaleDataError) -> JSONResponse:
        detail = "the resource changed while this request ran; read it again and retry"
        return problem_response(Problem(title="Conflict", status=409, detail=detail))

    @app.exception_handler(Compacted)
    async def _compacted(_: Request, exc: Compacted) -> JSONResponse:
        return problem_response(Problem(title="Gone", status=410, detail=str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        problem = Problem(title=_title(exc.status_code), status=exc.status_code, detail=str(exc.detail))
        return problem_response(problem, dict(exc.headers or {}))


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
