"""The providers file: which adapter serves each provider, and that provider's limits.

A TOML file (``config/providers.toml`` by default) validated with pydantic. Every error names the file,
the provider and the key, and says what is expected, so an operator can fix it without reading code.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from integrations.auth import AuthSettings
from integrations.errors import ConfigError
from integrations.webhooks.settings import WebhookSettings

# The longest delay the code hands to the broker as a countdown. A message held by a worker for an ETA
# must come back before the Redis transport's visibility_timeout, or Redis redelivers it; config/celery_app.py
# sets that timeout above this. Longer waits (a far Retry-After) are served in hops of at most this length.
MAX_COUNTDOWN = 900.0

# The largest payload a message may carry unless the providers file says otherwise: 1 MiB.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# A payload is kept in a ledger row; PostgreSQL's jsonb holds at most this many bytes.
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024 - 1

PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class Rate(BaseModel):
    """A rate such as ``20/s``, ``600/m`` or ``1000/h``."""

    model_config = ConfigDict(frozen=True)

    amount: float
    period: float  # seconds
    text: str

    @property
    def per_second(self) -> float:
        return self.amount / self.period

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _RATE.fullmatch(text)
        # N is a positive number a float can hold: a thousand nines would be infinity.
        if match is None or not 0 < float(match.group(1)) < math.inf:
            raise ValueError(f"rate {text!r} is not of the form N/s, N/m or N/h with N > 0 (e.g. '20/s')")
        return cls(amount=float(match.group(1)), period=_PERIODS[match.group(2)], text=text.strip())


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(_Section):
    """``[providers.<p>.retry]``: exponential backoff with full jitter."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 8
    backoff_base: Annotated[float, Field(gt=0)] = 1.0
    backoff_max: Annotated[float, Field(gt=0, le=MAX_COUNTDOWN)] = 300.0

    @model_validator(mode="after")
    def _base_below_max(self) -> RetrySettings:
        if self.backoff_base > self.backoff_max:
            raise ValueError("backoff_base must not exceed backoff_max")
        return self


class BreakerSettings(_Section):
    """``[providers.<p>.breaker]``: the circuit breaker shared by every worker.

    It opens after ``fail_max`` consecutive failures, or when at least ``min_calls`` calls in the last
    ``window`` seconds failed at ``failure_rate`` or more; a call slower than ``slow_call`` seconds counts
    as a failure. After ``reset_timeout`` seconds one probe call is let through.
    """

    fail_max: Annotated[int, Field(ge=1)] = 5
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    window: Annotated[float, Field(ge=1, le=3600)] = 60.0
    min_calls: Annotated[int, Field(ge=1)] = 20
    reset_timeout: Annotated[float, Field(gt=0, le=MAX_COUNTDOWN)] = 30.0
    slow_call: Annotated[float, Field(gt=0)] | None = None


def _parse_rate(value: Any) -> Any:
    """A rate is written as text; a table of amount and period would pass by the checks of ``Rate.parse``."""
    if isinstance(value, Rate | None):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string of the form N/s, N/m or N/h (e.g. '20/s')")
    return Rate.parse(value)


class PerKeySettings(_Section):
    """``[providers.<p>.per_key]``: a second bucket per account, for providers that limit per API key."""

    field: str  # a payload field, dotted for nested ones: "json.account"
    rate_limit: Rate
    burst: Annotated[int, Field(ge=1)] | None = None

    _rate = field_validator("rate_limit", mode="before")(_parse_rate)

    @property
    def capacity(self) -> int:
        return self.burst or default_burst(self.rate_limit)


def default_burst(rate: Rate) -> int:
    """One second's worth of calls, at least one."""
    return max(1, round(rate.per_second))


