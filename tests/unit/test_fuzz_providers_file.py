"""Providers files of every shape: each loads into settings whose derived values can be computed, or is
refused with a ``ConfigError`` that names the file, and the provider and the key where there is one."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrations.errors import ConfigError
from integrations.providers import ProviderSettings, load_providers, parse_providers

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no example database in the work tree
    suppress_health_check=[HealthCheck.too_slow],
)

# -- TOML values and how to write them -------------------------------------------------------------

# TOML strings cannot hold a lone surrogate; raw files with any bytes are fuzzed apart.
texts = st.text(max_size=20) | st.sampled_from(["", "a\nb", "20/s", "env:KEY", "x" * 300, "\x7f", " "])
scalars = (
    texts
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.datetimes()
    | st.dates()
    | st.times()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but for DEL, which TOML wants escaped too."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """``value`` as a TOML value; tables as inline tables, so any shape fits on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(document: dict[str, Any]) -> str:
    return "".join(f"{toml_string(key)} = {toml_value(value)}\n" for key, value in document.items())


# -- providers files, near the valid ones and far from them ------------------------------------------

RATES = ["20/s", "600/m", "1/h", " 2.5 / s ", "0.001/h"]
BAD_RATES = ["0/s", "9" * 400 + "/s", "1e3/s", "fast", "", {"amount": 1, "period": 0, "text": "1/s"}]
# Per key: values the file may hold, then values it may not.
KEYS: dict[str, tuple[list[Any], list[Any]]] = {
    "adapter": (["http", "stripe"], ["", 1]),
    "base_url": (["https://api.example", "http://127.0.0.1:9/v1/"], ["ftp://x", "https://", "api.example"]),
    "timeout": ([0.5, 10, 300], [301, 0, -1, math.inf, math.nan]),
    "rate_limit": (RATES, BAD_RATES),
    "burst": ([1, 20, 2**63 - 1], [0, -1, 1.5]),
    "headroom": ([0, 0.03, 0.49], [0.5, -0.1, math.nan]),
    "when_redis_down": (["defer", "call"], ["crash", "DEFER"]),
    "max_payload_bytes": ([1, 1024, 1_048_576], [0, -5, 2**63 - 1, 1.5, "1MB"]),
    "description": (["Payments: charges and refunds", "x" * 300, "a\nb"], ["", " ", 1, True]),
    "owner": (["payments-team"], ["", 1]),
    "cost_per_call": ([0, 0.0, 0.002, 12, 2**63 - 1], [-0.01, math.inf, math.nan, "0.01", True]),
    "retry": (
        [{}, {"max_attempts": 1}, {"max_attempts": 1000, "backoff_base": 0.1, "backoff_max": 900.0}],
        [{"max_attempts": 0}, {"backoff_base": 500.0}, {"backoff_max": 901}, {"name": "x"}, {"": 1}],
    ),
    "breaker": (
        [{}, {"fail_max": 1, "failure_rate": 1, "window": 3600, "min_calls": 1, "slow_call": 0.1}],
        [{"fail_max": 0}, {"failure_rate": 1.5}, {"window": 3601}, {"reset_timeout": 901}],
    ),
    "per_key": (
        [{"field": "json.account", "rate_limit": rate} for rate in RATES],
        [{"field": "a"}, {"rate_limit": "5/s"}, *({"field": "a", "rate_limit": r} for r in BAD_RATES)],
    ),
    "auth": (
        [
            {"type": "bearer", "secret": "env:KEY"},
            {"type": "header", "header": "X-Api-Key", "secret": "file:/run/secret"},
            {
                "type": "oauth2_client_credentials",
                "token_url": "https://a.example/t",
                "client_id": "c",
                "client_secret": "env:CLIENT_SECRET",
                "scopes": ["a"],
            },
            {
                "type": "oauth2_refresh_token",
                "token_url": "https://a.example/t",
                "client_id": "c",
                "refresh_token": "env:REFRESH",
            },
        ],
        [
            {"type": "bearer", "secret": "sk_live_x"},
            {"type": "header", "header": "Bad Header", "secret": "env:KEY"},
            {"type": "basic", "secret": "env:KEY"},
            {"secret": "env:KEY"},
            {
                "type": "oauth2_refresh_token",
                "token_url": "a.example",
                "client_id": "c",
                "refresh_token": "x",
            },
        ],
    ),
}


