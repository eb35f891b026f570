"""The JSON error shape every failure gets (``{error, message[, details]}``) and the 429 with Retry-After."""

from __future__ import annotations

from fastapi import status
from fastapi.responses import JSONResponse

from scalingnote.service.batcher import Overloaded
from scalingnote.service.schemas import ErrorBody

CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "body_too_large", 422: "invalid_request", 429: "overloaded",
         499: "client_closed", 503: "unavailable"}  # fmt: skip


def error(
    status_code: int, message: str, details: list[dict] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error response every failure gets."""
    body = ErrorBody(error=CODES.get(status_code, "error"), message=message, details=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code, headers=headers)


def overloaded(exc: Overloaded) -> JSONResponse:
    """429 with Retry-After."""
    return error(status.HTTP_429_TOO_MANY_REQUESTS, str(exc), headers={"Retry-After": str(exc.retry_after)})
