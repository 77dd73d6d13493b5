"""The sendgrid adapter against a local server playing SendGrid's v3 Mail Send (tests/fakes/sendgrid.py):
the documented request and answers, each documented error body, the X-RateLimit-* headers feeding the
shared throttle in real Redis, and the ledger. One clock drives the ledger, the throttle and the fake's
rate-limit periods, starting at the real time since SendGrid's X-RateLimit-Reset is a Unix time."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import select

from integrations.adapters.base import Reply
from integrations.adapters.sendgrid import SendGridAdapter
from integrations.auth import BearerAuth, static_credentials
from integrations.errors import (
    ContractViolation,
    ErrorType,
    InvalidRequest,
    OperationError,
    ProviderRejected,
    TransientError,
)
from integrations.ledger.models import Operation, OperationStatus
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Defer, Done, Failed, Outcome, Retry
from integrations.pipeline import OperationRunner
from integrations.providers import ProviderSettings
from integrations.runtime import build_runner
from tests.clock import Clock
from tests.fakes.sendgrid import FakeSendGrid, error_body
from tests.fakes.server import Answer
from tests.providers import provider_settings

# A made-up key of the shape of SendGrid's (69 characters).
API_KEY = "SG.fakeKeyOfTheTestAccoun.0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
SENDER = {"email": "orders@example.com", "name": "Example Order Confirmation"}
ATTACHMENT = base64.b64encode(b'<!DOCTYPE html>\n<html lang="en"></html>\n').decode()


@pytest.fixture(autouse=True)
def api_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC))


@pytest.fixture
def sendgrid(clock: Clock) -> Iterator[FakeSendGrid]:
    with FakeSendGrid(API_KEY, templates=["d-welcome"], clock=clock.timestamp) as fake:
        yield fake


def provider(name: str, base_url: str) -> ProviderSettings:
    return provider_settings(
        name,
        adapter="sendgrid",
        base_url=base_url,
        timeout=2.0,
        auth={"type": "bearer", "secret": "env:SENDGRID_API_KEY"},
        retry={"max_attempts": 4, "backoff_base": 0.1, "backoff_max": 1.0},
    )


@pytest.fixture
def adapter_for(provider_name: str) -> Iterator[Callable[[FakeSendGrid], SendGridAdapter]]:
    sessions: list[requests.Session] = []

    def make(fake: FakeSendGrid) -> SendGridAdapter:
        settings = provider(provider_name, fake.url)
        assert isinstance(settings.auth, BearerAuth)
        sessions.append(requests.Session())
        return SendGridAdapter(settings, sessions[-1], static_credentials(settings.name, settings.auth))

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def adapter(
    adapter_for: Callable[[FakeSendGrid], SendGridAdapter], sendgrid: FakeSendGrid
) -> SendGridAdapter:
    return adapter_for(sendgrid)


def message(**fields: Any) -> dict[str, Any]:
    """The reference's ``MailSendNoTemplate`` example, in part."""
    return {
        "personalizations": [
            {
                "to": [
                    {"email": "alex@example.com", "name": "Alex"},
                    {"email": "bola@example.com", "name": "Bola"},
                ],
                "cc": [{"email": "charlie@example.com", "name": "Charlie"}],
            }
        ],
        "from": SENDER,
        "reply_to": {"email": "customer_service@example.com", "name": "Example Customer Service Team"},
        "subject": "Your Example Order Confirmation",
        "content": [{"type": "text/html", "value": "<p>Hello from Twilio SendGrid!</p>"}],
    } | fields


def send(adapter: SendGridAdapter, payload: dict[str, Any], key: str = "order-8812-confirmation") -> Reply:
    return adapter.call(
        "send_mail", adapter.parse_payload("send_mail", payload), idempotency_key=key, request_id="req-5f2c"
    )