class ProviderSettings(_Section):
    """One ``[providers.<name>]`` table."""

    name: str
    adapter: str
    base_url: str
    # What the integration is for and whom to call about it, as the status catalog shows them.
    description: str | None = None
    owner: str | None = None
    # The price of one provider call in the provider's currency unit; None: unknown.
    cost_per_call: float | None = None
    timeout: Annotated[float, Field(gt=0, le=300)] = 10.0
    rate_limit: Rate | None = None
    burst: Annotated[int, Field(ge=1)] | None = None
    # The throttle runs this share below rate_limit: room for the jitter between taking a token and the
    # request reaching the provider, which a provider counting in a strict sliding window would punish.
    headroom: Annotated[float, Field(ge=0, lt=0.5)] = 0.03
    per_key: PerKeySettings | None = None
    # What the breaker and the throttle do when Redis cannot be reached: "defer" waits (the default: a
    # provider is never called blind), "call" goes ahead without them.
    when_redis_down: Literal["defer", "call"] = "defer"
    # The largest payload a message may carry, counted as compact JSON in UTF-8 (the form the ledger keeps
    # it in); a larger one is refused as invalid_request, so a runaway message never fills the broker's
    # retries, the provider or the ledger.
    max_payload_bytes: Annotated[int, Field(ge=1, le=MAX_PAYLOAD_BYTES)] = DEFAULT_MAX_PAYLOAD_BYTES
    auth: AuthSettings | None = None
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    webhooks: WebhookSettings | None = None

    @property
    def capacity(self) -> int | None:
        """The bucket's size: ``burst``, or one second's worth of ``rate_limit``."""
        if self.rate_limit is None:
            return None
        return self.burst or default_burst(self.rate_limit)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"base_url {value!r} must start with http:// or https:// and name a host")
        return value.rstrip("/")

    _rate = field_validator("rate_limit", mode="before")(_parse_rate)

    @field_validator("description", "owner", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if value is None:  # as the default is; a TOML file cannot write it
            return None
        if not isinstance(value, str):
            raise ValueError("must be text, in quotes")
        if not value.strip():
            raise ValueError("must not be empty; leave the key out instead")
        return value.strip()

    @field_validator("cost_per_call", mode="before")
    @classmethod
    def _cost(cls, value: Any) -> Any:
        if value is None:
            return None
        # A number as TOML writes it: pydantic would take "0.01" and true as numbers too.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number such as 0.002 (the price of one call), not text or a boolean")
        try:
            cost = float(value) + 0.0  # -0.0 is 0
        except OverflowError:  # an integer too long for a float
            cost = math.inf
        if not 0 <= cost < math.inf:
            raise ValueError(
                "must be 0 or more, and finite: the price of one call in the provider's currency"
            )
        return cost

    @property
    def queue(self) -> str:
        return queue_name(self.name)

    def task_name(self, operation: str) -> str:
        return task_name(self.name, operation)

    @property
    def lease_seconds(self) -> float:
        """How long one attempt may hold its operation before another worker may take it over: longer
        than the call can take (the timeout applies per connect and per read), short enough that an
        operation whose worker died is picked up again soon."""
        return self.attempt_deadline + 5.0

    @property
    def attempt_deadline(self) -> float:
        """How long one call may take in all: a slow trickle of bytes defeats the per-read timeout, so the
        worker cuts the call here (and counts it as timed out), well inside the lease."""
        return 3 * self.timeout


def queue_name(provider: str) -> str:
    """The broker queue of a provider's operations: ``integrations.<provider>``."""
    return f"integrations.{provider}"


def task_name(provider: str, operation: str) -> str:
    """The task an application sends: ``integrations.<provider>.<operation>``."""
    return f"integrations.{provider}.{operation}"


def load_providers(path: Path | str) -> dict[str, ProviderSettings]:
    """Read and validate a providers file; raise ``ConfigError`` naming the file, provider and key."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: providers file not found; set INTEGRATIONS_PROVIDERS_FILE or create it "
            "(see config/providers.toml for an example)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read providers file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib reads nested arrays and inline tables by recursion
        raise ConfigError(
            f"{path}: not valid TOML: arrays or inline tables nested too deeply; write them flatter"
        ) from None
    return parse_providers(document, source=str(path))


def parse_providers(document: dict[str, Any], *, source: str) -> dict[str, ProviderSettings]:
    unknown = sorted(set(document) - {"providers"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {unknown}; only [providers.<name>] tables belong here"
        )
    tables = document.get("providers", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{source}: 'providers' must be a table of [providers.<name>] tables")
    providers: dict[str, ProviderSettings] = {}
    for name, table in tables.items():
        where = f"{source}: {_header(name)}"
        if not PROVIDER_NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: provider names are lower-case letters, digits, '-' and '_', starting with a letter "
                "(they become queue and task names)"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        if "name" in table:
            raise ConfigError(f"{where}: 'name' is taken from the table header; remove the key")
        try:
            providers[name] = ProviderSettings.model_validate({**table, "name": name})
        except ValidationError as exc:
            raise ConfigError(_describe(where, exc)) from None
    return providers


def _header(name: str) -> str:
    """The table's header, a name that is empty or holds a line break or another unprintable character
    quoted and escaped, so the message stays on one line and shows what is there."""
    return f"[providers.{name if name.isprintable() and name else json.dumps(name)}]"


# Keys whose table is one of several kinds, told apart by its ``type``: pydantic names the kind in an
# error's location (``auth.bearer.secret``), where the file has no such key.
_KINDS = frozenset({"auth"})


def _describe(where: str, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        location = error["loc"]
        if len(location) > 1 and location[0] in _KINDS:
            location = (location[0], *location[2:])
        message = error["msg"].removeprefix("Value error, ")
        ctx = error.get("ctx") or {}
        if error["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against config/providers.toml)"
        elif error["type"] == "missing":
            message = "required key is missing"
        elif error["type"] in ("model_type", "model_attributes_type"):
            message = "must be a table (a section of its own, or an inline table { ... })"
        elif error["type"] == "union_tag_not_found":
            location = (*location, str(ctx.get("discriminator", "type")).strip("'"))
            message = "required key is missing"
        elif error["type"] == "union_tag_invalid":
            location = (*location, str(ctx.get("discriminator", "type")).strip("'"))
            message = f"unknown value {ctx.get('tag')!r} (known: {ctx.get('expected_tags')})"
        # An empty key ("" = 1) is a key too; only an error of the whole table has no location.
        key = ".".join(str(part) for part in location) if location else "(table)"
        problems.append(f"{where} key {key!r}: {message}")
    return "\n".join(problems)
