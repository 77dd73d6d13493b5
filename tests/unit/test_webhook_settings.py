"""``[providers.<p>.webhooks]``: what a providers file may say, the errors an operator can act on, and the
keys its secret references resolve to."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from integrations.errors import ConfigError
from integrations.providers import load_providers, parse_providers
from integrations.webhooks.settings import WebhookSettings, resolve_keys


def webhooks_of(table: dict[str, Any]) -> WebhookSettings | None:
    document = {
        "providers": {"acme": {"adapter": "http", "base_url": "https://api.example", "webhooks": table}}
    }
    return parse_providers(document, source="providers.toml")["acme"].webhooks


def test_the_plan_s_table_loads_with_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(
        '[providers.stripe]\nadapter = "http"\nbase_url = "https://api.stripe.com"\n\n'
        '[providers.stripe.webhooks]\nscheme = "stripe"\nsecrets = ["env:STRIPE_WEBHOOK_SECRET"]\ntolerance = 300\n\n'
        '[providers.github]\nadapter = "http"\nbase_url = "https://api.github.com"\n'
        'webhooks = { scheme = "hmac_sha256", secrets = ["file:/run/secrets/github"], '
        'header = "X-Hub-Signature-256", prefix = "sha256=", event_id = "header:X-GitHub-Delivery", '
        'event_type = "header:X-GitHub-Event" }\n',
        encoding="utf-8",
    )
    providers = load_providers(path)

    stripe = providers["stripe"].webhooks
    assert stripe == WebhookSettings(scheme="stripe", secrets=["env:STRIPE_WEBHOOK_SECRET"])
    assert (stripe.tolerance, stripe.max_body_bytes) == (300.0, 1024 * 1024)
    github = providers["github"].webhooks
    assert github is not None
    assert (github.header, github.encoding, github.prefix) == ("X-Hub-Signature-256", "hex", "sha256=")
    assert (github.event_id, github.event_type) == ("header:X-GitHub-Delivery", "header:X-GitHub-Event")
    assert webhooks_of({"scheme": "hmac_sha256", "secrets": ["env:K"], "header": "X-Signature"}) == (
        WebhookSettings(scheme="hmac_sha256", secrets=["env:K"], header="X-Signature")
    )
    assert (
        parse_providers(
            {"providers": {"acme": {"adapter": "http", "base_url": "https://api.example"}}}, source="p"
        )["acme"].webhooks
        is None
    )


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"secrets": ["env:K"]}, "webhooks.scheme", "required key is missing"),
        (
            {"scheme": "sha1", "secrets": ["env:K"]},
            "webhooks.scheme",
            "'stripe', 'standard', 'hubspot_v3', 'sendgrid' or 'hmac_sha256'",
        ),
        ({"scheme": "stripe"}, "webhooks.secrets", "required key is missing"),
        ({"scheme": "stripe", "secrets": []}, "webhooks.secrets", "one secret reference or more"),
        ({"scheme": "stripe", "secrets": "env:K"}, "webhooks.secrets", "one secret reference or more"),
        ({"scheme": "stripe", "secrets": ["whsec_live_abc"]}, "webhooks.secrets", "not contain it"),
        ({"scheme": "stripe", "secrets": ["env:K", "env:K"]}, "webhooks.secrets", "the same secret twice"),
        ({"scheme": "stripe", "secrets": ["env:K"], "secret": "env:K"}, "webhooks.secret", "unknown key"),
        ({"scheme": "stripe", "secrets": ["env:K"], "tolerance": 0}, "webhooks.tolerance", "greater than 0"),
        (
            {"scheme": "stripe", "secrets": ["env:K"], "tolerance": "300"},
            "webhooks.tolerance",
            "valid number",
        ),
        (
            {"scheme": "stripe", "secrets": ["env:K"], "max_body_bytes": True},
            "webhooks.max_body_bytes",
            "integer",
        ),
        (
            {"scheme": "stripe", "secrets": ["env:K"], "max_body_bytes": 2**40},
            "webhooks.max_body_bytes",
            "less",
        ),
        (
            {"scheme": "hmac_sha256", "secrets": ["env:K"]},
            "webhooks.header",
            "required with scheme 'hmac_sha256'",
        ),
        (
            {"scheme": "hmac_sha256", "secrets": ["env:K"], "header": "X Sig"},
            "webhooks.header",
            "not an HTTP header name",
        ),
        (
            {"scheme": "hmac_sha256", "secrets": ["env:K"], "header": "X-Sig", "tolerance": 60},
            "webhooks.tolerance",
            "scheme 'hmac_sha256' signs no timestamp",
        ),
        (
            {"scheme": "hmac_sha256", "secrets": ["env:K"], "header": "X-Sig", "encoding": "base32"},
            "webhooks.encoding",
            "'hex' or 'base64'",
        ),
        (
            {"scheme": "hmac_sha256", "secrets": ["env:K"], "header": "X-Sig", "event_id": "id"},
            "webhooks.event_id",
            "must be 'body:<field>'",
        ),
        ({"scheme": "stripe", "secrets": ["env:K"], "header": "X-Sig"}, "webhooks.header", "its own headers"),
        (
            {"scheme": "standard", "secrets": ["env:K"], "prefix": "sha256="},
            "webhooks.prefix",
            "only scheme 'hmac_sha256' takes this key, not 'standard'",
        ),
        (
            {"scheme": "hubspot_v3", "secrets": ["env:K"], "event_type": "body:type"},
            "webhooks.event_type",
            "only scheme 'hmac_sha256'",
        ),
        ({"scheme": "standard", "secrets": ["env:K"], "encoding": "hex"}, "webhooks.encoding", "only scheme"),
    ],
)
def test_a_wrong_table_is_refused_naming_the_provider_and_the_key(
    table: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        webhooks_of(table)
    assert str(refused.value).startswith(f"providers.toml: [providers.acme] key '{key}': ")
    assert message in str(refused.value)


def test_a_literal_secret_never_appears_in_the_error() -> None:
    with pytest.raises(ConfigError) as refused:
        webhooks_of({"scheme": "stripe", "secrets": ["whsec_live_8d1f0c2a"]})
    assert "8d1f0c2a" not in str(refused.value)


def test_keys_are_the_secrets_from_the_environment_and_files_in_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_current")
    previous = tmp_path / "stripe-previous"
    previous.write_text("whsec_previous\n", encoding="utf-8")
    settings = webhooks_of({"scheme": "stripe", "secrets": ["env:STRIPE_WEBHOOK_SECRET", f"file:{previous}"]})
    assert settings is not None
    # Stripe keys its HMAC with the whole secret's text, whsec_ included.
    assert resolve_keys("stripe", settings) == (b"whsec_current", b"whsec_previous")


def test_a_standard_secret_is_the_base64_after_whsec(monkeypatch: pytest.MonkeyPatch) -> None:
    key = bytes(range(24))
    unpadded = base64.b64encode(key).decode().rstrip("=")
    monkeypatch.setenv("HOOK_SECRET", f"whsec_{unpadded}")
    monkeypatch.setenv("HOOK_SECRET_BARE", base64.b64encode(b"x" * 32).decode())
    settings = webhooks_of({"scheme": "standard", "secrets": ["env:HOOK_SECRET", "env:HOOK_SECRET_BARE"]})
    assert settings is not None
    assert resolve_keys("acme", settings) == (key, b"x" * 32)


def test_every_secret_that_cannot_be_had_is_named_with_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACME_HOOK_MISSING", raising=False)
    monkeypatch.setenv("ACME_HOOK_GARBLED", "whsec_not*base64!")
    monkeypatch.setenv("ACME_HOOK_GOOD", "whsec_" + base64.b64encode(b"k" * 32).decode())
    settings = webhooks_of(
        {
            "scheme": "standard",
            "secrets": [
                "env:ACME_HOOK_GOOD",
                "env:ACME_HOOK_MISSING",
                "env:ACME_HOOK_GARBLED",
                "file:/nonexistent/k",
            ],
        }
    )
    assert settings is not None
    with pytest.raises(ConfigError) as refused:
        resolve_keys("acme", settings, source="/etc/integrations/providers.toml")
    assert str(refused.value).splitlines() == [
        "/etc/integrations/providers.toml: [providers.acme.webhooks] key 'secrets.1': environment variable "
        "ACME_HOOK_MISSING is not set where this runs; set it, or change the reference",
        "/etc/integrations/providers.toml: [providers.acme.webhooks] key 'secrets.2': the secret "
        "env:ACME_HOOK_GARBLED is not base64 after 'whsec_': copy it again from the provider",
        "/etc/integrations/providers.toml: [providers.acme.webhooks] key 'secrets.3': cannot read the secret "
        "file /nonexistent/k: No such file or directory",
    ]
    assert "not*base64" not in str(refused.value)


def test_a_sendgrid_key_is_its_public_key_in_base64_der_or_pem(monkeypatch: pytest.MonkeyPatch) -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    monkeypatch.setenv("SENDGRID_KEY_AS_SHOWN", base64.b64encode(der).decode())  # as SendGrid shows it
    monkeypatch.setenv("SENDGRID_KEY_PEM", pem)
    settings = webhooks_of(
        {"scheme": "sendgrid", "secrets": ["env:SENDGRID_KEY_AS_SHOWN", "env:SENDGRID_KEY_PEM"]}
    )
    assert settings is not None and settings.tolerance == 300.0
    assert resolve_keys("acme", settings) == (der, der)


def test_a_sendgrid_key_that_is_not_a_p256_public_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    other_curve = ec.generate_private_key(ec.SECP384R1()).public_key()
    monkeypatch.setenv(
        "SENDGRID_KEY_P384",
        base64.b64encode(other_curve.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode(),
    )
    monkeypatch.setenv("SENDGRID_KEY_HMAC", "a-shared-secret-where-a-public-key-belongs")
    settings = webhooks_of(
        {"scheme": "sendgrid", "secrets": ["env:SENDGRID_KEY_P384", "env:SENDGRID_KEY_HMAC"]}
    )
    assert settings is not None
    with pytest.raises(ConfigError) as refused:
        resolve_keys("mail", settings, source="providers.toml")
    assert str(refused.value).splitlines() == [
        "providers.toml: [providers.mail.webhooks] key 'secrets.0': the secret env:SENDGRID_KEY_P384 is not "
        "an ECDSA P-256 public key, as SendGrid signs with: copy the verification key again from SendGrid's "
        "Mail Settings, Signed Event Webhook",
        "providers.toml: [providers.mail.webhooks] key 'secrets.1': the secret env:SENDGRID_KEY_HMAC is not "
        "a public key in PEM or base64 DER: copy the verification key again from SendGrid's Mail Settings, "
        "Signed Event Webhook",
    ]
    assert "shared-secret" not in str(refused.value)