def test_send_mail_posts_the_documented_request_and_returns_the_message_id(
    adapter: SendGridAdapter, sendgrid: FakeSendGrid
) -> None:
    reply = send(adapter, message(), key="order-8812-confirmation")

    [request] = sendgrid.received()
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.header("Authorization") == f"Bearer {API_KEY}"
    assert request.header("Content-Type") == "application/json"
    # Sent on every call by every adapter; SendGrid ignores them (hence the key in custom_args).
    assert request.header("Idempotency-Key") == "order-8812-confirmation"
    assert request.header("X-Request-ID") == "req-5f2c"
    assert request.json() == message(custom_args={"idempotency_key": "order-8812-confirmation"})
    assert request.json()["from"] == SENDER
    [message_id] = sendgrid.sent
    assert reply.model.model_dump() == {"status_code": 202, "message_id": message_id}


def test_the_reference_examples_are_sent_as_they_are(
    adapter: SendGridAdapter, sendgrid: FakeSendGrid
) -> None:
    settings = {
        "categories": ["cake", "pie", "baking"],
        "send_at": 1617260400,
        "batch_id": "AsdFgHjklQweRTYuIopzXcVBNm0aSDfGHjklmZcVbNMqWert1znmOP2asDFjkl",
        "asm": {"group_id": 12345, "groups_to_display": [12345]},
        "ip_pool_name": "transactional email",
        "mail_settings": {
            "bypass_list_management": {"enable": False},
            "footer": {"enable": False},
            "sandbox_mode": {"enable": False},
        },
        "tracking_settings": {
            "click_tracking": {"enable": True, "enable_text": False},
            "open_tracking": {"enable": True, "substitution_tag": "%open-track%"},
            "subscription_tracking": {"enable": False},
        },
        "attachments": [
            {
                "content": ATTACHMENT,
                "filename": "index.html",
                "type": "text/html",
                "disposition": "attachment",
            }
        ],
    }
    no_template = message(
        personalizations=[
            {
                "to": [
                    {"email": "alex@example.com", "name": "Alex"},
                    {"email": "bola@example.com", "name": "Bola"},
                ],
                "cc": [{"email": "charlie@example.com", "name": "Charlie"}],
                "bcc": [{"email": "dana@example.com", "name": "Dana"}],
            },
            {
                "from": {"email": "sales@example.com", "name": "Example Sales Team"},
                "to": [{"email": "ira@example.com", "name": "Ira"}],
                "bcc": [{"email": "lee@example.com", "name": "Lee"}],
            },
        ],
        **settings,
    )
    dynamic_template = {
        "personalizations": [
            {
                "to": [
                    {"email": "alex@example.com", "name": "Alex"},
                    {"email": "bola@example.com", "name": "Bola"},
                ],
                "dynamic_template_data": {
                    "subject": "Hello, Alex",
                    "customer_name": "Alex",
                    "confirmation_number": "123abc456def789hij0",
                },
            }
        ],
        "from": SENDER,
        "reply_to": {"email": "customer_service@example.com", "name": "Example Customer Service Team"},
        "template_id": "d-welcome",
        **settings,
    }
    for key, payload in [("no-template", no_template), ("dynamic-template", dynamic_template)]:
        assert send(adapter, payload, key=key).model.model_dump()["status_code"] == 202
        assert sendgrid.received()[-1].json() == payload | {"custom_args": {"idempotency_key": key}}
    assert len(sendgrid.sent) == 2


def test_the_idempotency_key_joins_the_callers_custom_args(
    adapter: SendGridAdapter, sendgrid: FakeSendGrid
) -> None:
    payload = message(custom_args={"order_id": "8812"})
    payload["personalizations"][0]["custom_args"] = {"recipient_kind": "customer"}

    send(adapter, payload, key="order-8812-confirmation")

    body = sendgrid.received()[0].json()
    assert body["custom_args"] == {"order_id": "8812", "idempotency_key": "order-8812-confirmation"}
    assert body["personalizations"][0]["custom_args"] == {"recipient_kind": "customer"}


