"""The adapter base class that integration developers subclass.

An adapter declares its operations with ``@operation``; each operation turns a validated payload model
into an ``HttpCall``. The base class sends the call through the worker's ``requests.Session`` with the
provider's timeout and the idempotency headers, classifies the answer, and parses success into the
operation's response model. Foreign exceptions are mapped to ``integrations.errors`` here and only here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import requests
from pydantic import BaseModel, ValidationError

from integrations.auth import Credentials
from integrations.errors import (
    ContractViolation,
    ErrorType,
    InvalidRequest,
    OperationError,
    ProviderRejected,
    TransientError,
)
from integrations.providers import ProviderSettings
from integrations.resilience.backoff import parse_retry_after

# Bodies kept in the ledger and in error messages are cut here: enough to diagnose, not a data dump.
MAX_BODY_CHARS = 4096

# Headers the worker sets itself; a payload may not supply them.
RESERVED_HEADERS = frozenset({"idempotency-key", "x-request-id", "content-length", "host"})
# Credentials come from the worker's configuration, never from a message (they would travel through the
# broker and be stored and logged). Header and query-parameter names that look like one are refused.
CREDENTIAL_NAME = re.compile(
    r"authori[sz]ation|cookie|token|secret|passw(or)?d|api[-_]?key|access[-_]?key|private[-_]?key|"
    r"signature|session|credential|^key$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request an operation makes, relative to the provider's ``base_url``."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A successful answer: the operation's response model and the answer's headers."""

    model: BaseModel
    headers: Mapping[str, str]


@dataclass(frozen=True)
class OperationSpec:
    """What ``@operation`` records about one operation of an adapter."""

    name: str
    payload: type[BaseModel]
    response: type[BaseModel]
    build: Callable[[Any, Any], HttpCall]


AdapterMethod = TypeVar("AdapterMethod", bound=Callable[..., HttpCall])


def operation(
    *, payload: type[BaseModel], response: type[BaseModel], name: str | None = None
) -> Callable[[AdapterMethod], AdapterMethod]:
    """Declare an adapter method as an operation: ``build(self, payload) -> HttpCall``."""

    def mark(method: AdapterMethod) -> AdapterMethod:
        spec = OperationSpec(name=name or method.__name__, payload=payload, response=response, build=method)
        method.__integrations_operation__ = spec  # type: ignore[attr-defined]
        return method

    return mark


