"""The OpenAPI document made true to what the API answers.

FastAPI's generated schema documents only the happy path and a 422 of its own shape
(`HTTPValidationError`, `application/json`). Accord answers every error as an RFC 9457
problem (`application/problem+json`, `problems.problem`), asks for a bearer token on
nearly every call, and refuses control characters anywhere in the URL
(`problems.BodyLimit`). `install` rewrites the document once, so that generated clients,
Swagger UI's "Authorize" button and contract testers (schemathesis, in
`tests/api/test_openapi_contract.py`) see the API as it is:

* `components.schemas.Problem`, the body of every error;
* every operation's 422 is a Problem, and its `default` response (any other status: 400,
  401, 403, 404, 409, 413, 503...) is one too;
* (FastAPI's own, from `deps.BEARER`: the bearer security scheme on each operation that
  takes a token; the Slack callback, checked by its signature instead, has none);
* every string parameter carries the pattern that excludes control characters.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from accord.api.problems import PROBLEM

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# What `problems.BodyLimit` lets through in a URL: no C0 control character and no DEL.
NO_CONTROL = "^[^\\u0000-\\u001F\\u007F]*$"
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details: what went wrong and, in `detail`, why.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What to do about it, for a person."},
        "instance": {"type": "string", "description": "The path that was called."},
        "errors": {
            "type": "array",
            "description": "Each invalid field (`loc`) and what is wrong with it.",
            "items": {"type": "object", "required": ["loc", "msg"],
                      "properties": {"loc": {"type": "string"}, "msg": {"type": "string"}}},
        },
    },
    "additionalProperties": True,
}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": PROBLEM_REF}}}


def _no_control(schema: dict[str, Any]) -> None:
    if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema \
            and "format" not in schema:
        schema["pattern"] = NO_CONTROL
    for branch in schema.get("anyOf", ()):
        _no_control(branch)


def files(description: str, media_types: Any) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that answers a file in one of `media_types` (a report, a
    bundle): the OpenAPI document lists them instead of FastAPI's JSON."""
    return {200: {"description": description,
                  "content": {str(t).split(";")[0]: {} for t in media_types}}}


def rewrite(doc: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's document of the app, rewritten in place as the module docstring says."""
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    for operations in doc.get("paths", {}).values():
        for op in operations.values():
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _problem("Invalid input: `detail` and `errors` say which "
                                            "field and why.")
            responses["default"] = _problem("Any other error, as RFC 9457 problem details.")
            for parameter in op.get("parameters", ()):
                _no_control(parameter.get("schema", {}))
    return doc


def install(app: FastAPI) -> None:
    """Serve FastAPI's document, `rewrite`n once, at /openapi.json."""
    generate = app.openapi  # FastAPI's own: builds the document once and keeps it

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            rewrite(generate())
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
