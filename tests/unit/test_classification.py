"""How answers from a provider are classified, and the generic ``http`` adapter, over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from integrations.adapters.answers import (
    MAX_BODY_CHARS,
    classify_http_response,
    reclassified,
    response_body,
)
from integrations.adapters.http import HttpAdapter, HttpRequest, HttpResponse
from integrations.adapters.stripe import StripeAdapter
from integrations.errors import ErrorType, InvalidRequest, ProviderRejected, TransientError
from integrations.providers import ProviderSettings
from integrations.resilience.backoff import MAX_RETRY_AFTER
from integrations.testing.http_server import KeepAliveHandler, LocalHTTPServer
from integrations.testing.provider import ProviderSimulator
from tests.fakes.server import Answer
from tests.fakes.stripe import RATE_LIMIT_MESSAGE, FakeStripe
from tests.fakes.stripe import error as stripe_error
from tests.providers import provider_settings

WHERE = "acme.request"
# An hour ahead, whole seconds, as an HTTP date.
FAR_FUTURE = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
FAR_FUTURE_HTTP_DATE = FAR_FUTURE.strftime("%a, %d %b %Y %H:%M:%S GMT")


def error_body(status: int) -> dict[str, Any]:
    return {"error": {"type": "simulated", "message": f"simulated {status}", "status": status}}


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def provider(base_url: str, timeout: float = 5.0) -> ProviderSettings:
    return provider_settings("acme", base_url=base_url, timeout=timeout)


@pytest.fixture
def adapter(simulator: ProviderSimulator, session: requests.Session) -> HttpAdapter:
    return HttpAdapter(provider(simulator.url), session)


class _TextHandler(KeepAliveHandler):
    """Answers a body the simulator cannot: long plain text, or broken JSON labelled as JSON."""

    def do_GET(self) -> None:
        if self.path == "/long":
            body, content_type = ("x" * (MAX_BODY_CHARS + 100)).encode(), "text/plain; charset=utf-8"
        elif self.path == "/exact":
            body, content_type = ("y" * MAX_BODY_CHARS).encode(), "text/plain; charset=utf-8"
        else:
            body, content_type = b"{not json", "application/json"
        self.send_response(502)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def text_server() -> Iterator[str]:
    with LocalHTTPServer(_TextHandler) as server:
        yield server.url


# -- classify_http_response ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status"), [("", 200), ("status=201", 201), ("status=202", 202), ("status=204", 204)]
)
def test_success_is_not_an_error(
    simulator: ProviderSimulator, session: requests.Session, query: str, status: int
) -> None:
    response = session.post(f"{simulator.url}/v1/orders?{query}", json={}, timeout=5)

    assert response.status_code == status
    assert classify_http_response(WHERE, response) is None


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (408, ErrorType.TIMEOUT),
        (429, ErrorType.RATE_LIMITED),
        (500, ErrorType.PROVIDER_UNAVAILABLE),
        (502, ErrorType.PROVIDER_UNAVAILABLE),
        (503, ErrorType.PROVIDER_UNAVAILABLE),
        (504, ErrorType.PROVIDER_UNAVAILABLE),
    ],
)
@pytest.mark.parametrize(("retry_after", "expected_retry_after"), [(None, None), ("3", 3.0), ("0", 0.0)])
def test_transient_statuses(
    simulator: ProviderSimulator,
    session: requests.Session,
    status: int,
    error_type: ErrorType,
    retry_after: str | None,
    expected_retry_after: float | None,
) -> None:
    params = {"status": str(status)} | ({"retry_after": retry_after} if retry_after is not None else {})
    response = session.get(f"{simulator.url}/v1/orders", params=params, timeout=5)

    error = classify_http_response(WHERE, response)

    assert isinstance(error, TransientError)
    assert error.retryable
    assert error.error_type is error_type
    assert error.status_code == status
    assert error.body == error_body(status)
    assert error.retry_after == expected_retry_after
    assert error.message.startswith(f"{WHERE}: ")
    assert f"HTTP {status}" in error.message
    info = error.info()
    assert (info.type, info.status_code, info.body) == (error_type, status, error_body(status))


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_as_http_date(
    simulator: ProviderSimulator, session: requests.Session, status: int
) -> None:
    response = session.get(
        f"{simulator.url}/v1/orders",
        params={"status": str(status), "retry_after": FAR_FUTURE_HTTP_DATE},
        timeout=5,
    )
    assert response.headers["Retry-After"] == FAR_FUTURE_HTTP_DATE

    before = datetime.now(UTC)
    error = classify_http_response(WHERE, response)
    after = datetime.now(UTC)

    assert isinstance(error, TransientError)
    assert error.retry_after is not None
    assert (FAR_FUTURE - after).total_seconds() <= error.retry_after <= (FAR_FUTURE - before).total_seconds()


def test_a_retry_after_beyond_a_day_is_taken_as_a_day(
    simulator: ProviderSimulator, session: requests.Session
) -> None:
    for value in ("Thu, 01 Jan 2099 00:00:00 GMT", "999999999999999999999"):
        response = session.get(
            f"{simulator.url}/v1/orders", params={"status": "429", "retry_after": value}, timeout=5
        )
        error = classify_http_response(WHERE, response)
        assert isinstance(error, TransientError) and error.retry_after == MAX_RETRY_AFTER


def test_retry_after_date_in_the_past_means_now(
    simulator: ProviderSimulator, session: requests.Session
) -> None:
    response = session.get(
        f"{simulator.url}/v1/orders",
        params={"status": "429", "retry_after": "Wed, 21 Oct 2015 07:28:00 GMT"},
        timeout=5,
    )

    error = classify_http_response(WHERE, response)

    assert isinstance(error, TransientError)
    assert error.retry_after == 0.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_rejected_statuses(simulator: ProviderSimulator, session: requests.Session, status: int) -> None:
    response = session.post(f"{simulator.url}/v1/orders?status={status}", json={"a": 1}, timeout=5)

    error = classify_http_response(WHERE, response)

    assert isinstance(error, ProviderRejected)
    assert not error.retryable
    assert error.error_type is ErrorType.PROVIDER_REJECTED
    assert error.status_code == status
    assert error.body == error_body(status)
    assert error.message == f"{WHERE}: provider rejected the request (HTTP {status})"


# -- reclassified: a provider's rule over HTTP's ----------------------------------------------------


def test_a_transient_answer_reclassified_as_a_rejection_keeps_the_answer_and_waits_for_nothing(
    simulator: ProviderSimulator, session: requests.Session
) -> None:
    response = session.get(
        f"{simulator.url}/v1/orders", params={"status": "503", "retry_after": "3"}, timeout=5
    )
    error = classify_http_response(WHERE, response)
    assert isinstance(error, TransientError) and error.retry_after == 3.0
    error.headers = {"Request-Id": "req-1"}

    rejected = reclassified(error, response, ProviderRejected, f"{WHERE}: the provider says not to retry")

    assert isinstance(rejected, ProviderRejected) and not rejected.retryable
    assert rejected.error_type is ErrorType.PROVIDER_REJECTED
    assert rejected.message == f"{WHERE}: the provider says not to retry"
    assert (rejected.status_code, rejected.body) == (503, error_body(503))
    assert rejected.headers == {"Request-Id": "req-1"}
    assert rejected.retry_after is None


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [(None, ErrorType.PROVIDER_UNAVAILABLE), (ErrorType.RESOURCE_LOCKED, ErrorType.RESOURCE_LOCKED)],
)
def test_a_rejection_reclassified_as_transient_waits_for_the_answers_retry_after(
    simulator: ProviderSimulator,
    session: requests.Session,
    error_type: ErrorType | None,
    expected: ErrorType,
) -> None:
    response = session.post(f"{simulator.url}/v1/orders?status=409&retry_after=4", json={}, timeout=5)
    error = classify_http_response(WHERE, response)
    assert isinstance(error, ProviderRejected) and error.retry_after is None

    retried = reclassified(error, response, TransientError, f"{WHERE}: busy", error_type=error_type)

    assert isinstance(retried, TransientError) and retried.retryable
    assert retried.error_type is expected
    assert (retried.message, retried.status_code, retried.body) == (f"{WHERE}: busy", 409, error_body(409))
    assert retried.retry_after == 4.0


def test_a_reclassified_error_keeps_the_wait_a_provider_refined(
    simulator: ProviderSimulator, session: requests.Session
) -> None:
    response = session.get(
        f"{simulator.url}/v1/orders", params={"status": "429", "retry_after": "5"}, timeout=5
    )
    error = classify_http_response(WHERE, response)
    assert error is not None
    error.retry_after = 30.0  # as an adapter sets it from the provider's own rate-limit headers

    retried = reclassified(
        error, response, TransientError, f"{WHERE}: limited", error_type=ErrorType.RATE_LIMITED
    )

    assert retried.retry_after == 30.0


# -- Stripe's rules where they differ from HTTP's --------------------------------------------------


def stripe_answer(session: requests.Session, answer: Answer) -> requests.Response:
    with FakeStripe("sk_test_classification") as fake:
        fake.script(answer)
        return session.post(f"{fake.url}/v1/payment_intents", data={"amount": "100"}, timeout=5)


def stripe_adapter(session: requests.Session) -> StripeAdapter:
    settings = provider_settings("stripe", adapter="stripe")  # it only classifies answers; it calls nothing
    return StripeAdapter(settings, session)


def test_stripe_retries_a_rate_limit_answered_as_400_as_a_rate_limit(session: requests.Session) -> None:
    # Stripe used to answer rate limits with 400 rate_limit; HTTP alone would reject it.
    response = stripe_answer(
        session,
        stripe_error(
            400, "invalid_request_error", RATE_LIMIT_MESSAGE, code="rate_limit", headers={"Retry-After": "2"}
        ),
    )
    assert isinstance(classify_http_response(WHERE, response), ProviderRejected)

    error = stripe_adapter(session).classify("create_payment_intent", response)

    assert isinstance(error, TransientError) and error.error_type is ErrorType.RATE_LIMITED
    assert (error.status_code, error.retry_after) == (400, 2.0)
    assert error.message == (
        "stripe.create_payment_intent: rate limited by Stripe (HTTP 400 invalid_request_error/rate_limit: "
        f"{RATE_LIMIT_MESSAGE})"
    )


def test_stripe_fails_a_408_at_once_though_http_would_retry_it(session: requests.Session) -> None:
    response = stripe_answer(session, stripe_error(408, "api_error", "Request timed out"))
    assert isinstance(classify_http_response(WHERE, response), TransientError)

    error = stripe_adapter(session).classify("create_payment_intent", response)

    assert isinstance(error, ProviderRejected) and not error.retryable
    assert error.message == (
        "stripe.create_payment_intent: Stripe rejected the request (HTTP 408 api_error: Request timed out)"
    )


def test_response_body_truncates_long_text(text_server: str, session: requests.Session) -> None:
    response = session.get(f"{text_server}/long", timeout=5)

    body = response_body(response)

    assert body == "x" * MAX_BODY_CHARS + "…"
    error = classify_http_response(WHERE, response)
    assert error is not None
    assert error.body == body


def test_response_body_keeps_text_at_the_limit(text_server: str, session: requests.Session) -> None:
    response = session.get(f"{text_server}/exact", timeout=5)

    assert response_body(response) == "y" * MAX_BODY_CHARS


def test_response_body_of_broken_json_is_its_text(text_server: str, session: requests.Session) -> None:
    response = session.get(f"{text_server}/broken", timeout=5)

    assert response_body(response) == "{not json"


def test_response_body_of_json_and_text(simulator: ProviderSimulator, session: requests.Session) -> None:
    json_response = session.get(f"{simulator.url}/v1/x?status=418", timeout=5)
    text_response = session.get(f"{simulator.url}/v1/x?text=1", timeout=5)

    assert response_body(json_response) == error_body(418)
    assert response_body(text_response) == "ok"


# -- HttpAdapter.call ------------------------------------------------------------------------------


def test_call_sends_the_request_and_idempotency_headers(
    adapter: HttpAdapter, simulator: ProviderSimulator
) -> None:
    payload = adapter.parse_payload(
        "request",
        {
            "method": "post",
            "path": "/v1/charges",
            "params": {"currency": "eur", "capture": True},
            "json": {"amount": 500, "items": ["a", "b"]},
            "headers": {"X-Trace": "t-1"},
        },
    )

    result = adapter.call("request", payload, idempotency_key="charge-1", request_id="req-1").model

    assert isinstance(result, HttpResponse)
    assert result.status_code == 200
    assert result.body["method"] == "POST"
    assert result.body["path"] == "/v1/charges"
    assert result.body["json"] == {"amount": 500, "items": ["a", "b"]}
    assert result.body["idempotency_key"] == "charge-1"
    assert result.body["request_id"] == "req-1"
    [call] = simulator.calls("/v1/charges")
    assert call.method == "POST"
    assert call.query == {"currency": "eur", "capture": "True"}
    assert call.json == {"amount": 500, "items": ["a", "b"]}
    assert call.headers["idempotency-key"] == "charge-1"
    assert call.headers["x-request-id"] == "req-1"
    assert call.headers["x-trace"] == "t-1"
    assert "authorization" not in call.headers


def test_call_returns_text_bodies_as_text(adapter: HttpAdapter, simulator: ProviderSimulator) -> None:
    payload = adapter.parse_payload("request", {"method": "GET", "path": "/v1/ping", "params": {"text": 1}})

    result = adapter.call("request", payload, idempotency_key="k", request_id="r").model

    assert result == HttpResponse(status_code=200, body="ok")


@pytest.mark.parametrize(("method", "query"), [("DELETE", {"status": 204}), ("HEAD", {})])
def test_call_without_a_body(
    adapter: HttpAdapter, simulator: ProviderSimulator, method: str, query: dict[str, int]
) -> None:
    payload = adapter.parse_payload("request", {"method": method, "path": "/v1/orders/7", "params": query})

    result = adapter.call("request", payload, idempotency_key="k", request_id="r").model

    assert result == HttpResponse(status_code=204 if query else 200, body=None)
    assert [call.method for call in simulator.calls("/v1/orders/7")] == [method]


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (503, TransientError, ErrorType.PROVIDER_UNAVAILABLE),
        (429, TransientError, ErrorType.RATE_LIMITED),
        (422, ProviderRejected, ErrorType.PROVIDER_REJECTED),
    ],
)
def test_call_raises_the_classified_error(
    adapter: HttpAdapter, status: int, error_class: type[Exception], error_type: ErrorType
) -> None:
    payload = adapter.parse_payload(
        "request", {"method": "POST", "path": "/v1/x", "params": {"status": status}}
    )

    with pytest.raises(error_class) as caught:
        adapter.call("request", payload, idempotency_key="k", request_id="r")

    assert getattr(caught.value, "error_type", None) is error_type
    assert getattr(caught.value, "body", None) == error_body(status)


def test_call_times_out(simulator: ProviderSimulator, session: requests.Session) -> None:
    adapter = HttpAdapter(provider(simulator.url, timeout=0.2), session)
    payload = adapter.parse_payload("request", {"method": "POST", "path": "/v1/slow", "params": {"delay": 2}})

    with pytest.raises(TransientError) as caught:
        adapter.call("request", payload, idempotency_key="k", request_id="r")

    assert caught.value.error_type is ErrorType.TIMEOUT
    assert caught.value.message == "acme.request: no answer within 0.2s"
    assert isinstance(caught.value.__cause__, requests.Timeout)
    assert len(simulator.calls("/v1/slow")) == 1


def test_call_with_dropped_connection(adapter: HttpAdapter, simulator: ProviderSimulator) -> None:
    payload = adapter.parse_payload("request", {"method": "POST", "path": "/v1/drop", "params": {"drop": 1}})

    with pytest.raises(TransientError) as caught:
        adapter.call("request", payload, idempotency_key="k", request_id="r")

    assert caught.value.error_type is ErrorType.CONNECTION_ERROR
    assert caught.value.message.startswith(f"acme.request: cannot connect to {simulator.url}")
    assert [call.status for call in simulator.calls("/v1/drop")] == [0]


def test_call_to_a_closed_port(session: requests.Session) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    adapter = HttpAdapter(provider(base_url), session)
    payload = adapter.parse_payload("request", {"method": "GET", "path": "/v1/x"})

    with pytest.raises(TransientError) as caught:
        adapter.call("request", payload, idempotency_key="k", request_id="r")

    assert caught.value.error_type is ErrorType.CONNECTION_ERROR
    assert caught.value.message.startswith(f"acme.request: cannot connect to {base_url}")


# -- parse_payload ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "Post", "PATCH", "delete"])
def test_parse_payload_accepts_any_case_method(adapter: HttpAdapter, method: str) -> None:
    payload = adapter.parse_payload("request", {"method": method, "path": "/v1/orders"})

    assert isinstance(payload, HttpRequest)
    assert payload.method == method.upper()


@pytest.mark.parametrize(
    ("payload", "field", "detail"),
    [
        ({"method": "POST"}, "payload.path", "Field required"),
        ({"method": "POST", "path": "v1/orders"}, "payload.path", "starting with '/'"),
        ({"method": "POST", "path": "https://evil.example/v1"}, "payload.path", "starting with '/'"),
        ({"method": "POST", "path": "/v1/a b"}, "payload.path", "starting with '/'"),
        ({"path": "/v1/orders"}, "payload.method", "Field required"),
        ({"method": "FETCH", "path": "/v1/orders"}, "payload.method", "Input should be 'GET'"),
        (
            {"method": "POST", "path": "/v1/orders", "url": "/x"},
            "payload.url",
            "Extra inputs are not permitted",
        ),
        (
            {"method": "POST", "path": "/v1/orders", "headers": {"Authorization": "Bearer s3cret"}},
            "payload.headers",
            "must not travel in messages",
        ),
        (
            {"method": "POST", "path": "/v1/orders", "headers": {"x-api-key": "s3cret"}},
            "payload.headers",
            "must not travel in messages",
        ),
        (
            {"method": "POST", "path": "/v1/orders", "headers": {"Idempotency-Key": "other"}},
            "payload.headers",
            "is set by the worker",
        ),
        (
            {"method": "POST", "path": "/v1/orders", "headers": {"X-Request-ID": "other"}},
            "payload.headers",
            "is set by the worker",
        ),
        ("POST /v1/orders", "payload", "valid dictionary"),
    ],
)
def test_parse_payload_rejects(adapter: HttpAdapter, payload: Any, field: str, detail: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        adapter.parse_payload("request", payload)

    message = caught.value.message
    assert message.startswith(f"acme.request: {field}: ")
    assert detail in message
    assert caught.value.error_type is ErrorType.INVALID_REQUEST
    assert "s3cret" not in message


def test_unknown_operation_is_an_invalid_request(adapter: HttpAdapter) -> None:
    with pytest.raises(InvalidRequest) as caught:
        adapter.parse_payload("charge", {"method": "POST", "path": "/v1/orders"})

    assert caught.value.message == "acme: adapter 'http' has no operation 'charge' (it has: request)"


def test_an_answer_cut_off_in_transit_is_transient(simulator: ProviderSimulator) -> None:
    # the provider may have carried the request out: it must be retried under the same key, not refused
    adapter = HttpAdapter(provider(simulator.url), requests.Session())
    payload = adapter.parse_payload("request", {"method": "POST", "path": "/v1/orders?cut=1"})
    with pytest.raises(TransientError) as caught:
        adapter.call("request", payload, idempotency_key="cut-1", request_id="r")
    assert caught.value.error_type is ErrorType.CONNECTION_ERROR
    assert "cut off" in caught.value.message


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("headers", {"X-Auth-Token": "s3cret"}),
        ("headers", {"Api-Key": "s3cret"}),
        ("headers", {"PRIVATE-TOKEN": "s3cret"}),
        ("params", {"api_key": "s3cret"}),
        ("params", {"access_token": "s3cret"}),
    ],
)
def test_credential_like_headers_and_params_are_refused(
    simulator: ProviderSimulator, part: str, value: dict[str, str]
) -> None:
    adapter = HttpAdapter(provider(simulator.url), requests.Session())
    with pytest.raises(InvalidRequest, match="looks like a credential") as caught:
        adapter.parse_payload("request", {"method": "GET", "path": "/v1/orders", part: value})
    assert "s3cret" not in caught.value.message
