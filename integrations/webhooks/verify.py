"""Whether a webhook delivery is authentic, and which event it carries.

``verify`` checks the signature over the raw bytes received, with every configured key (a secret being
rotated has two), comparing in constant time, before the body is parsed; only then does it read the
events' ids and types: one event for a JSON object, one per element for an array of events that carry
their own ids (SendGrid's, HubSpot's). A refusal is one of these, each with the HTTP status the
receiver answers::

    WebhookRefused                  status, reason (a fixed word for counters and the log line)
    ├── SignatureInvalid            401  the signature is malformed or matches no key
    │   └── SignatureMissing        401  a header the scheme needs is absent
    ├── TimestampOutOfTolerance     400  an authentic delivery signed too long ago, or in the future
    ├── BodyTooLarge                413  above ``max_body_bytes``: refused before it is hashed
    └── PayloadInvalid              400  an authentic body that is not JSON, or lacks an event's id or type

Messages name headers and fields, never their values, the body or a secret: they can be logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from integrations.errors import IntegrationsError
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.webhooks.settings import WebhookSettings

_DIGITS = re.compile(r"^[0-9]{1,20}$")
# HubSpot signs its request URI with these escapes decoded (its "Validate the v3 request signature").
_HUBSPOT_DECODED = {
    "3A": ":",
    "2F": "/",
    "3F": "?",
    "40": "@",
    "21": "!",
    "24": "$",
    "27": "'",
    "28": "(",
    "29": ")",
    "2A": "*",
    "2C": ",",
    "3B": ";",
}
_HUBSPOT_ESCAPE = re.compile("%(" + "|".join(_HUBSPOT_DECODED) + ")", re.IGNORECASE)


class WebhookRefused(IntegrationsError):
    """A delivery the receiver refuses; ``status`` is its HTTP answer."""

    status: ClassVar[int] = 400
    reason: ClassVar[str] = "refused"


class SignatureInvalid(WebhookRefused):
    status = 401
    reason = "signature_invalid"


class SignatureMissing(SignatureInvalid):
    reason = "signature_missing"


class TimestampOutOfTolerance(WebhookRefused):
    status = 400
    reason = "timestamp_out_of_tolerance"


class BodyTooLarge(WebhookRefused):
    status = 413
    reason = "body_too_large"


class PayloadInvalid(WebhookRefused):
    status = 400
    reason = "payload_invalid"


@dataclass(frozen=True)
class VerifiedEvent:
    """An event of an authentic delivery: the provider's id and type of it, its parsed JSON, and the
    bytes the ledger keeps of it (``body``)."""

    event_id: str
    event_type: str
    payload: Any = field(repr=False)  # kept out of a repr that could reach a log
    body: bytes = field(repr=False)


# Where each scheme's events carry their id and type ("body:<field>" of an event, or "header:<name>").
_SOURCES: dict[str, tuple[str, str]] = {
    "stripe": ("body:id", "body:type"),
    "standard": ("header:webhook-id", "body:type"),
    "hubspot_v3": ("body:eventId", "body:subscriptionType"),
    "sendgrid": ("body:sg_event_id", "body:event"),
}


def verify(
    settings: WebhookSettings,
    keys: Sequence[bytes],
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> tuple[VerifiedEvent, ...]:
    """The events of an authentic delivery, else a ``WebhookRefused``: ``authenticate``, then the body
    parsed and each event's id and type read from it (or from the headers the scheme says).

    A body that is a JSON object is one event, kept as the bytes received. A body that is an array,
    where events carry their own ids in the body (SendGrid's, HubSpot's), is one event per element, in
    its order, each with its id and type read from the element and kept as the element's canonical
    JSON (``canonical``): the signature covers the whole delivery, and was checked here."""
    authenticate(settings, keys, method=method, url=url, headers=headers, body=body, now=now)
    lowered = _lowered(headers)
    payload = _json(body)
    id_from, type_from = _SOURCES.get(settings.scheme, (settings.event_id, settings.event_type))
    if isinstance(payload, list) and id_from.startswith("body:"):
        if not payload:
            raise PayloadInvalid("the body is an empty list of events")
        events = []
        for number, element in enumerate(payload, start=1):
            where = f"event #{number} of the body"
            if not isinstance(element, dict):
                raise PayloadInvalid(f"{where} is not a JSON object")
            events.append(_event(element, canonical(element), id_from, type_from, lowered, where))
        return tuple(events)
    return (_event(payload, body, id_from, type_from, lowered, "the body"),)


def canonical(element: Any) -> bytes:
    """An event of an array body as the ledger keeps it: compact JSON, keys sorted, UTF-8 (all of it
    ASCII with ``\\u`` escapes when some text is not valid Unicode). The same event batched otherwise
    is kept as the same bytes."""
    try:
        return json.dumps(element, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON's escapes allow
        return json.dumps(element, separators=(",", ":"), sort_keys=True).encode()


def _event(
    payload: Any, body: bytes, id_from: str, type_from: str, headers: dict[str, str], where: str
) -> VerifiedEvent:
    return VerifiedEvent(
        _from_source(id_from, headers, payload, where),
        _from_source(type_from, headers, payload, where),
        payload,
        body,
    )


def authenticate(
    settings: WebhookSettings,
    keys: Sequence[bytes],
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> None:
    """Return if the delivery is signed with one of ``keys`` and, for a scheme with a timestamp, signed
    within the tolerance of ``now``; else raise a ``WebhookRefused``. The body is not parsed.

    ``keys`` are the HMAC keys of ``settings.secrets`` (``resolve_keys``); ``url`` the URL the provider
    called, scheme, host and query included (HubSpot signs it; the other schemes ignore it);
    ``headers`` in any case; ``now`` the receiver's clock in seconds since the epoch. The signature is
    checked before the timestamp, so a stranger learns nothing but "401".
    """
    if len(body) > settings.max_body_bytes:
        raise BodyTooLarge(f"the body is larger than max_body_bytes ({settings.max_body_bytes} bytes)")
    if not keys:
        raise ValueError("no keys to verify with: resolve_keys gives them from the settings' secrets")
    lowered = _lowered(headers)
    if settings.scheme == "stripe":
        _stripe(settings, keys, lowered, body, now)
    elif settings.scheme == "standard":
        _standard(settings, keys, lowered, body, now)
    elif settings.scheme == "hubspot_v3":
        _hubspot_v3(settings, keys, method, url, lowered, body, now)
    elif settings.scheme == "sendgrid":
        _sendgrid(settings, keys, lowered, body, now)
    else:
        _hmac_sha256(settings, keys, lowered, body)


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _stripe(
    settings: WebhookSettings, keys: Sequence[bytes], headers: dict[str, str], body: bytes, now: float
) -> None:
    header = _required(headers, "Stripe-Signature")
    timestamp = None
    signatures = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == "v1":
            signatures.append(_decoded(bytes.fromhex, value))
    if timestamp is None or not _DIGITS.match(timestamp):
        raise SignatureInvalid("the Stripe-Signature header has no timestamp t=<seconds>")
    signed = timestamp.encode("ascii") + b"." + body
    _match(keys, signed, signatures, "the Stripe-Signature header has no v1 signature of this body")
    _within(int(timestamp), now, settings.tolerance)


def _standard(
    settings: WebhookSettings, keys: Sequence[bytes], headers: dict[str, str], body: bytes, now: float
) -> None:
    message_id = _required(headers, "webhook-id")
    timestamp = _required(headers, "webhook-timestamp")
    header = _required(headers, "webhook-signature")
    if not _DIGITS.match(timestamp):
        raise SignatureInvalid("the webhook-timestamp header is not whole seconds since the epoch")
    signatures = []
    for entry in header.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1":  # v1a (asymmetric) and later versions are not ours to check
            signatures.append(_decoded(_base64, value))
    signed = f"{message_id}.{timestamp}.".encode() + body
    _match(keys, signed, signatures, "the webhook-signature header has no v1 signature of this body")
    _within(int(timestamp), now, settings.tolerance)


def _hubspot_v3(
    settings: WebhookSettings,
    keys: Sequence[bytes],
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    now: float,
) -> None:
    signature = _required(headers, "X-HubSpot-Signature-v3")
    timestamp = _required(headers, "X-HubSpot-Request-Timestamp")
    if not _DIGITS.match(timestamp):
        raise SignatureInvalid("the X-HubSpot-Request-Timestamp header is not milliseconds since the epoch")
    uri = _HUBSPOT_ESCAPE.sub(lambda escape: _HUBSPOT_DECODED[escape.group(1).upper()], url)
    signed = f"{method}{uri}".encode() + body + timestamp.encode("ascii")
    _match(
        keys,
        signed,
        [_decoded(_base64, signature)],
        "the X-HubSpot-Signature-v3 header is not the signature of this request",
    )
    _within(int(timestamp) / 1000, now, settings.tolerance)


def _sendgrid(
    settings: WebhookSettings, keys: Sequence[bytes], headers: dict[str, str], body: bytes, now: float
) -> None:
    """SendGrid's Signed Event Webhook: an ECDSA (P-256, SHA-256) signature, base64 of its DER, of the
    timestamp header's text followed by the body."""
    signature = _decoded(_base64, _required(headers, "X-Twilio-Email-Event-Webhook-Signature"))
    timestamp = _required(headers, "X-Twilio-Email-Event-Webhook-Timestamp")
    if not _DIGITS.match(timestamp):
        raise SignatureInvalid(
            "the X-Twilio-Email-Event-Webhook-Timestamp header is not whole seconds since the epoch"
        )
    signed = timestamp.encode("ascii") + body
    if not signature or not any(_ecdsa_valid(key, signature, signed) for key in keys):
        raise SignatureInvalid(
            "the X-Twilio-Email-Event-Webhook-Signature header is not a signature of this body by the "
            "provider's verification key"
        )
    _within(int(timestamp), now, settings.tolerance)


