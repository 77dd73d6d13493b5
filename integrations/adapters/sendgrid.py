"""The ``sendgrid`` adapter: ``send_mail``, SendGrid's v3 Mail Send (``POST /v3/mail/send``).

SendGrid does not honour idempotency keys: a send whose answer is lost (a timeout, a dropped connection) is
tried again and the e-mail may go out twice. So the operation's idempotency key also travels in the message's
``custom_args`` as ``idempotency_key``: SendGrid hands custom arguments to the Event Webhook with every event
of the message, and the application can drop the duplicates there.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from pydantic import BaseModel

from integrations.adapters.answers import response_body
from integrations.adapters.base import Adapter, HttpCall, OperationSpec, Reply, operation
from integrations.adapters.sendgrid_mail import IDEMPOTENCY_ARG, MailSendResponse, SendMail
from integrations.errors import ContractViolation, ErrorType, OperationError
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.resilience.ratelimit_headers import parse_rate_limit_headers
from integrations.webhooks.events import Event, EventLink
from integrations.webhooks.store import Relation

log = logging.getLogger("integrations.adapters.sendgrid")

# SendGrid's own error messages quoted in ours; the whole body is in the ledger.
MAX_QUOTED_ERRORS = 10

# The Event Webhook's delivery events that say whether a message reached the recipient's server
# (https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event).
DELIVERY_EVENTS = {
    "delivered": Relation.CONFIRMS,
    "bounce": Relation.CONTRADICTS,
    "dropped": Relation.CONTRADICTS,
}


class SendGridAdapter(Adapter):
    """Sends e-mail through SendGrid's v3 Mail Send, with the API key of ``[providers.<p>.auth]`` as bearer
    token. SendGrid has no idempotency keys: see the module's docstring."""

    name = "sendgrid"

    @operation(payload=SendMail, response=MailSendResponse)
    def send_mail(self, payload: SendMail) -> HttpCall:
        return HttpCall(
            method="POST",
            path="/v3/mail/send",
            json=payload.model_dump(mode="json", by_alias=True, exclude_none=True),
        )

    def call(self, operation: str, payload: BaseModel, *, idempotency_key: str, request_id: str) -> Reply:
        if isinstance(payload, SendMail):
            custom_args = (payload.custom_args or {}) | {IDEMPOTENCY_ARG: idempotency_key}
            payload = payload.model_copy(update={"custom_args": custom_args})
        return super().call(operation, payload, idempotency_key=idempotency_key, request_id=request_id)

    def event_link(self, event: Event) -> EventLink | None:
        """``delivered`` confirms, ``bounce`` and ``dropped`` contradict, the ``send_mail`` whose
        idempotency key the event carries among its custom arguments (SendGrid adds them to each event
        as fields of its own; older accounts nest them in ``unique_args``).

        An Event Webhook body is a list of events, of any messages and types; the receiver stores each as
        an event of its own (named by its ``sg_event_id``), so ``payload`` is one event object here. A
        list is read by its first event."""
        payload = event.payload
        first = payload[0] if isinstance(payload, list) and payload else payload
        if not isinstance(first, dict):
            return None
        relation = DELIVERY_EVENTS.get(str(first.get("event")))
        key = first.get(IDEMPOTENCY_ARG)
        nested = first.get("unique_args")
        if key is None and isinstance(nested, dict):
            key = nested.get(IDEMPOTENCY_ARG)
        if relation is None or not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
            return None
        return EventLink(relation, idempotency_key=key)

    def classify(self, operation: str, response: requests.Response) -> OperationError | None:
        """The base classification in SendGrid's words, quoting its ``errors`` (field: message), with what
        to do: a 429 waits for ``Retry-After``, else ``X-RateLimit-Reset``; a 401/403 names the key, its
        scopes and the Sender Identity; any other rejection says to correct the message."""
        error = super().classify(operation, response)
        if error is None:
            return None
        where, status = self.where(operation), response.status_code
        said = f"HTTP {status}: {quote_errors(error.body)}"
        if error.error_type is ErrorType.RATE_LIMITED:
            if error.retry_after is None:  # SendGrid names the end of its rate-limit period instead
                quota = parse_rate_limit_headers(response.headers)
                error.retry_after = quota.reset_after if quota is not None else None
            error.message = f"{where}: rate limited by SendGrid ({said}); retried after its reset"
        elif error.retryable:
            error.message = f"{where}: SendGrid unavailable ({said})"
        elif status in (401, 403):
            what = "did not accept the API key" if status == 401 else "refused the send"
            advice = (
                f"check the provider's API key ([providers.{self.provider.name}.auth]) and its scopes: "
                "sending needs mail.send"
            )
            if status == 403:
                advice += "; and the from address must be a verified Sender Identity"
            error.message = f"{where}: SendGrid {what} ({said}); {advice}"
        else:
            advice = "correct the message and send it under a new idempotency key"
            if status == 413:
                advice = (
                    "the message is too large (SendGrid takes less than 30 MB, attachments included); "
                    + advice
                )
            error.message = f"{where}: SendGrid rejected the message ({said}); {advice}"
        return error

    def parse_response(self, spec: OperationSpec, response: requests.Response) -> BaseModel:
        """202 (queued) and 200 (sandbox mode: valid, not queued) are what Mail Send documents; any other
        2xx is a contract violation. A 202 always carries ``X-Message-Id`` by SendGrid's documentation, but
        one without it still means the e-mail is queued: failing it would invite a second send, so it
        succeeds without ``message_id`` (the webhook has the idempotency key) and a warning is logged."""
        status = response.status_code
        message_id = response.headers.get("X-Message-Id") or None
        if status == 202:
            if message_id is None:
                log.warning(
                    "%s: SendGrid accepted the message (HTTP 202) without an X-Message-Id header; "
                    "recorded without a message id",
                    self.where(spec.name),
                )
            return MailSendResponse(status_code=status, message_id=message_id)
        if status == 200:
            return MailSendResponse(status_code=status, message_id=message_id)
        raise ContractViolation(
            f"{self.where(spec.name)}: SendGrid answered HTTP {status}, which Mail Send does not document "
            "(202 queued, 200 sandbox mode); the message may have been accepted: look for it in SendGrid's "
            "Email Activity before sending it again (has the API changed?)",
            status_code=status,
            body=response_body(response),
        )


def quote_errors(body: Any) -> str:
    """SendGrid's ``{"errors": [{"message", "field", "help"}]}`` as ``field: message; ...``."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return "no error detail in the answer"
    quoted: list[str] = []
    for error in errors[:MAX_QUOTED_ERRORS]:
        if not isinstance(error, dict):
            continue
        message = str(error.get("message") or "no message")
        field = error.get("field")
        # The reference's examples spell an absent field as the string "null".
        quoted.append(
            f"{field}: {message}" if isinstance(field, str) and field not in ("", "null") else message
        )
    if len(errors) > MAX_QUOTED_ERRORS:
        quoted.append(f"and {len(errors) - MAX_QUOTED_ERRORS} more")
    return "; ".join(quoted) or "no error detail in the answer"