@st.composite
def provider_tables(draw: st.DrawFn) -> Any:
    """A ``[providers.<name>]`` table: valid keys, then a few of them (or strays) made bad or arbitrary."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)  # not a table, or a table of anything
    table: dict[str, Any] = {}
    for key, (good, _) in KEYS.items():
        if key in {"adapter", "base_url"} or draw(st.booleans()):
            table[key] = draw(st.sampled_from(good))
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 3]))):
        stray = draw(st.integers(0, 4)) == 0
        key = draw(texts if stray else st.sampled_from(sorted(KEYS)))
        bad: list[Any] = KEYS[key][1] if key in KEYS else []
        arbitrary = not bad or draw(st.integers(0, 3)) == 0
        table[key] = draw(values) if arbitrary else draw(st.sampled_from(bad))
    if draw(st.integers(0, 7)) == 0:
        del table[draw(st.sampled_from(sorted(table)))]
    return table


@st.composite
def provider_names(draw: st.DrawFn) -> str:
    """Mostly names a provider may have; else names it may not (upper case, a trailing newline, ...)."""
    if draw(st.integers(0, 4)):
        return draw(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True))
    return draw(st.sampled_from(["acme\n", "Acme", "9lives", "", "a" * 64, "a.b"]) | texts)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A providers document: mostly one or two provider tables, sometimes any top-level keys."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.dictionaries(texts, values, max_size=3))
    return {"providers": draw(st.dictionaries(provider_names(), provider_tables(), min_size=1, max_size=2))}


# -- the property ----------------------------------------------------------------------------------


def header(name: str) -> str:
    """How a message names the provider: its table's header, the name quoted as TOML would if need be."""
    return f"[providers.{name if name.isprintable() and name else json.dumps(name)}]"


def check(document: Any, source: str, load: Callable[[], dict[str, ProviderSettings]]) -> None:
    """``load`` gives usable settings, or a ``ConfigError`` naming ``source``, the provider and the key."""
    try:
        providers = load()
    except ConfigError as exc:
        message = str(exc)
        assert message
        for line in message.split("\n"):
            assert line.startswith(source), line
            tables = document.get("providers") if isinstance(document, dict) else None
            if isinstance(tables, dict) and tables and set(document) == {"providers"}:
                table = next((t for n, t in tables.items() if header(n) in line), None)
                assert table is not None, f"no provider named: {line}"
                if " key " in line:
                    named = [*table, *ProviderSettings.model_fields] if isinstance(table, dict) else []
                    assert any(repr(key)[1:-1] in line for key in named), line
        return
    for name, provider in providers.items():
        assert provider.name == name
        assert provider.queue == f"integrations.{name}" and provider.queue.isprintable()
        assert provider.task_name("request") == f"integrations.{name}.request"
        assert math.isfinite(provider.lease_seconds)
        assert provider.max_payload_bytes >= 1
        if provider.rate_limit is not None:
            assert math.isfinite(provider.rate_limit.per_second) and provider.rate_limit.per_second > 0
            assert provider.capacity is not None and provider.capacity >= 1
        if provider.cost_per_call is not None:
            assert math.isfinite(provider.cost_per_call) and provider.cost_per_call >= 0
        if provider.per_key is not None:
            assert math.isfinite(provider.per_key.rate_limit.per_second)
            assert provider.per_key.capacity >= 1


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """One folder for every example (a function-scoped ``tmp_path`` would be shared by them anyway)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@settings(FUZZ, max_examples=400)  # the cheapest property: more examples reach the rarer bad values
@given(document=documents())
def test_any_document_loads_or_is_refused_by_file_provider_and_key(document: dict[str, Any]) -> None:
    check(document, "fuzz.toml", lambda: parse_providers(document, source="fuzz.toml"))


@FUZZ
@given(document=documents())
def test_any_toml_file_loads_or_is_refused_by_file_provider_and_key(
    folder: Path, document: dict[str, Any]
) -> None:
    path = folder / "providers.toml"
    path.write_text(toml_document(document), encoding="utf-8")
    check(document, str(path), lambda: load_providers(path))


raw_texts = (
    st.text()
    | st.binary().map(lambda raw: raw.decode("latin-1"))
    | st.integers(1, 3000).map(lambda depth: "x = " + "[" * depth + "]" * depth + "\n")
    | st.integers(1, 3000).map(lambda depth: "x = " + "{a = " * depth + "}" * depth + "\n")
    | st.sampled_from(["[providers.acme]\nadapter = 'http'\n", "\ufeff[providers]\n", "[providers.a.b.c]\n"])
)


@FUZZ
@given(text=raw_texts, raw=st.none() | st.binary())
def test_any_file_content_loads_or_is_refused_naming_the_file(
    folder: Path, text: str, raw: bytes | None
) -> None:
    path = folder / "providers.toml"
    if raw is None:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    else:
        path.write_bytes(raw)
    try:
        load_providers(path)
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert all(line.startswith(str(path)) for line in message.split("\n")), message
