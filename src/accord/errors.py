"""Domain errors. The API turns each into an RFC 9457 problem; the CLI prints its detail."""

from __future__ import annotations


class AccordError(Exception):
    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(self, detail: str, *, field: str | None = None,
                 extra: dict[str, object] | None = None) -> None:
        self.detail = detail
        self.field = field
        self.extra = extra or {}  # members the problem+json carries beside its detail
        super().__init__(detail)


class Invalid(AccordError):
    status = 422
    title = "Invalid request"
    slug = "validation"


class NotFound(AccordError):
    status = 404
    title = "Not found"
    slug = "not-found"


class Forbidden(AccordError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class Conflict(AccordError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class Unauthorized(AccordError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Busy(AccordError):
    """Too many writers already queue for the database: come back after `retry_after` s."""

    status = 503
    title = "Service busy"
    slug = "busy"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
