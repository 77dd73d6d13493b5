"""``[providers.<p>.webhooks]``: how a provider signs the events it delivers, and with which secrets.

```toml
[providers.stripe.webhooks]
scheme = "stripe"                          # stripe | standard | hubspot_v3 | sendgrid | hmac_sha256
secrets = ["env:STRIPE_WEBHOOK_SECRET"]    # several while a secret is rotated
tolerance = 300                            # seconds, for schemes with a timestamp
```

With ``scheme = "sendgrid"`` (SendGrid's Signed Event Webhook, ECDSA) each secret is SendGrid's *public*
verification key, base64 DER as SendGrid shows it or PEM, referenced like any secret.

With ``scheme = "hmac_sha256"`` (a bare HMAC of the body, as GitHub sends it) ``header`` names the
signature's header, ``encoding`` is ``hex`` (the default) or ``base64``, ``prefix`` is text before the
signature (``"sha256="``), and ``event_id`` / ``event_type`` say where the event's id and type are:
``"body:<field>"`` (dotted for nested fields) or ``"header:<name>"``; by default the body's ``id`` and
``type``. Secrets are referenced as ``[providers.<p>.auth]`` references them, never written here.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_public_key,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from integrations.auth import resolve_secret, secret_reference
from integrations.errors import ConfigError

Scheme = Literal["stripe", "standard", "hubspot_v3", "sendgrid", "hmac_sha256"]

DEFAULT_TOLERANCE = 300.0
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# A webhook carries an event, not a file: a limit above this is a mistake in the file.
MAX_BODY_BYTES = 64 * 1024 * 1024

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FIELD_PATH = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")
# The prefix of a Standard Webhooks secret; what follows it is the key, base64-encoded.
STANDARD_SECRET_PREFIX = "whsec_"

# The keys that only ``hmac_sha256`` takes, and the schemes whose signature covers a timestamp.
_HMAC_ONLY = ("encoding", "prefix", "event_id", "event_type")
_TIMED: frozenset[str] = frozenset({"stripe", "standard", "hubspot_v3", "sendgrid"})
# The curve of SendGrid's signing key (ECDSA P-256).
SENDGRID_CURVE = ec.SECP256R1.name


class WebhookSettings(BaseModel):
    """One ``[providers.<name>.webhooks]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Declared first: the checks of the keys below read it.
    scheme: Scheme
    secrets: list[str]
    # How far a signed timestamp may be from the receiver's clock, either way.
    tolerance: Annotated[float, Field(gt=0, le=86400, strict=True)] = DEFAULT_TOLERANCE
    # A larger body is refused (413) before its signature is computed.
    max_body_bytes: Annotated[int, Field(ge=1, le=MAX_BODY_BYTES, strict=True)] = DEFAULT_MAX_BODY_BYTES
    header: str | None = Field(default=None, validate_default=True)
    encoding: Literal["hex", "base64"] = "hex"
    prefix: Annotated[str, Field(min_length=1)] | None = None
    event_id: str = "body:id"
    event_type: str = "body:type"

    @field_validator("secrets", mode="before")
    @classmethod
    def _a_list(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError(
                'must list one secret reference or more, e.g. secrets = ["env:STRIPE_WEBHOOK_SECRET"] '
                "(two while a secret is rotated)"
            )
        return value

    @field_validator("secrets")
    @classmethod
    def _references(cls, value: list[str]) -> list[str]:
        for reference in value:
            secret_reference(reference)
        if len(set(value)) != len(value):
            raise ValueError("lists the same secret twice; list each secret once")
        return value

    @field_validator("tolerance")
    @classmethod
    def _timed(cls, value: float, info: ValidationInfo) -> float:
        scheme = info.data.get("scheme")
        if scheme is not None and scheme not in _TIMED:
            raise ValueError(f"scheme {scheme!r} signs no timestamp; remove the key")
        return value

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None, info: ValidationInfo) -> str | None:
        scheme = info.data.get("scheme")
        if scheme is None:  # the scheme itself is wrong, and said so
            return value
        if scheme != "hmac_sha256":
            if value is not None:
                raise ValueError(f"scheme {scheme!r} has its own headers; remove the key")
            return None
        if value is None:
            raise ValueError(
                "required with scheme 'hmac_sha256': the header that carries the signature "
                "(e.g. 'X-Hub-Signature-256')"
            )
        if not _HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not an HTTP header name")
        return value

    @field_validator(*_HMAC_ONLY)
    @classmethod
    def _hmac_only(cls, value: Any, info: ValidationInfo) -> Any:
        scheme = info.data.get("scheme")
        if scheme is not None and scheme != "hmac_sha256":
            raise ValueError(f"only scheme 'hmac_sha256' takes this key, not {scheme!r}; remove it")
        return value

    @field_validator("event_id", "event_type")
    @classmethod
    def _source(cls, value: str) -> str:
        kind, _, name = value.partition(":")
        if kind == "header" and _HEADER_NAME.match(name):
            return value
        if kind == "body" and _FIELD_PATH.match(name):
            return value
        raise ValueError(
            f"{value!r} must be 'body:<field>' (dotted for a nested field, e.g. 'body:data.id') "
            "or 'header:<name>' (e.g. 'header:X-GitHub-Delivery')"
        )


def resolve_keys(provider: str, settings: WebhookSettings, *, source: str | None = None) -> tuple[bytes, ...]:
    """The keys ``settings.secrets`` reference, in their order; a ``ConfigError`` naming each one that
    cannot be had, with the providers file ``source``.

    A Standard Webhooks secret is ``whsec_`` and the base64 of its key; a SendGrid key is a P-256 public
    key, given as the DER bytes of its SubjectPublicKeyInfo; every other scheme keys its HMAC with the
    secret's text as it is (Stripe's ``whsec_`` included).
    """
    where = f"[providers.{provider}.webhooks]"
    if source is not None:
        where = f"{source}: {where}"
    keys: list[bytes] = []
    problems: list[str] = []
    for index, reference in enumerate(settings.secrets):
        at = f"{where} key 'secrets.{index}'"
        try:
            secret = resolve_secret(reference, at)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        try:
            if settings.scheme == "standard":
                key = _standard_key(secret)
            elif settings.scheme == "sendgrid":
                key = _sendgrid_key(secret)
            else:
                key = secret.encode("utf-8")
        except ValueError as exc:
            problems.append(f"{at}: the secret {reference} {exc}")
            continue
        keys.append(key)
    if problems:
        raise ConfigError("\n".join(problems))
    return tuple(keys)


def _standard_key(secret: str) -> bytes:
    encoded = secret.removeprefix(STANDARD_SECRET_PREFIX)
    try:
        # Unpadded base64 is met in the wild; padding beyond what is needed is ignored.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("is not base64 after 'whsec_': copy it again from the provider") from None
    if not key:
        raise ValueError("is empty after 'whsec_': copy it again from the provider")
    return key


def _sendgrid_key(secret: str) -> bytes:
    """The DER of a P-256 public key given as PEM or as the base64 of its DER (SendGrid's "Verification
    Key")."""
    text = secret.strip()
    advice = "copy the verification key again from SendGrid's Mail Settings, Signed Event Webhook"
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode("ascii"))
        else:
            key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, TypeError, UnsupportedAlgorithm):  # binascii.Error is a ValueError
        raise ValueError(f"is not a public key in PEM or base64 DER: {advice}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != SENDGRID_CURVE:
        raise ValueError(f"is not an ECDSA P-256 public key, as SendGrid signs with: {advice}")
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