@lru_cache(maxsize=64)
def _public_key(der: bytes) -> ec.EllipticCurvePublicKey:
    key = load_der_public_key(der)
    if not isinstance(key, ec.EllipticCurvePublicKey):  # resolve_keys gives only these
        raise ValueError("a SendGrid key is an elliptic-curve public key: resolve_keys gives it")
    return key


def _ecdsa_valid(der: bytes, signature: bytes, signed: bytes) -> bool:
    try:
        _public_key(der).verify(signature, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _hmac_sha256(
    settings: WebhookSettings, keys: Sequence[bytes], headers: dict[str, str], body: bytes
) -> None:
    if settings.header is None:  # the settings refuse this; a model built by hand may not
        raise ValueError("scheme 'hmac_sha256' needs the settings' header")
    value = _required(headers, settings.header)
    prefix = settings.prefix or ""
    if not value.startswith(prefix):
        raise SignatureInvalid(f"the {settings.header} header does not start with {prefix!r}")
    decode = bytes.fromhex if settings.encoding == "hex" else _base64
    _match(
        keys,
        body,
        [_decoded(decode, value.removeprefix(prefix))],
        f"the {settings.header} header is not the signature of this body",
    )


def _required(headers: dict[str, str], name: str) -> str:
    value = headers.get(name.lower(), "").strip()
    if not value:
        raise SignatureMissing(f"the {name} header is missing")
    return value


def _decoded(decode: Callable[[str], bytes], text: str) -> bytes | None:
    """A signature's bytes; None for one that does not decode (it matches nothing)."""
    try:
        return decode(text.strip())
    except (ValueError, binascii.Error):
        return None


def _base64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _match(keys: Sequence[bytes], signed: bytes, signatures: Iterable[bytes | None], refusal: str) -> None:
    """Some signature is the HMAC-SHA256 of ``signed`` with some key, compared in constant time."""
    given = [signature for signature in signatures if signature]
    for key in keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        if any(hmac.compare_digest(expected, signature) for signature in given):
            return
    raise SignatureInvalid(refusal)


def _within(signed_at: float, now: float, tolerance: float) -> None:
    if abs(now - signed_at) > tolerance:
        direction = "ago" if signed_at < now else "ahead"
        raise TimestampOutOfTolerance(
            f"signed {abs(now - signed_at):.0f} s {direction}, beyond the tolerance of {tolerance:g} s: "
            "a replay, or a clock that is off"
        )


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PayloadInvalid("the body is not JSON") from None


def _body_field(payload: Any, path: str, where: str) -> str:
    value = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise PayloadInvalid(f"{where} has no field {path!r}")
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PayloadInvalid(f"the field {path!r} of {where} is not text or a whole number")
    return _event_key(str(value), f"the field {path!r} of {where}")


def _from_source(source: str, headers: dict[str, str], payload: Any, where: str) -> str:
    kind, _, name = source.partition(":")
    if kind == "header":
        value = headers.get(name.lower(), "").strip()
        if not value:
            raise PayloadInvalid(f"the {name} header is missing")
        return _event_key(value, f"the {name} header")
    return _body_field(payload, name, where)


def _event_key(value: str, what: str) -> str:
    if not value or len(value) > MAX_KEY_LENGTH:
        raise PayloadInvalid(f"{what} must be 1 to {MAX_KEY_LENGTH} characters")
    return value


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def read_body(
    stream: _Readable, limit: int, *, content_length: str | None = None, chunk: int = 65536
) -> bytes:
    """A request's body, read from ``stream`` up to ``limit`` bytes; ``BodyTooLarge`` as soon as more
    is declared or arrives, so an oversized body is never read, kept or hashed whole.

    With ``content_length`` (the header, as WSGI's ``CONTENT_LENGTH``) exactly that many bytes are read,
    never more; without it the stream is read to its end.
    """
    declared = None
    if content_length is not None and content_length.strip():
        if not _DIGITS.match(content_length.strip()):
            raise PayloadInvalid("the Content-Length header is not a number of bytes")
        declared = int(content_length)
        if declared > limit:
            raise BodyTooLarge(f"the body is larger than max_body_bytes ({limit} bytes)")
    wanted = limit + 1 if declared is None else declared
    parts: list[bytes] = []
    received = 0
    while received < wanted:
        part = stream.read(min(chunk, wanted - received))
        if not part:
            break
        parts.append(part)
        received += len(part)
    if received > limit:
        raise BodyTooLarge(f"the body is larger than max_body_bytes ({limit} bytes)")
    return b"".join(parts)
