"""SendGrid's v3 Mail Send request and response, as its reference documents them, with its limits.

The request models refuse what SendGrid would refuse (sizes, counts, duplicate addresses, line breaks in
values that become MIME headers), so a bad message fails at once with the field named, not after a call.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from integrations.ledger.models import MAX_KEY_LENGTH

# The custom argument that carries the operation's idempotency key to the Event Webhook.
IDEMPOTENCY_ARG = "idempotency_key"
# SendGrid's limits, from its Mail Send reference and error list.
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000  # to + cc + bcc, across all personalizations
MAX_ADDRESS_LENGTH = 320
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_ASM_GROUPS_TO_DISPLAY = 25
MAX_SUBSTITUTIONS = 10_000
MAX_SUBSTITUTIONS_BYTES = 10_000  # per personalization
MAX_CUSTOM_ARGS_BYTES = 10_000  # message-level and personalization-level merged, per personalization
# Room kept in custom_args for the idempotency key the worker adds (at most 255 characters of 4 bytes).
RESERVED_CUSTOM_ARGS_BYTES = len(json.dumps({IDEMPOTENCY_ARG: ""})) + 4 * MAX_KEY_LENGTH
# Mail headers SendGrid sets itself and refuses in ``headers``.
RESERVED_MAIL_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)


class _Model(BaseModel):
    # Strict: SendGrid refuses a number where it wants a string ("must be strings") and vice versa.
    model_config = ConfigDict(extra="forbid", strict=True)


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _no_crlf(value: str | None, what: str, also: str = "") -> str | None:
    """SendGrid refuses line breaks (and, in some fields, ``;`` or ``,``) in values that become MIME headers."""
    forbidden = "\r\n" + also
    if value is not None and any(c in value for c in forbidden):
        listed = ", ".join(repr(c) for c in forbidden)
        raise ValueError(f"{what} cannot contain any of {listed}")
    return value


class Address(_Model):
    """An e-mail address with an optional display name (SendGrid's email object)."""

    email: StrictStr
    name: StrictStr | None = None

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        local, at, domain = value.rpartition("@")
        if not at or not local or "." not in domain or any(c.isspace() for c in value):
            raise ValueError(f"{value!r} is not an e-mail address")
        if len(value) > MAX_ADDRESS_LENGTH:
            raise ValueError(f"an e-mail address is at most {MAX_ADDRESS_LENGTH} characters")
        return value


class Sender(Address):
    """``from``: SendGrid does not support Unicode in the sender's address."""

    @field_validator("email")
    @classmethod
    def _ascii(cls, value: str) -> str:
        if not value.isascii():
            raise ValueError("the from address must be ASCII (SendGrid does not support Unicode there)")
        return value


class Recipient(Address):
    """A ``to``, ``cc`` or ``bcc`` entry: its name may not contain ``;`` or ``,``."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in ";,"):
            raise ValueError("a recipient's name cannot contain ';' or ','")
        return value


def _mail_headers(value: dict[str, str] | None) -> dict[str, str] | None:
    for name in value or {}:
        if not name or not name.isascii() or any(c.isspace() for c in name):
            raise ValueError(f"header name {name!r} must be ASCII without spaces")
        if name.lower() in RESERVED_MAIL_HEADERS:
            raise ValueError(f"header {name!r} is set by SendGrid and cannot be overridden")
    return value


def _custom_args(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("custom_args cannot be empty: leave it out instead")
    if IDEMPOTENCY_ARG in value:
        raise ValueError(
            f"custom argument {IDEMPOTENCY_ARG!r} is set by the worker from the message's idempotency_key"
        )
    return value


class Personalization(_Model):
    """One envelope: who receives this copy, and its own subject, headers, data and send time."""

    to: list[Recipient] = Field(min_length=1)
    cc: list[Recipient] | None = Field(default=None, max_length=MAX_RECIPIENTS)
    bcc: list[Recipient] | None = Field(default=None, max_length=MAX_RECIPIENTS)
    sender: Sender | None = Field(default=None, alias="from")
    subject: StrictStr | None = Field(default=None, min_length=1)
    headers: dict[str, StrictStr] | None = None
    substitutions: dict[str, StrictStr] | None = Field(default=None, max_length=MAX_SUBSTITUTIONS)
    dynamic_template_data: dict[str, Any] | None = None
    custom_args: dict[str, StrictStr] | None = None
    send_at: StrictInt | None = Field(default=None, ge=0)  # Unix time; at most 72 hours ahead

    _check_headers = field_validator("headers")(_mail_headers)
    _check_custom_args = field_validator("custom_args")(_custom_args)

    @field_validator("substitutions")
    @classmethod
    def _substitutions_size(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and _json_bytes(value) > MAX_SUBSTITUTIONS_BYTES:
            raise ValueError(
                f"substitutions may not exceed {MAX_SUBSTITUTIONS_BYTES:,} bytes per personalization"
            )
        return value

    @model_validator(mode="after")
    def _each_address_once(self) -> Personalization:
        seen: set[str] = set()
        for recipient in [*self.to, *(self.cc or []), *(self.bcc or [])]:
            address = recipient.email.lower()
            if address in seen:
                raise ValueError(f"{recipient.email} is included more than once (to, cc and bcc together)")
            seen.add(address)
        return self

    @property
    def recipients(self) -> int:
        return len(self.to) + len(self.cc or []) + len(self.bcc or [])


class Content(_Model):
    """A body of the message in one MIME type."""

    type: StrictStr = Field(min_length=1)
    value: StrictStr = Field(min_length=1)

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        _no_crlf(value, "a content type", also=";")
        return value


class Attachment(_Model):
    content: StrictStr = Field(min_length=1)  # Base64
    filename: StrictStr
    type: StrictStr | None = Field(default=None, min_length=1)
    disposition: Literal["inline", "attachment"] | None = None
    content_id: StrictStr | None = None

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError("the attachment content must be Base64 encoded") from None
        return value

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str) -> str:
        _no_crlf(value, "a filename", also=";,")
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str | None) -> str | None:
        return _no_crlf(value, "an attachment type", also=";")

    @field_validator("content_id")
    @classmethod
    def _content_id(cls, value: str | None) -> str | None:
        return _no_crlf(value, "a content ID", also=";,")


class Asm(_Model):
    """Unsubscribe handling: the suppression group of this message."""

    group_id: StrictInt
    groups_to_display: list[StrictInt] | None = Field(default=None, max_length=MAX_ASM_GROUPS_TO_DISPLAY)


class Setting(_Model):
    enable: StrictBool | None = None


class Footer(Setting):
    text: StrictStr | None = None
    html: StrictStr | None = None


class MailSettings(_Model):
    bypass_list_management: Setting | None = None
    bypass_spam_management: Setting | None = None
    bypass_bounce_management: Setting | None = None
    bypass_unsubscribe_management: Setting | None = None
    footer: Footer | None = None
    sandbox_mode: Setting | None = None

    @model_validator(mode="after")
    def _one_kind_of_bypass(self) -> MailSettings:
        others = (
            self.bypass_spam_management,
            self.bypass_bounce_management,
            self.bypass_unsubscribe_management,
        )
        bypass_all = self.bypass_list_management is not None and self.bypass_list_management.enable
        if bypass_all and any(other is not None and other.enable for other in others):
            raise ValueError("bypass_list_management cannot be combined with another bypass filter")
        return self


class ClickTracking(Setting):
    enable_text: StrictBool | None = None


class OpenTracking(Setting):
    substitution_tag: StrictStr | None = None


class SubscriptionTracking(Setting):
    text: StrictStr | None = None
    html: StrictStr | None = None
    substitution_tag: StrictStr | None = None


class GoogleAnalytics(Setting):
    utm_source: StrictStr | None = None
    utm_medium: StrictStr | None = None
    utm_term: StrictStr | None = None
    utm_content: StrictStr | None = None
    utm_campaign: StrictStr | None = None


class TrackingSettings(_Model):
    click_tracking: ClickTracking | None = None
    open_tracking: OpenTracking | None = None
    subscription_tracking: SubscriptionTracking | None = None
    ganalytics: GoogleAnalytics | None = None


class SendMail(_Model):
    """Payload of ``integrations.<provider>.send_mail``: SendGrid's Mail Send request body, as documented."""

    personalizations: list[Personalization] = Field(min_length=1, max_length=MAX_PERSONALIZATIONS)
    sender: Sender = Field(alias="from")
    reply_to: Address | None = None
    reply_to_list: list[Address] | None = Field(default=None, min_length=1, max_length=MAX_RECIPIENTS)
    subject: StrictStr | None = Field(default=None, min_length=1)
    content: list[Content] | None = Field(default=None, min_length=1)
    attachments: list[Attachment] | None = None
    template_id: StrictStr | None = Field(default=None, min_length=1)
    headers: dict[str, StrictStr] | None = None
    categories: list[StrictStr] | None = Field(default=None, max_length=MAX_CATEGORIES)
    custom_args: dict[str, StrictStr] | None = None
    send_at: StrictInt | None = Field(default=None, ge=0)  # Unix time; at most 72 hours ahead
    batch_id: StrictStr | None = None
    asm: Asm | None = None
    ip_pool_name: StrictStr | None = Field(default=None, min_length=2, max_length=64)
    mail_settings: MailSettings | None = None
    tracking_settings: TrackingSettings | None = None

    _check_headers = field_validator("headers")(_mail_headers)
    _check_custom_args = field_validator("custom_args")(_custom_args)

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: list[str] | None) -> list[str] | None:
        for category in value or []:
            if len(category) > MAX_CATEGORY_LENGTH or not category.isascii():
                raise ValueError(
                    f"category {category!r} must be ASCII, at most {MAX_CATEGORY_LENGTH} characters"
                )
        if value is not None and len(set(value)) != len(value):
            raise ValueError("categories must be unique")
        return value

    @field_validator("content")
    @classmethod
    def _content_order(cls, value: list[Content] | None) -> list[Content] | None:
        # RFC 1341 7.2, as SendGrid enforces it: text/plain first, then text/html, then any other type.
        ranks = [{"text/plain": 0, "text/html": 1}.get(part.type.lower(), 2) for part in value or []]
        if ranks != sorted(ranks):
            raise ValueError("text/plain must come first, then text/html, then any other type")
        return value

    @model_validator(mode="after")
    def _whole_message(self) -> SendMail:
        if self.content is None and self.template_id is None:
            raise ValueError("content is required unless template_id names a template")
        every_one_has_a_subject = all(p.subject for p in self.personalizations)
        if self.subject is None and self.template_id is None and not every_one_has_a_subject:
            raise ValueError(
                "subject is required unless template_id names a template or every personalization has one"
            )
        if self.reply_to is not None and self.reply_to_list is not None:
            raise ValueError("use reply_to or reply_to_list, not both")
        replies = [address.email.lower() for address in self.reply_to_list or []]
        if len(set(replies)) != len(replies):
            raise ValueError("the addresses of reply_to_list must be unique")
        recipients = sum(p.recipients for p in self.personalizations)
        if recipients > MAX_RECIPIENTS:
            raise ValueError(
                f"at most {MAX_RECIPIENTS} recipients (to + cc + bcc) per request, not {recipients}"
            )
        limit = MAX_CUSTOM_ARGS_BYTES - RESERVED_CUSTOM_ARGS_BYTES
        for personalization in self.personalizations:
            merged = (self.custom_args or {}) | (personalization.custom_args or {})
            if merged and _json_bytes(merged) > limit:
                raise ValueError(
                    f"custom_args, message-level and personalization-level together, may not exceed {limit:,} "
                    f"bytes (SendGrid's {MAX_CUSTOM_ARGS_BYTES:,}, less room for the idempotency key)"
                )
        return self


class MailSendResponse(BaseModel):
    """What ``send_mail`` returns: 202 (queued for delivery) with SendGrid's ``X-Message-Id``, or 200 in
    sandbox mode (valid, not sent)."""

    status_code: int
    message_id: str | None = None
