"""Every Redis key this package writes, built here and nowhere else.

A provider's keys share the hash tag ``{<provider>}`` so that on Redis Cluster they live in one slot and
one Lua script may touch them all. Every key that is not meant to live forever gets a TTL where it is set.
"""

from __future__ import annotations

import hashlib

PREFIX = "integrations"


def _tag(provider: str) -> str:
    return f"{PREFIX}:{{{provider}}}"


def breaker(provider: str) -> str:
    """Hash: the breaker's state, counters and probe."""
    return f"{_tag(provider)}:breaker"


def breaker_window(provider: str) -> str:
    """Hash: calls and failures per time slot of the breaker's sliding window."""
    return f"{_tag(provider)}:breaker:window"


def bucket(provider: str) -> str:
    """Hash: the provider's token bucket (GCRA arrival times ``v`` and ``a``, in ms), and its pause
    (``pause``: until when every worker holds off, after a 429 or a spent quota; ``shift``: the pauses'
    total length, which moves reserved slots after them)."""
    return f"{_tag(provider)}:bucket"


def account_bucket(provider: str, account: str) -> str:
    """Hash: the bucket of one account of the provider (the account value is hashed, not stored)."""
    digest = hashlib.sha256(account.encode()).hexdigest()[:16]
    return f"{_tag(provider)}:bucket:account:{digest}"


def limits(provider: str) -> str:
    """Hash: the live override of the provider's rate and burst (``integrations limits set``)."""
    return f"{_tag(provider)}:limits"


def reservation(provider: str, message_id: str) -> str:
    """String: the time slot (ms) a deferred message holds in the provider's bucket."""
    return f"{_tag(provider)}:reservation:{message_id}"


def usage_warned(provider: str) -> str:
    """String: set while a high-usage warning for the provider's current window has been logged."""
    return f"{_tag(provider)}:usage-warned"


def oauth_token(provider: str) -> str:
    """Hash: the provider's OAuth2 access token shared by every worker (``token``, ``expires_at`` in s,
    ``refresh_token`` when the provider rotates it); expires with the token."""
    return f"{_tag(provider)}:oauth:token"


def oauth_refresh_lock(provider: str) -> str:
    """String: held by the one worker refreshing the provider's token."""
    return f"{_tag(provider)}:oauth:refreshing"
