"""Provider rate-limit headers: X-RateLimit-*, the IETF draft's RateLimit-* and structured RateLimit fields."""

from __future__ import annotations

import time

import pytest

from integrations.resilience.ratelimit_headers import RateLimitState, parse_rate_limit_headers

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {
                "X-RateLimit-Limit": "5000",
                "X-RateLimit-Remaining": "4966",
                "X-RateLimit-Reset": str(int(NOW) + 600),
            },
            RateLimitState(limit=5000, remaining=4966, reset_after=600.0),
            id="github-epoch",
        ),
        pytest.param(
            {
                "X-RateLimit-Limit": "500",
                "X-RateLimit-Remaining": "499",
                "X-RateLimit-Reset": str(int(NOW) + 45),
            },
            RateLimitState(limit=500, remaining=499, reset_after=45.0),
            id="sendgrid-epoch",
        ),
        pytest.param(
            {
                "x-rate-limit-limit": "900",
                "x-rate-limit-remaining": "847",
                "x-rate-limit-reset": str(int(NOW) + 900),
            },
            RateLimitState(limit=900, remaining=847, reset_after=900.0),
            id="x-twitter-hyphenated",
        ),
        pytest.param(
            {"x-ratelimit-limit": "10, 10;w=1", "x-ratelimit-remaining": "2", "x-ratelimit-reset": "1"},
            RateLimitState(limit=10, remaining=2, reset_after=1.0),
            id="envoy-limit-with-quota-policy",
        ),
        pytest.param(
            {"RateLimit-Limit": "100", "RateLimit-Remaining": "50", "RateLimit-Reset": "30"},
            RateLimitState(limit=100, remaining=50, reset_after=30.0),
            id="ietf-draft-06-separate-fields",
        ),
        pytest.param(
            {"RateLimit-Limit": "100, 100;w=10", "RateLimit-Remaining": "0", "RateLimit-Reset": "7"},
            RateLimitState(limit=100, remaining=0, reset_after=7.0),
            id="ietf-early-draft-limit-with-policy",
        ),
        pytest.param(
            {"RateLimit": "limit=100, remaining=50, reset=5"},
            RateLimitState(limit=100, remaining=50, reset_after=5.0),
            id="ietf-draft-07-dictionary",
        ),
        pytest.param(
            {"RateLimit": "remaining=50, reset=5", "RateLimit-Policy": "100;w=60"},
            RateLimitState(limit=100, remaining=50, reset_after=5.0),
            id="ietf-draft-07-limit-from-policy",
        ),
        pytest.param(
            {"RateLimit": '"default";r=50;t=30', "RateLimit-Policy": '"default";q=100;w=60'},
            RateLimitState(limit=100, remaining=50, reset_after=30.0),
            id="structured-with-policy",
        ),
        pytest.param(
            {"RateLimit": '"default";r=50;t=30'},
            RateLimitState(limit=None, remaining=50, reset_after=30.0),
            id="structured-without-policy",
        ),
        pytest.param(
            {"RateLimit": '"default";r=999;pk=:dHJpYWwxMjEzMjM=:'},
            RateLimitState(limit=None, remaining=999, reset_after=None),
            id="structured-partition-key-no-reset",
        ),
        pytest.param(
            {"RateLimit": "default;r=50;t=30", "RateLimit-Policy": "default;q=100;w=60"},
            RateLimitState(limit=100, remaining=50, reset_after=30.0),
            id="structured-token-policy-names",
        ),
        pytest.param(
            {"RateLimit": '"default";r=50;t=30', "RateLimit-Policy": '"other";q=100;w=60'},
            RateLimitState(limit=None, remaining=50, reset_after=30.0),
            id="structured-policy-of-another-name",
        ),
    ],
)
def test_each_header_family(headers: dict[str, str], expected: RateLimitState) -> None:
    assert parse_rate_limit_headers(headers, now=NOW) == expected


@pytest.mark.parametrize(
    ("reset", "reset_after"),
    [
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        ("86400", 86400.0),
        (str(int(NOW) + 30), 30.0),
        (f"{NOW + 1.5}", 1.5),
        (str(int(NOW)), 0.0),
        (str(int(NOW) - 60), 0.0),
    ],
)
@pytest.mark.parametrize("prefix", ["X-RateLimit-", "RateLimit-"])
def test_reset_is_delta_seconds_or_epoch(prefix: str, reset: str, reset_after: float) -> None:
    state = parse_rate_limit_headers({f"{prefix}Reset": reset}, now=NOW)

    assert state is not None
    assert state.reset_after == pytest.approx(reset_after)


