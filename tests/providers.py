"""One way for tests to make a provider's settings: the ``[providers.<name>]`` table a providers file holds."""

from __future__ import annotations

from typing import Any

from integrations.providers import ProviderSettings, parse_providers

NOWHERE = "http://127.0.0.1:9"  # the discard port on loopback: nothing answers there


def provider_settings(
    name: str = "sim", adapter: str = "http", base_url: str = NOWHERE, **table: Any
) -> ProviderSettings:
    """The settings ``[providers.<name>]`` with these keys gives (nested tables such as ``retry`` or ``auth``
    as dicts), read by the providers file's own parser so a mistyped key fails as it would there."""
    entry = {"adapter": adapter, "base_url": base_url} | table
    return parse_providers({"providers": {name: entry}}, source="providers.toml")[name]
