"""The providers file: loading, defaults, and error messages an operator can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import DEFAULT_PROVIDERS_FILE
from integrations.adapters import registry
from integrations.adapters.http import HttpAdapter
from integrations.errors import ConfigError
from integrations.providers import (
    BreakerSettings,
    Rate,
    RetrySettings,
    load_providers,
    parse_providers,
    queue_name,
    task_name,
)
from tests.providers import provider_settings

MINIMAL = """
[providers.acme]
adapter = "http"
base_url = "https://api.acme.example"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_providers_file_loads() -> None:
    providers = load_providers(DEFAULT_PROVIDERS_FILE)

    assert set(providers) == {"acme"}
    acme = providers["acme"]
    assert acme.name == "acme"
    assert acme.adapter == "http"
    assert acme.base_url == "https://api.acme.example"
    assert acme.timeout == 10.0
    assert acme.rate_limit is not None
    assert acme.rate_limit.per_second == 20
    assert acme.rate_limit.text == "20/s"
    assert acme.burst == 20
    assert acme.retry == RetrySettings(max_attempts=8, backoff_base=1.0, backoff_max=300.0)
    assert acme.breaker == BreakerSettings(fail_max=5, reset_timeout=30.0)
    assert registry.resolve(providers, str(DEFAULT_PROVIDERS_FILE)) == {"acme": HttpAdapter}


@pytest.mark.parametrize(
    ("text", "amount", "period", "per_second"),
    [
        ("20/s", 20, 1, 20),
        ("600/m", 600, 60, 10),
        ("1800/h", 1800, 3600, 0.5),
        (" 2.5 / s ", 2.5, 1, 2.5),
    ],
)
def test_rate_parse(text: str, amount: float, period: float, per_second: float) -> None:
    rate = Rate.parse(text)

    assert rate.amount == amount
    assert rate.period == period
    assert rate.per_second == pytest.approx(per_second)
    assert rate.text == text.strip()


@pytest.mark.parametrize("text", ["0/s", "20", "20/d", "-1/s", "/s", "twenty/s", ""])
def test_rate_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"N/s, N/m or N/h"):
        Rate.parse(text)


def test_defaults_when_sections_omitted(tmp_path: Path) -> None:
    acme = load_providers(write(tmp_path, MINIMAL))["acme"]

    assert acme.retry == RetrySettings()
    assert (acme.retry.max_attempts, acme.retry.backoff_base, acme.retry.backoff_max) == (8, 1.0, 300.0)
    assert (acme.breaker.fail_max, acme.breaker.reset_timeout) == (5, 30.0)
    assert acme.timeout == 10.0
    assert acme.rate_limit is None
    assert acme.burst is None


def test_base_url_trailing_slash_is_dropped(tmp_path: Path) -> None:
    text = MINIMAL.replace("https://api.acme.example", "https://api.acme.example/v2/")
    assert load_providers(write(tmp_path, text))["acme"].base_url == "https://api.acme.example/v2"


def test_empty_file_has_no_providers(tmp_path: Path) -> None:
    assert load_providers(write(tmp_path, "")) == {}


