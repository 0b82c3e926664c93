"""The API answers as its OpenAPI document says (schemathesis drives every operation).

Every operation in `/openapi.json`, called as an admin with generated valid and invalid
input: never a server error, no status code, content type, header or body the document
does not describe, and invalid input is refused. What the document cannot say (a
workflow's rules, whether a resource exists) may still refuse valid-looking input, so
schema-valid input need not succeed. Examples are derived from a fixed seed: the same
cases on every run.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from tests.conftest import Env

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
EXAMPLES = 6  # per operation and mode: 65 operations, about 800 calls per backend


def _operations(env: Env) -> list[Any]:
    doc = env.client.get("/openapi.json").json()
    # Calls go through the test's own client (its app, its database, in a transaction).
    schema = schemathesis.openapi.from_dict(doc)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid
        operations.append(result.ok())
    return operations


def _fails(env: Env, operation: Any, mode: GenerationMode) -> str | None:
    """The first way `operation` strays from the document, or None."""
    found: list[str] = []

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if found:
            return
        kwargs = case.as_transport_kwargs(base_url="http://testserver",
                                          headers=env.headers("carol"))
        assert not kwargs.pop("cookies", None)  # the API takes none
        data = kwargs.pop("data", None)  # requests' spelling, to httpx's
        if data is not None:
            kwargs["content" if isinstance(data, bytes | str) else "data"] = data
        response = env.client.request(**kwargs)
        # Input that breaks the document is refused; a body over the limit with 413,
        # which schemathesis does not count among refusals.
        checks = CHECKS if response.status_code == 413 else [*CHECKS, negative_data_rejection]
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, FailureGroup) as exc:
            found.append(f"{case.as_curl_command()}\n{exc}")

    try:
        run()
    except Unsatisfiable:  # nothing in it to make invalid (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE
    return found[0] if found else None


def test_every_operation_answers_as_documented(env: Env) -> None:
    operations = _operations(env)
    assert len(operations) > 50  # the sweep sees the app's operations, not an empty list
    broken = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            why = _fails(env, operation, mode)
            if why:
                broken[f"{operation.label} ({mode.value})"] = why
    assert not broken, "\n\n".join(f"{k}:\n{v}" for k, v in broken.items())


def test_a_method_not_allowed_names_the_methods_that_are(env: Env) -> None:
    """RFC 9110: a 405 carries `Allow`; every route at the path counts, not just one."""
    for method, path, allowed in (("TRACE", "/api/v1/requests", "GET, POST"),
                                  ("DELETE", "/api/v1/requests", "GET, POST"),
                                  ("PUT", "/api/v1/requests/1", "GET"),
                                  ("GET", "/api/v1/requests/1/approve", "POST")):
        r = env.call(method, "carol", path)
        assert r.status_code == 405, r.text
        assert r.headers["allow"] == allowed
        assert r.headers["content-type"].startswith("application/problem+json")
    # Static files say what they take themselves; a mount is not asked for the rest.
    r = env.client.request("POST", "/static/app.js")
    assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
    # A dashboard page says so too, on its HTML error page.
    r = env.client.request("PUT", "/requests", headers={"accept": "text/html"})
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"
    assert r.headers["content-type"].startswith("text/html")


def test_the_document_says_errors_are_problems_and_tokens_are_bearer(env: Env) -> None:
    doc = env.client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert op["responses"]["default"]["content"] == problem, (method, path)
            if "422" in op["responses"]:
                assert op["responses"]["422"]["content"] == problem, (method, path)
            # The Slack callback proves itself by its signature; everything else by token.
            secured = path != "/api/v1/integrations/slack/interactions"
            assert (op.get("security") == [{"bearer": []}]) == secured, (method, path)


def test_a_number_is_not_a_time(env: Env) -> None:
    """pydantic would read `until=0.5` as half a second after 1970; the API says what a
    time is instead."""
    for value in ("0.5", "1700000000", "-3"):
        r = env.get("dave", "/api/v1/audit/events", params={"until": value})
        assert r.status_code == 422, r.text
        assert "RFC 3339" in r.json()["detail"]
    r = env.get("dave", "/api/v1/audit/events", params={"until": "2026-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
