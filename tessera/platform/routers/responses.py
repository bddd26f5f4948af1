"""The error responses routes document: RFC 9457 problem documents, as the handlers write them."""

from __future__ import annotations

from typing import Any

from tessera.api.problems import PROBLEM_MEDIA_TYPE, Problem

_WHEN = {
    400: "The request could not be read (e.g. a body that is not JSON).",
    401: "No token, or one that is unknown, revoked or expired.",
    403: "The token's user, role or scope may not do this.",
    404: "Nothing by that name or id (that the caller may see).",
    409: "The request conflicts with the current state (a name taken, a finished job, ...).",
    410: "The change feed no longer holds that revision; list again and watch from there.",
    412: "If-Match named a version the resource has moved past.",
    422: "A field is invalid; `errors` names each one and the accepted form.",
    503: "The database, a node agent or the Kubernetes API cannot be reached; retry (see Retry-After).",
}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The problem schema without ``$defs``: a route's response must not point at a schema that the
    document's components may not hold."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return dict(resolve(schema))


_SCHEMA = _inline(Problem.model_json_schema(mode="serialization"))


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, each a problem document."""
    return {
        code: {"description": _WHEN[code], "content": {PROBLEM_MEDIA_TYPE: {"schema": _SCHEMA}}}
        for code in codes
    }


# what any route of the API may answer: an unreadable body, no or a wrong token, nothing there, a bad
# field, the database unreachable
COMMON = problems(400, 401, 403, 404, 422, 503)
# what a write may also answer: a name taken, a state that forbids it, a row another writer changed
CONFLICT = problems(409)