@pytest.mark.parametrize(
    ("extra", "key", "detail"),
    [
        ('rate_limit = "20/d"', "rate_limit", "'20/d' is not of the form N/s"),
        ('rate_limt = "20/s"', "rate_limt", "unknown key"),
        ("timeout = 0", "timeout", "greater than 0"),
        ("burst = 0", "burst", "greater than or equal to 1"),
        (
            "[providers.acme.retry]\nbackoff_base = 10.0\nbackoff_max = 5.0",
            "retry",
            "backoff_base must not exceed backoff_max",
        ),
        ("[providers.acme.retry]\nmax_attempts = 0", "retry.max_attempts", "greater than or equal to 1"),
        ("[providers.acme.retry]\nbackoff_max = 901", "retry.backoff_max", "less than or equal to 900"),
        ("[providers.acme.retry]\nmax_atempts = 3", "retry.max_atempts", "unknown key"),
        ("[providers.acme.breaker]\nfail_max = 0", "breaker.fail_max", "greater than or equal to 1"),
        ("max_payload_bytes = 0", "max_payload_bytes", "greater than or equal to 1"),
        ('max_payload_bytes = "1MB"', "max_payload_bytes", "valid integer"),
        ("cost_per_call = -0.01", "cost_per_call", "must be 0 or more, and finite"),
        ("cost_per_call = inf", "cost_per_call", "must be 0 or more, and finite"),
        ("cost_per_call = nan", "cost_per_call", "must be 0 or more, and finite"),
        ('cost_per_call = "0.01"', "cost_per_call", "must be a number"),
        ("cost_per_call = true", "cost_per_call", "must be a number"),
        ("description = 42", "description", "must be text"),
        ('owner = ["payments"]', "owner", "must be text"),
        ('owner = " "', "owner", "must not be empty"),
        # The key in the file, not the union member pydantic validated it with.
        ('[providers.acme.auth]\ntype = "bearer"\nsecret = "sk_live_x"', "auth.secret", "not contain it"),
        ('[providers.acme.auth]\ntype = "basic"\nsecret = "env:KEY"', "auth.type", "unknown value 'basic'"),
        ('[providers.acme.auth]\nsecret = "env:KEY"', "auth.type", "required key is missing"),
        ('[providers.acme.auth]\ntype = "header"\nsecret = "env:KEY"', "auth.header", "required key"),
        ('auth = "env:KEY"', "auth", "must be a table"),
        # A number too long for a float would be an infinite rate.
        (f'rate_limit = "{"9" * 400}/s"', "rate_limit", "is not of the form N/s"),
        # A rate is text: a table would set amount and period past the checks (a period of 0 divides by 0).
        ("rate_limit = {amount = 1, period = 0, text = '1/s'}", "rate_limit", "must be a string"),
        ("[providers.acme.per_key]\nfield = 'a'\nrate_limit = 5", "per_key.rate_limit", "must be a string"),
        # The key named is the key in the file, also when it is empty or called "name".
        ('"" = 1', "", "unknown key"),
        ("[providers.acme.retry]\nname = 'x'", "retry.name", "unknown key"),
    ],
)
def test_invalid_value_names_file_provider_and_key(tmp_path: Path, extra: str, key: str, detail: str) -> None:
    path = write(tmp_path, MINIMAL + extra + "\n")

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: [providers.acme] key '{key}': ")
    assert detail in message


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        ('[providers.acme]\nbase_url = "https://api.acme.example"\n', "adapter", "required key is missing"),
        ('[providers.acme]\nadapter = "http"\n', "base_url", "required key is missing"),
        (
            '[providers.acme]\nadapter = "http"\nbase_url = "api.acme.example"\n',
            "base_url",
            "must start with http:// or https://",
        ),
        (
            '[providers.acme]\nadapter = "http"\nbase_url = "ftp://api.acme.example"\n',
            "base_url",
            "must start with http:// or https://",
        ),
        ('[providers.acme]\nadapter = "http"\nbase_url = "https://"\n', "base_url", "name a host"),
    ],
)
def test_missing_or_bad_required_key(tmp_path: Path, text: str, key: str, detail: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: [providers.acme] key '{key}': ")
    assert detail in message


def test_every_problem_of_a_provider_is_listed(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.acme]\ntimeout = -1\nrate_limt = "1/s"\n')

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    lines = str(caught.value).splitlines()
    keys = {line.split(" key ", 1)[1].split(":", 1)[0] for line in lines}
    assert keys == {"'adapter'", "'base_url'", "'timeout'", "'rate_limt'"}
    assert all(line.startswith(f"{path}: [providers.acme] key ") for line in lines)


@pytest.mark.parametrize("header", ['"Acme.Payments"', "Acme", '"1acme"', '"acme payments"'])
def test_bad_provider_name(tmp_path: Path, header: str) -> None:
    path = write(tmp_path, MINIMAL.replace("acme]", f"{header}]"))
    name = header.strip('"')

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: [providers.{name}]: provider names are lower-case letters")


def test_a_name_with_a_line_break_is_refused_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("[providers.acme]", '[providers."acme\\n"]'))

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    message = str(caught.value)
    assert message.startswith(f'{path}: [providers."acme\\n"]: provider names are lower-case letters')
    assert "\n" not in message


