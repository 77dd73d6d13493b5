"""The generic ``http`` adapter: one operation, ``request``, for any JSON-over-HTTP API."""

from __future__ import annotations

from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field, field_validator

from integrations.adapters.base import Adapter, HttpCall, OperationSpec, operation
from integrations.adapters.message_rules import check_headers, check_not_credential

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class HttpRequest(BaseModel):
    """Payload of ``integrations.<provider>.request``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Method
    path: str
    body: Any = Field(default=None, alias="json")
    params: dict[str, str | int | float | bool | list[str | int | float | bool]] | None = None
    headers: dict[str, str] | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        if not value.startswith("/") or "://" in value or any(c.isspace() for c in value):
            raise ValueError("must be a path on the provider's base_url starting with '/', e.g. '/v1/orders'")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else dict(check_headers(value))

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for name in value or {}:
            check_not_credential("query parameter", name)
        return value


class HttpResponse(BaseModel):
    """What ``request`` returns: the status code and the body (parsed when it is JSON)."""

    status_code: int
    body: Any = None


class HttpAdapter(Adapter):
    """Calls ``base_url + path`` as the payload says."""

    name = "http"

    @operation(payload=HttpRequest, response=HttpResponse)
    def request(self, payload: HttpRequest) -> HttpCall:
        return HttpCall(
            method=payload.method,
            path=payload.path,
            params=payload.params,
            json=payload.body,
            headers=payload.headers or {},
        )

    def parse_response(self, spec: OperationSpec, response: requests.Response) -> BaseModel:
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = response.text
        return HttpResponse(status_code=response.status_code, body=body)