class Adapter:
    """Base class of provider adapters; subclasses set ``name`` and declare operations."""

    name: ClassVar[str]
    operations: ClassVar[Mapping[str, OperationSpec]] = {}
    idempotency_header: ClassVar[str] = "Idempotency-Key"
    request_id_header: ClassVar[str] = "X-Request-ID"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs = dict(cls.operations)
        for attribute in vars(cls).values():
            spec = getattr(attribute, "__integrations_operation__", None)
            if isinstance(spec, OperationSpec):
                specs[spec.name] = spec
        cls.operations = specs

    def __init__(
        self, provider: ProviderSettings, session: requests.Session, credentials: Credentials | None = None
    ) -> None:
        self.provider = provider
        self.session = session
        self.credentials = credentials or Credentials({})
        # The environment's proxy and CA settings, read once: with ``trust_env`` a session reads them on
        # every call (half a millisecond with a large environment). ``no_proxy`` is applied to base_url.
        self.proxies = requests.utils.get_environ_proxies(provider.base_url)
        self.verify: str | bool = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )

    def where(self, operation: str) -> str:
        return f"{self.provider.name}.{operation}"

    def parse_payload(self, operation: str, payload: Any) -> BaseModel:
        """Validate a message's payload; a bad one is an ``InvalidRequest`` naming each field."""
        spec = self.spec(operation)
        try:
            return spec.payload.model_validate(payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"payload.{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidRequest(f"{self.where(operation)}: {problems}") from None

    def spec(self, operation: str) -> OperationSpec:
        try:
            return self.operations[operation]
        except KeyError:
            known = ", ".join(sorted(self.operations))
            raise InvalidRequest(
                f"{self.provider.name}: adapter {self.name!r} has no operation {operation!r} (it has: {known})"
            ) from None

    def call(self, operation: str, payload: BaseModel, *, idempotency_key: str, request_id: str) -> Reply:
        """Make one attempt; return the parsed response or raise an ``OperationError`` (whose
        ``headers`` are the answer's, when there was one). A 401 with credentials that can be renewed
        (OAuth2) renews them once and sends once more, within the same attempt."""
        spec = self.spec(operation)
        call = spec.build(self, payload)
        credentials = self.credentials.headers()
        headers = {
            **call.headers,
            **credentials,
            self.idempotency_header: idempotency_key,
            self.request_id_header: request_id,
        }
        response = self._send(operation, call, headers)
        if response.status_code == 401 and self.credentials.refresh(credentials):
            response = self._send(operation, call, headers | self.credentials.headers())
        answer_headers = dict(response.headers)
        try:
            error = self.classify(operation, response)
            if error is not None:
                raise error
            return Reply(self.parse_response(spec, response), answer_headers)
        except OperationError as exc:
            exc.headers = answer_headers
            raise

    def _send(self, operation: str, call: HttpCall, headers: Mapping[str, str]) -> requests.Response:
        """Send ``call``; foreign exceptions become ours here."""
        where = self.where(operation)
        try:
            return self.session.request(
                call.method,
                self.provider.base_url + call.path,
                params=call.params,
                json=call.json,
                data=call.data,
                headers=headers,
                timeout=self.provider.timeout,
                allow_redirects=False,
                proxies=self.proxies,
                verify=self.verify,
            )
        except requests.Timeout as exc:
            raise TransientError(
                f"{where}: no answer within {self.provider.timeout:g}s", error_type=ErrorType.TIMEOUT
            ) from exc
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise TransientError(
                f"{where}: the answer was cut off or garbled: {type(exc).__name__}",
                error_type=ErrorType.CONNECTION_ERROR,
            ) from exc
        except requests.ConnectionError as exc:
            raise TransientError(
                f"{where}: cannot connect to {self.provider.base_url}: {type(exc).__name__}",
                error_type=ErrorType.CONNECTION_ERROR,
            ) from exc
        except requests.RequestException as exc:
            # The exception's text may quote a header value, so only its kind is kept.
            raise InvalidRequest(
                f"{where}: the request cannot be sent ({type(exc).__name__}); check the payload"
            ) from exc

    def classify(self, operation: str, response: requests.Response) -> OperationError | None:
        """Map a non-success answer to an error; ``None`` means success. Adapters refine this."""
        return classify_http_response(self.where(operation), response)

    def parse_response(self, spec: OperationSpec, response: requests.Response) -> BaseModel:
        """Parse a success into the operation's response model; a mismatch is a contract violation."""
        try:
            return spec.response.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise ContractViolation(
                f"{self.provider.name}.{spec.name}: the provider's answer does not match "
                f"{spec.response.__name__} (has its API changed?): {exc}",
                status_code=response.status_code,
                body=response_body(response),
            ) from None


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


def redact_credentials(value: Any) -> Any:
    """A copy of ``value`` with credential headers' values replaced, for recording a refused message."""
    if isinstance(value, dict):
        return {
            key: "[redacted]"
            if isinstance(key, str) and CREDENTIAL_NAME.search(key)
            else redact_credentials(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact_credentials(item) for item in value]
    return value


def check_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Refuse payload headers that the worker owns or that would carry credentials."""
    for name in headers:
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the worker (from idempotency_key / request_id)")
        check_not_credential("header", name)
    return headers


def check_not_credential(kind: str, name: str) -> None:
    if CREDENTIAL_NAME.search(name):
        raise ValueError(
            f"{kind} {name!r} looks like a credential, which must not travel in messages (they would be "
            "stored and logged); declare credentials in the providers file under [providers.<name>.auth]"
        )