def test_a_key_with_a_line_break_is_named_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '"time\\nout" = 1\n')

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    assert str(caught.value) == (
        f"{path}: [providers.acme] key 'time\\nout': unknown key (check its spelling against "
        "config/providers.toml)"
    )


def test_arrays_nested_too_deeply_are_refused_as_toml(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "timeout = " + "[" * 5000 + "]" * 5000 + "\n")

    with pytest.raises(ConfigError, match=r"not valid TOML: arrays or inline tables nested too deeply"):
        load_providers(path)


def test_description_owner_and_cost_per_call_are_optional(tmp_path: Path) -> None:
    plain = load_providers(write(tmp_path, MINIMAL))["acme"]
    assert (plain.description, plain.owner, plain.cost_per_call) == (None, None, None)  # None: unknown

    text = (
        MINIMAL
        + 'description = " Payments: charges and refunds "\nowner = "payments-team"\ncost_per_call = 2\n'
    )
    acme = load_providers(write(tmp_path, text))["acme"]
    assert (acme.description, acme.owner) == ("Payments: charges and refunds", "payments-team")
    assert acme.cost_per_call == 2.0 and isinstance(acme.cost_per_call, float)
    free = load_providers(write(tmp_path, MINIMAL + "cost_per_call = 0.0\n"))["acme"]
    assert free.cost_per_call == 0.0


def test_the_readme_example_of_a_providers_file_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The providers file", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]

    acme = load_providers(write(tmp_path, example))["acme"]

    assert acme.auth is not None and acme.per_key is not None
    assert (acme.description, acme.owner, acme.cost_per_call) == (
        "Payments: charges and refunds",
        "payments-team",
        0.002,
    )


def test_max_payload_bytes_defaults_to_one_mebibyte(tmp_path: Path) -> None:
    assert load_providers(write(tmp_path, MINIMAL))["acme"].max_payload_bytes == 1_048_576
    raised = load_providers(write(tmp_path, MINIMAL + "max_payload_bytes = 8_388_608\n"))["acme"]
    assert raised.max_payload_bytes == 8 * 1024 * 1024


def test_name_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + 'name = "other"\n')

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    assert str(caught.value).startswith(f"{path}: [providers.acme]: 'name' is taken from the table header")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'provider = "acme"\n' + MINIMAL)

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    assert str(caught.value).startswith(f"{path}: unknown top-level key(s) ['provider']")


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "timeout = = 3\n")

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    assert str(caught.value).startswith(f"{path}: not valid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError) as caught:
        load_providers(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: providers file not found")
    assert "INTEGRATIONS_PROVIDERS_FILE" in message


def test_parse_providers_names_the_source() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_providers({"providers": {"acme": {"adapter": "http"}}}, source="inline")

    assert str(caught.value) == "inline: [providers.acme] key 'base_url': required key is missing"


def test_resolve_unknown_adapter(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL + '[providers.mailer]\nadapter = "smtpp"\nbase_url = "https://mail.example"\n'
    )
    providers = load_providers(path)

    with pytest.raises(ConfigError) as caught:
        registry.resolve(providers, str(path))

    message = str(caught.value)
    assert message.startswith(f"{path}: [providers.mailer] key 'adapter': unknown adapter 'smtpp'")
    known = message.split("(known: ", 1)[1].split(";", 1)[0].split(", ")
    assert "http" in known
    assert sorted(known) == sorted(registry.known_adapters())


@pytest.mark.parametrize(
    ("provider", "operation", "task", "queue"),
    [
        ("acme", "request", "integrations.acme.request", "integrations.acme"),
        ("crm-eu", "upsert_contact", "integrations.crm-eu.upsert_contact", "integrations.crm-eu"),
    ],
)
def test_task_and_queue_names(provider: str, operation: str, task: str, queue: str) -> None:
    settings = provider_settings(provider, base_url="https://api.example")

    assert task_name(provider, operation) == task
    assert queue_name(provider) == queue
    assert settings.task_name(operation) == task
    assert settings.queue == queue
