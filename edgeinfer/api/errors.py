"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status.

Every failure a client can cause maps to a 4xx with a message that says what to fix; FastAPI's default 422
for validation problems becomes 400, as in vLLM and llama-server.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

M = TypeVar("M", bound=BaseModel)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",  # what OpenAI sends with code invalid_api_key
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "internal_server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(err: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status in (429, 503) else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _describe_validation(exc: RequestValidationError | ValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg', '')}".rstrip(": "), None
    if first.get("type") == "missing":
        return f"missing required field '{param}'", param
    msg = first.get("msg", "invalid value")
    return (f"invalid value for '{param}': {msg}" if param else msg), param


async def parse_body(request: Request, model: type[M]) -> M:
    """Read the JSON body (its size and Content-Type were checked by ``guard.Guard``) and validate it in a
    worker thread, so that a large body does not hold up the event loop."""
    raw = await request.body()
    return await asyncio.to_thread(parse_json, raw, model)


def parse_json(raw: bytes, model: type[M]) -> M:
    """Strict JSON -> request model: invalid UTF-8 and lone surrogates (``"\\ud800"``) are invalid JSON."""
    if not raw.strip():
        raise APIError(400, "request body is empty; send a JSON object", code="invalid_json")
    if not raw.lstrip().startswith(b"{"):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            detail = (errors[0].get("ctx") or {}).get("error") or errors[0].get("msg", "")
            if "surrogate" in detail or "hex escape" in detail:
                detail += " (a lone UTF-16 surrogate such as \\ud800 is not text)"
            raise APIError(400, f"request body is not valid JSON: {detail}", code="invalid_json") from None
        message, param = _describe_validation(exc)
        raise APIError(400, message, param=param, code="invalid_value") from None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        return error_response(APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(APIError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(
            APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error")
        )
