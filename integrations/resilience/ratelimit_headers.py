"""Read a provider's rate-limit headers, to pause it fleet-wide before a 429 and warn near its quota.

Formats: X-RateLimit-* (GitHub, SendGrid; X-Rate-Limit-* at X/Twitter), draft-ietf-httpapi-ratelimit-headers
(-06 RateLimit-*, -07 RateLimit dictionary, -08+ RateLimit with RateLimit-Policy) read as RFC 8941 fields.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

EPOCH_THRESHOLD = 10**9
EPOCH_MS_THRESHOLD = 10**12
"""A reset above this many seconds is a Unix timestamp (September 2001), not a delay."""

_INTEGER = re.compile(r"[0-9]{1,15}", re.ASCII)
_NUMBER = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?", re.ASCII)
_SF_NUMBER = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?", re.ASCII)
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*", re.ASCII)
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*", re.ASCII)
_SF_BYTES = re.compile(r":([A-Za-z0-9+/=]*):", re.ASCII)

BareItem: TypeAlias = int | float | str | bytes | bool
Parameters: TypeAlias = dict[str, BareItem]
Item: TypeAlias = tuple[BareItem, Parameters]
_T = TypeVar("_T")


@dataclass(frozen=True)
class RateLimitState:
    limit: int | None
    remaining: int | None
    reset_after: float | None

    @property
    def exhausted(self) -> bool:
        return self.remaining == 0

    @property
    def usage(self) -> float | None:
        """Share of the quota used, from 0.0 to 1.0; ``None`` unless both limit (> 0) and remaining are known."""
        if self.limit is None or self.remaining is None or self.limit <= 0:
            return None
        return max(0.0, (self.limit - self.remaining) / self.limit)


def parse_rate_limit_headers(headers: Mapping[str, str], now: float | None = None) -> RateLimitState | None:
    """The provider's current rate-limit state, or ``None`` when the response carries none that is usable.

    Header names are matched case-insensitively. The first family with a well-formed value wins:
    structured ``RateLimit``, then ``RateLimit-Limit/-Remaining/-Reset``, then ``X-RateLimit-*``; families
    are never mixed. Malformed values are skipped. A reset above ``EPOCH_THRESHOLD`` is read as a Unix
    time and turned into seconds from ``now`` (default ``time.time()``); any other as seconds from now.
    With several service limits, the one with the least remaining (then the longest reset) is reported.
    """
    fields = _fold(headers)
    current = time.time() if now is None else now
    for family in (_structured, _separate_ietf, _separate_legacy):
        state = family(fields, current)
        if state is not None:
            return state
    return None


def _fold(headers: Mapping[str, str]) -> dict[str, str]:
    folded: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        key = name.strip().lower()
        folded[key] = f"{folded[key]}, {value}" if key in folded else value
    return folded


def _state(limit: int | None, remaining: int | None, reset_after: float | None) -> RateLimitState | None:
    if limit is None and remaining is None and reset_after is None:
        return None
    return RateLimitState(limit=limit, remaining=remaining, reset_after=reset_after)


def _seconds_until(reset: float | None, now: float) -> float | None:
    if reset is None:
        return None
    if reset > EPOCH_MS_THRESHOLD:  # a Unix time in milliseconds
        return max(0.0, reset / 1000 - now)
    if reset > EPOCH_THRESHOLD:
        return max(0.0, reset - now)
    return float(reset)


def _first_member(value: str | None) -> str | None:
    """``"10, 10;w=1"`` -> ``"10"``: the leading item of a list, without its parameters."""
    if value is None:
        return None
    return value.split(",", 1)[0].split(";", 1)[0].strip()


def _count(value: str | None) -> int | None:
    text = _first_member(value)
    if text is None or not _INTEGER.fullmatch(text):
        return None
    return int(text)


def _seconds(value: str | None) -> float | None:
    text = _first_member(value)
    if text is None or not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def _separate(fields: Mapping[str, str], prefixes: tuple[str, ...], now: float) -> RateLimitState | None:
    def field(suffix: str) -> str | None:
        return next((fields[p + suffix] for p in prefixes if p + suffix in fields), None)

    return _state(
        _count(field("limit")), _count(field("remaining")), _seconds_until(_seconds(field("reset")), now)
    )


def _separate_ietf(fields: Mapping[str, str], now: float) -> RateLimitState | None:
    return _separate(fields, ("ratelimit-",), now)


def _separate_legacy(fields: Mapping[str, str], now: float) -> RateLimitState | None:
    return _separate(fields, ("x-ratelimit-", "x-rate-limit-"), now)


def _structured(fields: Mapping[str, str], now: float) -> RateLimitState | None:
    value = fields.get("ratelimit")
    if value is None:
        return None
    policy = fields.get("ratelimit-policy")
    service_limits = _parse_sf(value, _SFParser.parse_list)
    if service_limits is not None:
        return _from_service_limits(service_limits, policy, now)
    dictionary = _parse_sf(value, _SFParser.parse_dictionary)
    if dictionary is not None:
        return _from_dictionary(dictionary, policy, now)
    return None


def _from_service_limits(items: list[Item], policy: str | None, now: float) -> RateLimitState | None:
    """draft -08 onwards: ``RateLimit: "name";r=<remaining>;t=<seconds>``, quota ``q`` in ``RateLimit-Policy``."""
    candidates: list[tuple[BareItem, int, float | None]] = []
    for name, params in items:
        remaining = _non_negative_int(params.get("r"))
        if remaining is not None:
            candidates.append((name, remaining, _non_negative_number(params.get("t"))))
    if not candidates:
        return None
    name, remaining, reset = min(candidates, key=lambda c: (c[1], -(c[2] if c[2] is not None else -1.0)))
    quotas: dict[BareItem, int] = {}
    for policy_name, params in _parse_sf(policy, _SFParser.parse_list) or []:
        quota = _non_negative_int(params.get("q"))
        if quota is not None and isinstance(policy_name, str):
            quotas.setdefault(policy_name, quota)
    limit = quotas.get(name) if isinstance(name, str) else None
    return RateLimitState(limit=limit, remaining=remaining, reset_after=_seconds_until(reset, now))


def _from_dictionary(members: dict[str, Item], policy: str | None, now: float) -> RateLimitState | None:
    """draft -07: ``RateLimit: limit=100, remaining=50, reset=5``, ``RateLimit-Policy: 100;w=60``."""

    def member(key: str) -> BareItem | None:
        return members[key][0] if key in members else None

    limit = _non_negative_int(member("limit"))
    if limit is None:
        policies = _parse_sf(policy, _SFParser.parse_list) or []
        limit = _non_negative_int(policies[0][0]) if policies else None
    reset = _non_negative_number(member("reset"))
    return _state(limit, _non_negative_int(member("remaining")), _seconds_until(reset, now))


def _non_negative_int(value: BareItem | None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _non_negative_number(value: BareItem | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


class _SFError(ValueError):
    pass


def _parse_sf(value: str | None, top: Callable[[_SFParser], _T]) -> _T | None:
    if value is None:
        return None
    try:
        return top(_SFParser(value))
    except _SFError:
        return None


class _SFParser:
    """Just enough of RFC 8941 (Structured Field Values) for Lists and Dictionaries of Items."""

    def __init__(self, text: str) -> None:
        self.text = text.strip(" \t")
        self.pos = 0

    def parse_list(self) -> list[Item]:
        members: list[Item] = []
        while not self._at_end():
            members.append(self._item())
            self._next_member()
        return members

    def parse_dictionary(self) -> dict[str, Item]:
        members: dict[str, Item] = {}
        while not self._at_end():
            key = self._key()
            if self._peek() == "=":
                self.pos += 1
                members[key] = self._item()
            else:
                members[key] = (True, self._parameters())
            self._next_member()
        return members

    def _next_member(self) -> None:
        self._skip(" \t")
        if self._at_end():
            return
        if self._peek() != ",":
            raise _SFError(self.pos)
        self.pos += 1
        self._skip(" \t")
        if self._at_end():
            raise _SFError("trailing comma")

    def _item(self) -> Item:
        return self._bare_item(), self._parameters()

    def _parameters(self) -> Parameters:
        params: Parameters = {}
        while self._peek() == ";":
            self.pos += 1
            self._skip(" ")
            key = self._key()
            if self._peek() == "=":
                self.pos += 1
                params[key] = self._bare_item()
            else:
                params[key] = True
        return params

    def _key(self) -> str:
        return self._match(_SF_KEY)

    def _bare_item(self) -> BareItem:
        char = self._peek()
        if char == '"':
            return self._string()
        if char == "?":
            flag = self.text[self.pos + 1 : self.pos + 2]
            if flag not in ("0", "1"):
                raise _SFError(self.pos)
            self.pos += 2
            return flag == "1"
        if char == ":":
            return self._match(_SF_BYTES).strip(":").encode("ascii")
        if char and char in "-0123456789":
            number = self._match(_SF_NUMBER)
            return float(number) if "." in number else int(number)
        return self._match(_SF_TOKEN)

    def _string(self) -> str:
        self.pos += 1
        chars: list[str] = []
        while not self._at_end():
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\":
                escaped = self.text[self.pos : self.pos + 1]
                if escaped not in ('"', "\\"):
                    raise _SFError(self.pos)
                chars.append(escaped)
                self.pos += 1
            elif char == '"':
                return "".join(chars)
            elif not " " <= char <= "~":
                raise _SFError(self.pos)
            else:
                chars.append(char)
        raise _SFError("unterminated string")

    def _match(self, pattern: re.Pattern[str]) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise _SFError(self.pos)
        self.pos = found.end()
        return found.group()

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _skip(self, chars: str) -> None:
        while self._peek() and self._peek() in chars:
            self.pos += 1

    def _at_end(self) -> bool:
        return self.pos >= len(self.text)
