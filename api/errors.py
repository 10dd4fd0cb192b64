"""Domain errors. Services raise these; one handler in `api.app` maps them to JSON responses."""

from __future__ import annotations


class DomainError(Exception):
    """Base class: `status_code` is the HTTP status, `code` a stable machine-readable name."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.problems = problems or []
        self.headers: dict[str, str] = {}


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str):
        super().__init__(message)
        self.headers = {"WWW-Authenticate": "Bearer"}


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class ValidationFailed(DomainError):
    status_code = 422
    code = "validation_failed"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "payload_too_large"


class LimitExceeded(DomainError):
    """A quota or rate limit; `retry_after_s`, when known, becomes the Retry-After header."""

    status_code = 429
    code = "limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int | None = None):
        super().__init__(message)
        if retry_after_s is not None:
            self.headers = {"Retry-After": str(max(1, retry_after_s))}


class ServiceUnavailable(DomainError):
    status_code = 503
    code = "service_unavailable"
