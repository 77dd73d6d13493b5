"""Credentials from the providers file, resolved in the worker; secrets kept out of the logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import requests

from integrations.adapters.http import HttpAdapter
from integrations.auth import check_secrets, resolve_secret
from integrations.auth import static_credentials as credentials
from integrations.errors import ConfigError
from integrations.providers import ProviderSettings, parse_providers
from integrations.redaction import MASK, RedactingFilter, redact, register_secret
from integrations.testing.provider import ProviderSimulator


def provider_with(auth: dict[str, Any], base_url: str = "https://api.example") -> ProviderSettings:
    table = {"providers": {"acme": {"adapter": "http", "base_url": base_url, "auth": auth}}}
    return parse_providers(table, source="providers.toml")["acme"]


def test_bearer_and_header_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_KEY", "sk_test_123456")
    bearer = provider_with({"type": "bearer", "secret": "env:ACME_KEY"})
    assert credentials("acme", bearer.auth).headers() == {"Authorization": "Bearer sk_test_123456"}
    header = provider_with({"type": "header", "header": "X-Api-Key", "secret": "env:ACME_KEY"})
    assert credentials("acme", header.auth).headers() == {"X-Api-Key": "sk_test_123456"}
    assert "sk_test" not in repr(credentials("acme", header.auth))


def test_a_secret_from_a_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("file-secret-9876\n")
    acme = provider_with({"type": "bearer", "secret": f"file:{secret_file}"})
    assert credentials("acme", acme.auth).headers()["Authorization"] == "Bearer file-secret-9876"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("env:ACME_MISSING_KEY", "environment variable ACME_MISSING_KEY is not set where this runs"),
        ("file:/nonexistent/acme.key", "cannot read the secret file /nonexistent/acme.key"),
    ],
)
def test_a_secret_that_cannot_be_had_is_named(reference: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="auth] key 'secret'") as caught:
        resolve_secret(reference, "[providers.acme.auth] key 'secret'")
    assert expected in str(caught.value)


def test_a_worker_s_check_names_every_secret_it_cannot_have_with_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CRM_CLIENT_SECRET", raising=False)
    crm = provider_with(
        {
            "type": "oauth2_refresh_token",
            "token_url": "https://crm.example/token",
            "client_id": "c",
            "client_secret": "env:CRM_CLIENT_SECRET",
            "refresh_token": "file:/nonexistent/crm.token",
        }
    )
    with pytest.raises(ConfigError) as caught:
        check_secrets("crm", crm.auth, source="/etc/integrations/providers.toml")
    assert str(caught.value).splitlines() == [
        "/etc/integrations/providers.toml: [providers.crm.auth] key 'client_secret': environment variable "
        "CRM_CLIENT_SECRET is not set where this runs; set it, or change the reference",
        "/etc/integrations/providers.toml: [providers.crm.auth] key 'refresh_token': cannot read the secret "
        "file /nonexistent/crm.token: No such file or directory",
    ]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"type": "bearer", "secret": "sk_live_abc"}, "key 'auth.secret': must reference the secret, not"),
        ({"type": "header", "secret": "env:KEY"}, "header"),
        ({"type": "header", "header": "Bad Header", "secret": "env:KEY"}, "not an HTTP header name"),
        ({"type": "basic", "secret": "env:KEY"}, "type"),
    ],
)
def test_a_bad_auth_table_is_named(auth: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=r"\[providers\.acme\]") as caught:
        provider_with(auth)
    assert expected in str(caught.value)


def test_the_http_adapter_sends_the_provider_s_credentials(
    simulator: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_KEY", "sk_test_sent_777")
    acme = provider_with({"type": "bearer", "secret": "env:ACME_KEY"}, base_url=simulator.url)
    adapter = HttpAdapter(acme, requests.Session(), credentials("acme", acme.auth))
    payload = adapter.parse_payload("request", {"method": "GET", "path": "/v1/me"})
    adapter.call("request", payload, idempotency_key="k", request_id="r")
    [call] = simulator.calls()
    assert call.headers["authorization"] == "Bearer sk_test_sent_777"


def test_logs_never_show_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("sk_live_canary_42")
    logger = logging.getLogger("test.redaction")
    handler = logging.StreamHandler()
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("calling with %s", "sk_live_canary_42")
        logger.warning("headers: {'Authorization': 'Bearer abc.def.ghi'}")
        logger.warning("url https://x.example/?api_key=plain123&limit=2")
        try:
            raise RuntimeError("token=hunter2hunter2")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    for leak in ("sk_live_canary_42", "abc.def.ghi", "plain123", "hunter2hunter2"):
        assert leak not in text
    assert MASK in text and "limit=2" in text


def test_redact_leaves_ordinary_text_alone() -> None:
    assert (
        redact("succeeded acme.request key=order-1 attempts=2")
        == "succeeded acme.request key=order-1 attempts=2"
    )