def test_epoch_reset_defaults_to_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)

    state = parse_rate_limit_headers({"X-RateLimit-Reset": str(int(NOW) + 12)})

    assert state is not None
    assert state.reset_after == 12.0


@pytest.mark.parametrize(
    ("ratelimit", "policy", "expected"),
    [
        pytest.param(
            '"burst";r=5;t=1, "daily";r=900;t=3600',
            '"burst";q=10;w=1, "daily";q=1000;w=86400',
            RateLimitState(limit=10, remaining=5, reset_after=1.0),
            id="lowest-remaining-first",
        ),
        pytest.param(
            '"daily";r=900;t=3600, "burst";r=5;t=1',
            '"burst";q=10;w=1, "daily";q=1000;w=86400',
            RateLimitState(limit=10, remaining=5, reset_after=1.0),
            id="lowest-remaining-last",
        ),
        pytest.param(
            '"permin";r=0;t=20, "perhr";r=0;t=1800',
            '"permin";q=50;w=60,"perhr";q=1000;w=3600',
            RateLimitState(limit=1000, remaining=0, reset_after=1800.0),
            id="tie-takes-the-longer-reset",
        ),
        pytest.param(
            '"a";r=3;t=10, "b";r=abc;t=1',
            None,
            RateLimitState(limit=None, remaining=3, reset_after=10.0),
            id="member-without-valid-remaining-skipped",
        ),
    ],
)
def test_multiple_policies_report_the_most_restrictive(
    ratelimit: str, policy: str | None, expected: RateLimitState
) -> None:
    headers = {"RateLimit": ratelimit}
    if policy is not None:
        headers["RateLimit-Policy"] = policy

    assert parse_rate_limit_headers(headers, now=NOW) == expected


def test_service_limits_split_over_differently_cased_fields_are_combined() -> None:
    headers = {"RateLimit": '"daily";r=900;t=3600', "ratelimit": '"burst";r=5;t=1'}

    assert parse_rate_limit_headers(headers, now=NOW) == RateLimitState(
        limit=None, remaining=5, reset_after=1.0
    )


@pytest.mark.parametrize(
    "names",
    [
        ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"),
        ("X-RATELIMIT-LIMIT", "X-RATELIMIT-REMAINING", "X-RATELIMIT-RESET"),
        ("X-Ratelimit-Limit", "x-RateLimit-Remaining", "X-RateLimit-reset"),
        ("ratelimit-limit", "RATELIMIT-REMAINING", "RateLimit-Reset"),
    ],
)
def test_header_names_are_case_insensitive(names: tuple[str, str, str]) -> None:
    headers = dict(zip(names, ["60", "0", "20"], strict=True))

    assert parse_rate_limit_headers(headers, now=NOW) == RateLimitState(
        limit=60, remaining=0, reset_after=20.0
    )


def test_structured_field_names_are_case_insensitive() -> None:
    headers = {"RATELIMIT": '"default";r=1;t=9', "ratelimit-POLICY": '"default";q=4;w=60'}

    assert parse_rate_limit_headers(headers, now=NOW) == RateLimitState(limit=4, remaining=1, reset_after=9.0)


LEGACY = {
    "X-RateLimit-Limit": "5000",
    "X-RateLimit-Remaining": "4000",
    "X-RateLimit-Reset": str(int(NOW) + 60),
}
SEPARATE = {"RateLimit-Limit": "100", "RateLimit-Remaining": "10", "RateLimit-Reset": "5"}
STRUCTURED = {"RateLimit": '"default";r=1;t=2', "RateLimit-Policy": '"default";q=3;w=60'}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(LEGACY | SEPARATE | STRUCTURED, RateLimitState(3, 1, 2.0), id="structured-over-all"),
        pytest.param(LEGACY | STRUCTURED, RateLimitState(3, 1, 2.0), id="structured-over-x"),
        pytest.param(LEGACY | SEPARATE, RateLimitState(100, 10, 5.0), id="ietf-separate-over-x"),
        pytest.param(
            LEGACY | SEPARATE | {"RateLimit": "not (a) field"},
            RateLimitState(100, 10, 5.0),
            id="malformed-structured-falls-back",
        ),
        pytest.param(
            LEGACY | {"RateLimit-Remaining": "many"},
            RateLimitState(5000, 4000, 60.0),
            id="malformed-separate-falls-back",
        ),
        pytest.param(
            {"RateLimit-Remaining": "7", "X-RateLimit-Limit": "10"},
            RateLimitState(None, 7, None),
            id="families-not-mixed",
        ),
    ],
)
def test_preference_between_families(headers: dict[str, str], expected: RateLimitState) -> None:
    assert parse_rate_limit_headers(headers, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "abc",
        "-1",
        "1e3",
        "nan",
        "inf",
        "1_000",
        "0x10",
        "\u0661\u0660",
        "12abc",
        "3.",
        ".5",
        "9" * 5000,
    ],
)
def test_malformed_plain_values_are_ignored(value: str) -> None:
    headers = {"X-RateLimit-Limit": value, "X-RateLimit-Remaining": value, "X-RateLimit-Reset": value}

    assert parse_rate_limit_headers(headers, now=NOW) is None
    assert parse_rate_limit_headers(headers | {"X-RateLimit-Remaining": "4"}, now=NOW) == RateLimitState(
        limit=None, remaining=4, reset_after=None
    )


