"""What a message may not carry: the headers the worker sets itself, and anything named like a credential.

Credentials come from the worker's configuration, never from a message (they would travel through the
broker and be stored and logged): a payload naming one is refused, and a refused message is recorded with
such values redacted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Headers the worker sets itself; a payload may not supply them.
RESERVED_HEADERS = frozenset({"idempotency-key", "x-request-id", "content-length", "host"})
# Header and query-parameter names that look like a credential.
CREDENTIAL_NAME = re.compile(
    r"authori[sz]ation|cookie|token|secret|passw(or)?d|api[-_]?key|access[-_]?key|private[-_]?key|"
    r"signature|session|credential|^key$",
    re.IGNORECASE,
)


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
    """Refuse payload headers that the worker owns, that would carry credentials, or that HTTP cannot carry
    (a value beyond Latin-1 fails in the call otherwise, after the attempt is claimed)."""
    for name, value in headers.items():
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name!r} is set by the worker (from idempotency_key / request_id)")
        check_not_credential("header", name)
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(
                f"header {name!r} has a character HTTP headers cannot carry (beyond Latin-1); encode it, "
                "e.g. as RFC 8187 or base64, or send it in the body"
            ) from None
    return headers


def check_not_credential(kind: str, name: str) -> None:
    """Refuse a header or query-parameter name that looks like a credential, saying where they belong."""
    if CREDENTIAL_NAME.search(name):
        raise ValueError(
            f"{kind} {name!r} looks like a credential, which must not travel in messages (they would be "
            "stored and logged); declare credentials in the providers file under [providers.<name>.auth]"
        )
