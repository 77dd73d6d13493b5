"""SendGrid's v3 Mail Send as a local HTTP server, answering as SendGrid documents it.

``POST /v3/mail/send`` with ``Authorization: Bearer <API key>``: 202 Accepted, an empty body and an
``X-Message-Id`` header; 200 in sandbox mode; errors as ``{"errors": [{"message", "field", "help"}]}``
(401 for a wrong key, 403 for a key without the mail.send scope or an unverified sender, 400 for a body
that breaks the documented rules, 413 above 30 MB); with a quota set, ``X-RateLimit-Limit/-Remaining/-Reset``
on every answer and 429 once the quota of the refresh period is spent.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tests.fakes.server import Answer, FakeAPI, Received

MAIL_SEND = "/v3/mail/send"
MAX_BODY_BYTES = 30 * 1024 * 1024
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.{field}"
ADDRESS_EXAMPLE = (
    '{"email": "example@example.com"} or {"email": "example@example.com", "name": "Example Recipient"}'
)


def error_body(*errors: tuple[str | None, str]) -> dict[str, Any]:
    """SendGrid's error body for ``(field, message)`` pairs, with the help link its answers carry."""
    return {
        "errors": [
            {
                "message": message,
                "field": field,
                "help": HELP.format(field=re.sub(r"\.\d+", "", field)) if field else None,
            }
            for field, message in errors
        ]
    }


