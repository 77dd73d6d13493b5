"""Adapters by name: the built-in ones, and any other package's through the ``integrations.adapters``
entry-point group."""

from __future__ import annotations

from functools import cache
from importlib import import_module
from importlib.metadata import entry_points

from integrations.adapters.base import Adapter
from integrations.errors import ConfigError
from integrations.providers import ProviderSettings

ENTRY_POINT_GROUP = "integrations.adapters"
BUILTIN = {
    "http": "integrations.adapters.http:HttpAdapter",
    "stripe": "integrations.adapters.stripe:StripeAdapter",
    "sendgrid": "integrations.adapters.sendgrid:SendGridAdapter",
    "hubspot": "integrations.adapters.hubspot:HubSpotAdapter",
}


@cache
def known_adapters() -> dict[str, str]:
    """Adapter name -> ``module:Class``; installed plug-ins may add names but not replace built-ins."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILTIN}


def adapter_class(name: str) -> type[Adapter]:
    try:
        target = known_adapters()[name]
    except KeyError:
        raise KeyError(name) from None
    module_name, _, attribute = target.partition(":")
    cls = getattr(import_module(module_name), attribute)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise TypeError(f"{target} (adapter {name!r}) is not a subclass of integrations.adapters.Adapter")
    return cls


def resolve(providers: dict[str, ProviderSettings], source: str) -> dict[str, type[Adapter]]:
    """The adapter class of every provider, or a ``ConfigError`` naming the file and provider."""
    classes: dict[str, type[Adapter]] = {}
    for name, provider in providers.items():
        try:
            classes[name] = adapter_class(provider.adapter)
        except KeyError:
            known = ", ".join(sorted(known_adapters()))
            raise ConfigError(
                f"{source}: [providers.{name}] key 'adapter': unknown adapter {provider.adapter!r} "
                f"(known: {known}; a plug-in registers more through the {ENTRY_POINT_GROUP!r} entry points)"
            ) from None
        except (ImportError, AttributeError, TypeError) as exc:
            raise ConfigError(
                f"{source}: [providers.{name}] adapter {provider.adapter!r} cannot be loaded: {exc}"
            ) from exc
    return classes