@pytest.mark.parametrize(
    ("change", "names"),
    [
        pytest.param(
            lambda m: m.update(form=m.pop("from")),
            ["payload.form: Extra inputs are not permitted", "payload.from"],
            id="typo-form",
        ),
        pytest.param(
            lambda m: m["personalizations"][0].update(too=[]),
            ["payload.personalizations.0.too"],
            id="typo-too",
        ),
        pytest.param(
            lambda m: m.update(from_={"email": "orders"}), ["payload.from_"], id="python-name-from_"
        ),
        pytest.param(
            lambda m: m.update({"from": {"email": "orders"}}),
            ["payload.from.email", "not an e-mail address"],
            id="from-not-an-address",
        ),
        pytest.param(lambda m: m.pop("content"), ["content is required unless template_id"], id="no-content"),
        pytest.param(lambda m: m.pop("subject"), ["subject is required"], id="no-subject"),
        pytest.param(
            lambda m: m.update(custom_args={"order_id": 8812}),
            ["payload.custom_args.order_id"],
            id="custom-arg-not-a-string",
        ),
        pytest.param(
            lambda m: m.update(custom_args={"idempotency_key": "mine"}),
            ["payload.custom_args", "is set by the worker"],
            id="custom-arg-of-the-worker",
        ),
        pytest.param(
            lambda m: m.update(custom_args={"notes": "x" * 9000}),
            ["custom_args", "may not exceed"],
            id="custom-args-too-large",
        ),
        pytest.param(
            lambda m: m.update(categories=[f"c{i}" for i in range(11)]),
            ["payload.categories"],
            id="11-categories",
        ),
        pytest.param(
            lambda m: m.update(headers={"Subject": "Hi"}),
            ["payload.headers", "cannot be overridden"],
            id="reserved-header",
        ),
        pytest.param(
            lambda m: m.update(reply_to_list=[{"email": "a@example.com"}]),
            ["reply_to or reply_to_list"],
            id="reply-to-twice",
        ),
        pytest.param(lambda m: m.update(ip_pool_name="x"), ["payload.ip_pool_name"], id="ip-pool-name-short"),
        pytest.param(
            lambda m: m.update(asm={"groups_to_display": [1]}),
            ["payload.asm.group_id"],
            id="asm-without-group",
        ),
        pytest.param(lambda m: m.update(send_at="1617260400"), ["payload.send_at"], id="send-at-not-integer"),
        pytest.param(
            lambda m: m.update(
                content=[{"type": "text/html", "value": "<p>Hi</p>"}, {"type": "text/plain", "value": "Hi"}]
            ),
            ["payload.content", "text/plain must come first"],
            id="html-before-plain",
        ),
        pytest.param(
            lambda m: m.update(
                personalizations=[{"to": [{"email": f"r{i}@example.com"}]} for i in range(1001)]
            ),
            ["payload.personalizations", "at most 1000"],
            id="1001-personalizations",
        ),
        pytest.param(
            lambda m: m.update(
                personalizations=[{"to": [{"email": f"r{i}@example.com"} for i in range(1001)]}]
            ),
            ["at most 1000 recipients"],
            id="1001-recipients",
        ),
        pytest.param(
            lambda m: m.update(attachments=[{"content": "not base64!", "filename": "a.pdf"}]),
            ["payload.attachments.0.content", "Base64"],
            id="attachment-not-base64",
        ),
    ],
)
def test_a_message_that_breaks_the_documented_schema_is_refused_naming_the_field(
    adapter: SendGridAdapter, sendgrid: FakeSendGrid, provider_name: str, change: Any, names: list[str]
) -> None:
    payload = message()
    change(payload)
    with pytest.raises(InvalidRequest) as refused:
        adapter.parse_payload("send_mail", payload)
    assert refused.value.message.startswith(f"{provider_name}.send_mail: ")
    for name in names:
        assert name in refused.value.message
    assert sendgrid.received() == []