@dataclass
class Quota:
    """SendGrid's requests per refresh period, as its X-RateLimit-* headers report them."""

    limit: int
    window: float
    remaining: int
    reset: int  # Unix time the period ends

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class FakeSendGrid(FakeAPI):
    """One SendGrid account: its API key and the key's scopes, its verified senders (None: any), its
    templates, its quota; ``sent`` holds the accepted messages by their X-Message-Id."""

    def __init__(
        self,
        api_key: str,
        *,
        scopes: Iterable[str] = ("mail.send",),
        verified_senders: Iterable[str] | None = None,
        templates: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.scopes = set(scopes)
        self.verified_senders = None if verified_senders is None else {s.lower() for s in verified_senders}
        self.templates = set(templates)
        self.clock = clock
        self.quota: Quota | None = None
        self.sent: dict[str, Any] = {}

    def rate_limit(self, limit: int, *, window: float = 60.0, remaining: int | None = None) -> Quota:
        """Start a refresh period of ``window`` seconds now, with ``remaining`` (default ``limit``) left."""
        reset = math.ceil(self.clock() + window)
        with self.lock:
            self.quota = Quota(limit, window, limit if remaining is None else remaining, reset)
            return self.quota

    def answer(self, request: Received) -> Answer:
        if request.path != MAIL_SEND:
            return Answer(404, error_body((None, "not found")))
        if request.method != "POST":
            return Answer(405, error_body((None, "method not allowed")))
        authorization = request.header("Authorization")
        if authorization is None:
            return Answer(401, error_body((None, "authorization required")))
        if authorization != f"Bearer {self.api_key}":
            return Answer(
                401, error_body((None, "The provided authorization grant is invalid, expired, or revoked"))
            )
        if "mail.send" not in self.scopes:
            return Answer(403, error_body((None, "access forbidden")))
        quota = self._current_quota()
        if quota is None:
            return self._send(request)
        if quota.remaining == 0:
            return Answer(429, error_body((None, "too many requests")), quota.headers())
        quota.remaining -= 1
        answer = self._send(request)
        return Answer(answer.status, answer.body, answer.headers | quota.headers())

    def _current_quota(self) -> Quota | None:
        """The quota of the refresh period now, a new period starting once the last one has ended."""
        quota, now = self.quota, self.clock()
        if quota is not None and now >= quota.reset:
            quota.remaining, quota.reset = quota.limit, math.ceil(now + quota.window)
        return quota

    def _send(self, request: Received) -> Answer:
        if len(request.body) > MAX_BODY_BYTES:
            return Answer(413, error_body((None, "content too large")))
        try:
            message = request.json()
        except ValueError:
            return Answer(400, error_body((None, "invalid request")))
        if not isinstance(message, dict):
            return Answer(400, error_body((None, "invalid request")))
        problems = mail_send_problems(message)
        template = message.get("template_id")
        if template is not None and template not in self.templates:
            problems.append(
                (
                    "template_id",
                    f"The Template ID must be a valid template id for your account. You provided {template}.",
                )
            )
        if problems:
            return Answer(400, error_body(*problems))
        sender = str(message["from"]["email"]).lower()
        if self.verified_senders is not None and sender not in self.verified_senders:
            return Answer(
                403,
                {
                    "errors": [
                        {
                            "message": "The from address does not match a verified Sender Identity. Mail cannot "
                            "be sent until this error is resolved. Visit https://sendgrid.com/docs/for-developers/"
                            "sending-email/sender-identity/ to see the Sender Identity requirements",
                            "field": "from",
                            "help": None,
                        }
                    ]
                },
            )
        if (message.get("mail_settings") or {}).get("sandbox_mode", {}).get("enable") is True:
            return Answer(200)  # valid, not queued
        message_id = secrets.token_urlsafe(16)  # 22 characters, like SendGrid's
        self.sent[message_id] = message
        return Answer(202, None, {"X-Message-Id": message_id})


def mail_send_problems(message: dict[str, Any]) -> list[tuple[str | None, str]]:
    """The documented request rules SendGrid checks, as ``(field, message)`` in its words."""
    problems: list[tuple[str | None, str]] = []
    personalizations = message.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(("personalizations", "You must have at least one personalization."))
        personalizations = []
    elif len(personalizations) > 1000:
        problems.append(
            (
                "personalizations",
                f"The personalization block is limited to 1000 personalizations per API request. You have "
                f"provided {len(personalizations)} personalizations. Please consider splitting this into "
                "multiple requests and resending your request.",
            )
        )
    recipients = 0
    for index, personalization in enumerate(personalizations):
        to = personalization.get("to") if isinstance(personalization, dict) else None
        if not isinstance(to, list) or not to:
            problems.append(
                (
                    f"personalizations.{index}.to",
                    "The to parameter is required for all personalization objects.",
                )
            )
            continue
        for position, recipient in enumerate(to):
            if not (
                isinstance(recipient, dict)
                and isinstance(recipient.get("email"), str)
                and "@" in recipient["email"]
            ):
                problems.append(
                    (
                        f"personalizations.{index}.to.{position}.email",
                        "The to array must at least have an email parameter with a valid email address and it "
                        f"may also contain a name parameter. e.g. {ADDRESS_EXAMPLE}",
                    )
                )
        recipients += sum(len(personalization.get(kind) or []) for kind in ("to", "cc", "bcc"))
        custom_args = personalization.get("custom_args")
        if isinstance(custom_args, dict) and not all(isinstance(v, str) for v in custom_args.values()):
            problems.append(
                (
                    f"personalizations.{index}.custom_args",
                    "All values of custom arguments object must be strings",
                )
            )
    if recipients > 1000:
        problems.append(
            ("personalizations", "There is a limit of 1000 total recipients (to + cc + bcc) per request.")
        )
    sender = message.get("from")
    if not (isinstance(sender, dict) and isinstance(sender.get("email"), str) and "@" in sender["email"]):
        problems.append(
            (
                "from",
                "The from object must be provided for every email send. It is an object that requires the "
                f"email parameter, but may also contain a name parameter. e.g. {ADDRESS_EXAMPLE}",
            )
        )
    template = message.get("template_id")
    if "content" not in message and template is None:
        problems.append(
            (
                "content",
                "The content param is required unless you are using a transactional template and have defined "
                "a template_ID.",
            )
        )
    every_one_has_a_subject = all(isinstance(p, dict) and p.get("subject") for p in personalizations)
    if not message.get("subject") and template is None and not every_one_has_a_subject:
        problems.append(
            (
                "subject",
                "The subject is required. You can get around this requirement if you use a template with a "
                "subject defined or if every personalization has a subject defined.",
            )
        )
    custom_args = message.get("custom_args")
    if custom_args is not None and not isinstance(custom_args, dict):
        problems.append(("custom_args", f"Invalid type. Expected: object, given: {_json_type(custom_args)}."))
    elif isinstance(custom_args, dict) and not all(isinstance(v, str) for v in custom_args.values()):
        problems.append(("custom_args", "All values of custom arguments object must be strings"))
    categories = message.get("categories")
    if isinstance(categories, list) and len(categories) > 10:
        problems.append(
            (
                "categories",
                f"There is a limit of 10 categories for each email that is sent. You provided {len(categories)} "
                "categories.",
            )
        )
    return problems


def _json_type(value: Any) -> str:
    names = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array"}
    return names.get(type(value), "null")
