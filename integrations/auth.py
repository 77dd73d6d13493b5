"""Credentials of a provider: declared in the providers file, resolved inside the worker.

``[providers.<p>.auth]`` names a secret as ``env:NAME`` or ``file:/path``, never the secret itself, so it
never travels in messages and never lands in the ledger. The resolved values are registered with the log
redactor, so a log line that would show one shows ``***`` instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from integrations.errors import ConfigError
from integrations.redaction import register_secret

_REFERENCE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _reference(value: str) -> str:
    if not _REFERENCE.match(value):
        raise ValueError(
            "must reference the secret, not contain it: 'env:NAME' (an environment variable of the worker) "
            "or 'file:/absolute/path'"
        )
    return value


class _Auth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str

    _check_secret = field_validator("secret")(_reference)


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


AuthSettings = Annotated[BearerAuth | HeaderAuth, Field(discriminator="type")]


def resolve_secret(reference: str, where: str) -> str:
    """The secret a reference names; a ``ConfigError`` naming ``where`` and what to do if it cannot be had."""
    kind, _, name = reference.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise ConfigError(
                f"{where}: environment variable {name} is not set on this worker; set it, or change the reference"
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


@dataclass(frozen=True)
class Credentials:
    """Resolved credentials of one provider: the headers they add to every call."""

    headers: dict[str, str]

    def __repr__(self) -> str:  # never shows the secret, in a traceback or a debugger
        return f"Credentials(headers={sorted(self.headers)})"


def credentials(provider: str, auth: BearerAuth | HeaderAuth | None) -> Credentials:
    """Resolve ``auth`` for ``provider`` (in the worker, at its start and then once per process)."""
    if auth is None:
        return Credentials({})
    secret = resolve_secret(auth.secret, f"[providers.{provider}.auth] key 'secret'")
    if isinstance(auth, BearerAuth):
        return Credentials({"Authorization": f"Bearer {secret}"})
    return Credentials({auth.header: secret})