@pytest.mark.parametrize(
    ("answer", "error", "error_type", "says"),
    [
        (
            Answer(
                400,
                error_body(
                    ("from", "The from object must be provided for every email send."),
                    (
                        "personalizations.0.to",
                        "The to parameter is required for all personalization objects.",
                    ),
                ),
            ),
            ProviderRejected,
            ErrorType.PROVIDER_REJECTED,
            [
                "SendGrid rejected the message (HTTP 400: from: The from object must be provided for every email "
                "send.; personalizations.0.to: The to parameter is required for all personalization objects.)",
                "under a new idempotency key",
            ],
        ),
        (
            Answer(400, {"errors": [{"message": "invalid request", "field": "null"}]}),
            ProviderRejected,
            ErrorType.PROVIDER_REJECTED,
            ["(HTTP 400: invalid request)"],
        ),
        (
            Answer(413, {"errors": [{"message": "content too large", "field": "null"}]}),
            ProviderRejected,
            ErrorType.PROVIDER_REJECTED,
            ["(HTTP 413: content too large)", "less than 30 MB"],
        ),
        (
            Answer(500, {"errors": [{"message": "internal server error"}]}),
            TransientError,
            ErrorType.PROVIDER_UNAVAILABLE,
            ["SendGrid unavailable (HTTP 500: internal server error)"],
        ),
        (Answer(503, ""), TransientError, ErrorType.PROVIDER_UNAVAILABLE, ["(HTTP 503: no error detail"]),
        (
            Answer(405, {"errors": [{"message": "method not allowed", "field": "null"}]}),
            ProviderRejected,
            ErrorType.PROVIDER_REJECTED,
            ["(HTTP 405: method not allowed)"],
        ),
    ],
    ids=["400-with-fields", "400-without-field", "413", "500", "503-without-body", "405"],
)
def test_documented_error_answers_are_classified(
    adapter: SendGridAdapter,
    sendgrid: FakeSendGrid,
    provider_name: str,
    answer: Answer,
    error: type[OperationError],
    error_type: ErrorType,
    says: list[str],
) -> None:
    sendgrid.script(answer)
    with pytest.raises(error) as failed:
        send(adapter, message())
    assert failed.value.error_type is error_type and failed.value.status_code == answer.status
    assert failed.value.message.startswith(f"{provider_name}.send_mail: ")
    for text in says:
        assert text in failed.value.message
    assert failed.value.body == (answer.body or "")


def test_a_wrong_api_key_says_to_check_the_key_and_its_scopes(
    adapter_for: Callable[[FakeSendGrid], SendGridAdapter],
) -> None:
    with FakeSendGrid("SG.another-accounts-key") as other_account:
        with pytest.raises(ProviderRejected) as refused:
            send(adapter_for(other_account), message())
        assert other_account.received()[0].header("Authorization") == f"Bearer {API_KEY}"
    assert refused.value.status_code == 401
    assert (
        "HTTP 401: The provided authorization grant is invalid, expired, or revoked" in refused.value.message
    )
    assert "check the provider's API key" in refused.value.message and "mail.send" in refused.value.message
    assert API_KEY not in refused.value.message and API_KEY not in json.dumps(refused.value.body)


def test_a_key_without_the_mail_send_scope_says_to_check_its_scopes(
    adapter_for: Callable[[FakeSendGrid], SendGridAdapter],
) -> None:
    with (
        FakeSendGrid(API_KEY, scopes=["mail.batch.read"]) as account,
        pytest.raises(ProviderRejected) as refused,
    ):
        send(adapter_for(account), message())
    assert refused.value.status_code == 403 and "HTTP 403: access forbidden" in refused.value.message
    assert "its scopes: sending needs mail.send" in refused.value.message


def test_an_unverified_sender_is_refused_with_sendgrids_reason(
    adapter_for: Callable[[FakeSendGrid], SendGridAdapter],
) -> None:
    with FakeSendGrid(API_KEY, verified_senders=["billing@example.com"]) as account:
        with pytest.raises(ProviderRejected) as refused:
            send(adapter_for(account), message())
        assert account.sent == {}
    assert "from: The from address does not match a verified Sender Identity" in refused.value.message
    assert "the from address must be a verified Sender Identity" in refused.value.message


def test_a_429_is_retried_no_earlier_than_x_ratelimit_reset(
    adapter: SendGridAdapter, sendgrid: FakeSendGrid
) -> None:
    quota = sendgrid.rate_limit(600, window=30, remaining=0)
    before = time.time()
    with pytest.raises(TransientError) as limited:
        send(adapter, message())
    assert limited.value.error_type is ErrorType.RATE_LIMITED and limited.value.status_code == 429
    assert "rate limited by SendGrid (HTTP 429: too many requests)" in limited.value.message
    assert limited.value.retry_after is not None
    assert quota.reset - time.time() <= limited.value.retry_after <= quota.reset - before
    assert limited.value.headers["X-RateLimit-Remaining"] == "0"
    assert sendgrid.sent == {}


