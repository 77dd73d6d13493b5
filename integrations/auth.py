"""Credentials of a provider: declared in the providers file, resolved inside the worker.

``[providers.<p>.auth]`` names a secret as ``env:NAME`` or ``file:/path``, never the secret itself, so it
never travels in messages and never lands in the ledger. The resolved values are registered with the log
redactor, so a log line that would show one shows ``***`` instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from integrations.errors import ConfigError
from integrations.redaction import register_secret

_REFERENCE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def secret_reference(value: str) -> str:
    if not _REFERENCE.match(value):
        raise ValueError(
            "must reference the secret, not contain it: write 'env:NAME' (an environment variable of the "
            "worker) or 'file:/absolute/path' instead"
        )
    return value


class _Auth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str

    _check_secret = field_validator("secret")(secret_reference)


class BearerAuth(_Auth):
    """``Authorization: Bearer <secret>`` on every call."""

    type: Literal["bearer"]


class HeaderAuth(_Auth):
    """``<header>: <secret>`` on every call, for providers that take an API key in a header of their own."""

    type: Literal["header"]
    header: str

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not an HTTP header name")
        return value


class _OAuth2(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token_url: str
    client_id: str
    client_secret: str | None = None
    scopes: list[str] = []
    # Refresh this long before the token expires, so no call goes out with a token about to lapse.
    refresh_margin: Annotated[float, Field(ge=0)] = 300.0
    # How the client authenticates at the token endpoint: HTTP Basic (RFC 6749 2.3.1) or form fields.
    client_auth: Literal["basic", "post"] = "basic"

    @field_validator("token_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"token_url {value!r} must start with http:// or https://")
        return value

    @field_validator("client_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        return None if value is None else secret_reference(value)


class OAuth2ClientCredentials(_OAuth2):
    """The client credentials grant: the worker fetches access tokens with its client id and secret."""

    type: Literal["oauth2_client_credentials"]
    client_secret: str


class OAuth2RefreshToken(_OAuth2):
    """The refresh token grant: the worker exchanges a long-lived refresh token for access tokens."""

    type: Literal["oauth2_refresh_token"]
    refresh_token: str

    _check_refresh_token = field_validator("refresh_token")(secret_reference)


OAuth2 = OAuth2ClientCredentials | OAuth2RefreshToken
AuthSettings = Annotated[
    BearerAuth | HeaderAuth | OAuth2ClientCredentials | OAuth2RefreshToken, Field(discriminator="type")
]


def resolve_secret(reference: str, where: str) -> str:
    """The secret a reference names; a ``ConfigError`` naming ``where`` and what to do if it cannot be had."""
    kind, _, name = reference.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise ConfigError(
                f"{where}: environment variable {name} is not set where this runs; set it, or change the reference"
            )
    else:
        try:
            value = Path(name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read the secret file {name}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{where}: the secret file {name} is empty")
    register_secret(value)
    return value


class Credentials:
    """Credentials of one provider as an adapter uses them: the headers for the next call, and a way
    to recover from a 401 (static credentials have none)."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self._headers = headers or {}

    def headers(self) -> dict[str, str]:
        return self._headers

    def refresh(self, rejected: dict[str, str]) -> bool:
        """The provider answered 401 to ``rejected``: get fresh credentials; False if there are none."""
        return False

    def __repr__(self) -> str:  # never shows the secret, in a traceback or a debugger
        return f"{type(self).__name__}(headers={sorted(self.headers())})"


def static_credentials(provider: str, auth: BearerAuth | HeaderAuth | None) -> Credentials:
    """Resolve a static ``auth`` for ``provider``."""
    if auth is None:
        return Credentials()
    secret = resolve_secret(auth.secret, f"[providers.{provider}.auth] key 'secret'")
    if isinstance(auth, BearerAuth):
        return Credentials({"Authorization": f"Bearer {secret}"})
    return Credentials({auth.header: secret})


def check_secrets(
    provider: str, auth: BearerAuth | HeaderAuth | OAuth2 | None, *, source: str | None = None
) -> None:
    """Every secret ``auth`` references can be had (a worker checks this before it starts); else a
    ``ConfigError`` naming each that cannot, with the providers file ``source``."""
    if auth is None:
        return
    where = f"[providers.{provider}.auth]" if source is None else f"{source}: [providers.{provider}.auth]"
    problems = []
    for key in ("secret", "client_secret", "refresh_token"):
        reference = getattr(auth, key, None)
        if reference is not None:
            try:
                resolve_secret(reference, f"{where} key '{key}'")
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
