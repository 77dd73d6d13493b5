"""How a provider's answer is read: HTTP's classification of a status into success, a retried error or a
rejection, the re-typing where a provider's own rule overrides HTTP's, and the body kept for diagnosis.

Adapters start from ``classify_http_response`` and refine it; the ledger and error messages keep
``response_body``; an answer that does not fit the operation's model is an ``answer_mismatch``.
"""

from __future__ import annotations

from typing import Any

import requests
from pydantic import BaseModel, ValidationError

from integrations.errors import ContractViolation, ErrorType, OperationError, ProviderRejected, TransientError
from integrations.resilience.backoff import parse_retry_after

# Bodies kept in the ledger and in error messages are cut here: enough to diagnose, not a data dump.
MAX_BODY_CHARS = 4096


def classify_http_response(where: str, response: requests.Response) -> OperationError | None:
    """HTTP semantics: 2xx success; 408, 429, 5xx transient; any other status a rejection."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    body = response_body(response)
    if status == 429:
        return TransientError(
            f"{where}: rate limited (HTTP 429)",
            error_type=ErrorType.RATE_LIMITED,
            status_code=status,
            body=body,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status == 408 or status >= 500:
        return TransientError(
            f"{where}: provider unavailable (HTTP {status})",
            error_type=ErrorType.TIMEOUT if status == 408 else ErrorType.PROVIDER_UNAVAILABLE,
            status_code=status,
            body=body,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    return ProviderRejected(
        f"{where}: provider rejected the request (HTTP {status})", status_code=status, body=body
    )


def reclassified(
    error: OperationError,
    response: requests.Response,
    kind: type[OperationError],
    message: str,
    *,
    error_type: ErrorType | None = None,
) -> OperationError:
    """``error`` re-typed as ``kind``, where a provider's own rule overrides HTTP's (an answer it says to
    retry, or not to): same status, body and headers; ``error_type`` or the kind's own type; a retried
    kind keeps the error's ``retry_after`` or reads the answer's ``Retry-After``, a rejection has none."""
    retry_after = None
    if kind.retryable:
        retry_after = error.retry_after
        if retry_after is None:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
    again = kind(
        message,
        error_type=error_type,
        status_code=error.status_code,
        body=error.body,
        retry_after=retry_after,
    )
    again.headers = error.headers
    return again


def response_body(response: requests.Response) -> Any:
    """The body for diagnosis: parsed JSON when it is JSON, else text, cut to ``MAX_BODY_CHARS``."""
    content_type = response.headers.get("Content-Type", "")
    if "json" in content_type:
        try:
            return response.json()
        except ValueError:
            pass
    text = response.text
    return text if len(text) <= MAX_BODY_CHARS else text[:MAX_BODY_CHARS] + "…"


def answer_mismatch(
    where: str, model: type[BaseModel], exc: ValueError, response: requests.Response, body: Any = None
) -> ContractViolation:
    """The ``ContractViolation`` of an answer that does not fit ``model``: it names the fields, never
    their values (an answer may hold what must not be logged), and keeps the body for the ledger."""
    if isinstance(exc, ValidationError):
        detail = validation_problems(exc, "answer")
    else:
        detail = f"the body is not JSON (HTTP {response.status_code})"
    return ContractViolation(
        f"{where}: the provider's answer does not match {model.__name__} (has its API changed?): {detail}",
        status_code=response.status_code,
        body=response_body(response) if body is None else body,
    )


def validation_problems(exc: ValidationError, prefix: str) -> str:
    """A pydantic error as ``<prefix>.<field>: <message>; ...``, without the values (of an answer here,
    of a payload in the adapter base class)."""
    return "; ".join(
        f"{'.'.join([prefix, *(str(p) for p in e['loc'])])}: {e['msg']}"
        for e in exc.errors(include_input=False)
    )