def test_a_429_with_retry_after_is_retried_after_it(adapter: SendGridAdapter, sendgrid: FakeSendGrid) -> None:
    reset = str(int(time.time()) + 60)
    headers = {
        "Retry-After": "7",
        "X-RateLimit-Limit": "600",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": reset,
    }
    sendgrid.script(Answer(429, error_body((None, "too many requests")), headers))
    with pytest.raises(TransientError) as limited:
        send(adapter, message())
    assert limited.value.retry_after == 7


def test_sandbox_mode_is_validated_and_not_sent(adapter: SendGridAdapter, sendgrid: FakeSendGrid) -> None:
    reply = send(adapter, message(mail_settings={"sandbox_mode": {"enable": True}}))
    assert reply.model.model_dump() == {"status_code": 200, "message_id": None}
    assert sendgrid.sent == {}


def test_a_202_without_x_message_id_is_still_a_send_recorded_without_an_id(
    adapter: SendGridAdapter, sendgrid: FakeSendGrid, provider_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    sendgrid.script(Answer(202))
    with caplog.at_level(logging.WARNING, logger="integrations.adapters.sendgrid"):
        reply = send(adapter, message())
    assert reply.model.model_dump() == {"status_code": 202, "message_id": None}
    assert (
        f"{provider_name}.send_mail: SendGrid accepted the message (HTTP 202) without an X-Message-Id"
        in caplog.text
    )


def test_an_undocumented_success_status_is_a_contract_violation(
    adapter: SendGridAdapter, sendgrid: FakeSendGrid
) -> None:
    sendgrid.script(Answer(201, {"id": "x"}))
    with pytest.raises(ContractViolation) as violation:
        send(adapter, message())
    assert "SendGrid answered HTTP 201, which Mail Send does not document" in violation.value.message
    assert "Email Activity before sending it again" in violation.value.message


# Through the pipeline: a runner per worker, with the shared breaker and throttle in real Redis.


@pytest.fixture
def ledger(ledger_url: str, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger.connect(ledger_url, clock=clock)
    yield ledger
    ledger.dispose()


@pytest.fixture
def worker(
    sendgrid: FakeSendGrid,
    adapter_for: Callable[[FakeSendGrid], SendGridAdapter],
    ledger: Ledger,
    shared_redis: redis.Redis,
    clock: Clock,
) -> Callable[[], OperationRunner]:
    """A new worker's runner for the provider, with its guards built as the runtime builds them."""

    def make() -> OperationRunner:
        adapter = adapter_for(sendgrid)
        settings = adapter.provider
        return build_runner(settings, adapter, ledger, shared_redis, clock=clock, clock_ms=clock.ms)

    return make


def deliver(runner: OperationRunner, key: str, payload: dict[str, Any] | None = None) -> Outcome:
    kwargs = {"payload": payload or message(), "idempotency_key": key}
    return runner.run(Delivery("send_mail", kwargs, message_id=f"msg-{key}"))


def stored_row(ledger: Ledger, key: str) -> dict[str, Any]:
    table = Operation.__table__
    with ledger.engine.connect() as connection:
        row = connection.execute(select(table).where(table.c.idempotency_key == key)).mappings().one()
    return dict(row)


def test_a_spent_quota_pauses_the_provider_for_every_worker_before_a_429(
    worker: Callable[[], OperationRunner],
    sendgrid: FakeSendGrid,
    ledger: Ledger,
    provider_name: str,
    clock: Clock,
) -> None:
    quota = sendgrid.rate_limit(600, window=5, remaining=1)
    worker_a, worker_b = worker(), worker()
    assert isinstance(deliver(worker_a, "welcome-1"), Done)  # 202 with X-RateLimit-Remaining: 0
    assert sendgrid.received()[0].header("Authorization") == f"Bearer {API_KEY}"

    for runner, key in [(worker_a, "welcome-2"), (worker_b, "welcome-3")]:
        held = deliver(runner, key)
        assert isinstance(held, Defer) and held.reason == "paused"
        assert 0 < held.delay <= quota.reset - clock.timestamp()
    assert len(sendgrid.received()) == 1  # no 429 was needed
    waiting = ledger.find(provider_name, "welcome-3")
    assert waiting is not None and (waiting.status, waiting.attempts, waiting.waiting) == (
        OperationStatus.QUEUED,
        0,
        "paused",
    )

    clock.advance(quota.reset - clock.timestamp() + 1)  # SendGrid's refresh period is over
    assert isinstance(deliver(worker_b, "welcome-3"), Done)
    assert len(sendgrid.sent) == 2


def test_a_429_is_retried_after_the_reset_and_pauses_the_provider_for_every_worker(
    worker: Callable[[], OperationRunner],
    sendgrid: FakeSendGrid,
    ledger: Ledger,
    provider_name: str,
    clock: Clock,
) -> None:
    quota = sendgrid.rate_limit(600, window=5, remaining=0)
    worker_a, worker_b = worker(), worker()
    retry = deliver(worker_a, "welcome-1")
    assert isinstance(retry, Retry) and retry.error.type is ErrorType.RATE_LIMITED
    assert quota.reset - time.time() <= retry.delay <= quota.reset - clock.timestamp()

    held = deliver(worker_b, "welcome-2")
    assert isinstance(held, Defer) and held.reason == "paused"
    assert isinstance(deliver(worker_a, "welcome-1"), Defer)  # its retry is not due yet
    assert len(sendgrid.received()) == 1

    clock.advance(quota.reset - clock.timestamp() + 0.5)  # past the reset, and so past the retry's delay
    done = deliver(worker_a, "welcome-1")
    assert isinstance(done, Done) and done.result["attempts"] == 2
    assert isinstance(deliver(worker_b, "welcome-2"), Done)
    record = ledger.find(provider_name, "welcome-1")
    assert record is not None and record.status is OperationStatus.SUCCEEDED
    assert len(sendgrid.received()) == 3 and len(sendgrid.sent) == 2


def test_a_sent_message_is_recorded_with_its_message_id_and_never_the_api_key(
    worker: Callable[[], OperationRunner],
    sendgrid: FakeSendGrid,
    ledger: Ledger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG):
        done = deliver(worker(), "order-8812-confirmation")
    assert isinstance(done, Done)
    [message_id] = sendgrid.sent
    assert done.result["response"] == {"status_code": 202, "message_id": message_id}
    row = stored_row(ledger, "order-8812-confirmation")
    assert row["status"] == "succeeded" and row["response"] == {"status_code": 202, "message_id": message_id}
    assert API_KEY not in json.dumps(row, default=str) + json.dumps(done.result) + caplog.text


def test_a_rejected_send_fails_at_once_after_one_call_and_the_api_key_is_nowhere(
    worker: Callable[[], OperationRunner],
    sendgrid: FakeSendGrid,
    ledger: Ledger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = message(template_id="d-no-such-template")
    with caplog.at_level(logging.DEBUG):
        failed = deliver(worker(), "welcome-1", payload)
    assert isinstance(failed, Failed) and failed.status is OperationStatus.FAILED
    assert failed.error.type is ErrorType.PROVIDER_REJECTED and failed.error.status_code == 400
    assert "template_id: The Template ID must be a valid template id for your account" in failed.message
    assert failed.error.body["errors"][0]["field"] == "template_id"
    [request] = sendgrid.received()
    assert request.header("Authorization") == f"Bearer {API_KEY}"

    again = deliver(worker(), "welcome-1", payload)  # the same message again: the stored outcome, no call
    assert isinstance(again, Failed) and again.replayed and len(sendgrid.received()) == 1
    row = stored_row(ledger, "welcome-1")
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["error"]["type"] == "provider_rejected"
    assert API_KEY not in json.dumps(row, default=str) + failed.message + caplog.text


def test_an_invalid_message_fails_naming_the_field_without_a_call(
    worker: Callable[[], OperationRunner], sendgrid: FakeSendGrid, ledger: Ledger, provider_name: str
) -> None:
    payload = message()
    payload["form"] = payload.pop("from")
    failed = deliver(worker(), "welcome-1", payload)
    assert isinstance(failed, Failed) and failed.error.type is ErrorType.INVALID_REQUEST
    assert f"{provider_name}.send_mail: " in failed.message and "payload.form" in failed.message
    assert sendgrid.received() == []
    assert stored_row(ledger, "welcome-1")["status"] == "failed"