@pytest.mark.parametrize(
    "value",
    [
        '"default";r=abc;t=30',
        '"default";r=-1;t=30',
        '"default";r=?1',
        '"default";r=1.5',
        '"default;r=5;t=30',
        '"default";r=5;t=30,',
        "r=50, t=30",
        '"default" r=5',
        "(",
        "limit=abc, remaining=?0",
        "limit=-5",
        f'"default";r={"9" * 5000}',
        f'"default";r=5;t={"9" * 5000}',
        "",
    ],
)
def test_malformed_structured_fields_are_ignored(value: str) -> None:
    assert parse_rate_limit_headers({"RateLimit": value}, now=NOW) is None


@pytest.mark.parametrize("policy", ['"default";q=abc', '"default";q=-1', '"default', "((", '"default";w=60'])
def test_malformed_policy_leaves_limit_unknown(policy: str) -> None:
    headers = {"RateLimit": '"default";r=5;t=10', "RateLimit-Policy": policy}

    assert parse_rate_limit_headers(headers, now=NOW) == RateLimitState(
        limit=None, remaining=5, reset_after=10.0
    )


def test_negative_structured_reset_is_ignored() -> None:
    state = parse_rate_limit_headers({"RateLimit": '"default";r=5;t=-3'}, now=NOW)

    assert state == RateLimitState(limit=None, remaining=5, reset_after=None)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json", "Retry-After": "30"},
        {"RateLimit-Policy": '"default";q=100;w=60'},
        {"X-RateLimit-Used": "4"},
    ],
)
def test_no_rate_limit_headers_gives_none(headers: dict[str, str]) -> None:
    assert parse_rate_limit_headers(headers, now=NOW) is None


@pytest.mark.parametrize(
    ("state", "exhausted", "usage"),
    [
        (RateLimitState(limit=100, remaining=0, reset_after=5.0), True, 1.0),
        (RateLimitState(limit=100, remaining=20, reset_after=5.0), False, 0.8),
        (RateLimitState(limit=100, remaining=21, reset_after=5.0), False, 0.79),
        (RateLimitState(limit=100, remaining=100, reset_after=None), False, 0.0),
        (RateLimitState(limit=10, remaining=15, reset_after=None), False, 0.0),
        (RateLimitState(limit=0, remaining=0, reset_after=None), True, None),
        (RateLimitState(limit=None, remaining=0, reset_after=None), True, None),
        (RateLimitState(limit=100, remaining=None, reset_after=3.0), False, None),
        (RateLimitState(limit=None, remaining=None, reset_after=None), False, None),
    ],
)
def test_exhausted_and_usage(state: RateLimitState, exhausted: bool, usage: float | None) -> None:
    assert state.exhausted is exhausted
    assert state.usage == (pytest.approx(usage) if usage is not None else None)


def test_usage_crosses_the_warning_threshold_from_parsed_headers() -> None:
    state = parse_rate_limit_headers(
        {"RateLimit": '"default";r=19;t=30', "RateLimit-Policy": '"default";q=100'}
    )

    assert state is not None
    assert state.usage is not None and state.usage > 0.8
    assert not state.exhausted


def test_a_reset_in_epoch_milliseconds_is_read_as_such() -> None:
    state = parse_rate_limit_headers(
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1700000030000"},
        now=1_700_000_000.0,
    )
    assert state is not None and state.reset_after == 30.0
