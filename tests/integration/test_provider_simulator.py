"""The provider simulator, exercised over real HTTP the way worker processes use it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate

import pytest
import requests
from requests.adapters import HTTPAdapter

from integrations.testing.provider import ProviderSimulator


@pytest.fixture
def sim() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as simulator:
        yield simulator


def expected_id(key: str) -> str:
    return "sim_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def test_default_echoes_the_request(sim: ProviderSimulator) -> None:
    resp = requests.post(
        f"{sim.url}/v1/charges?currency=eur",
        json={"amount": 500},
        headers={"Idempotency-Key": "charge-1", "X-Request-ID": "req-1"},
        timeout=5,
    )

    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {
        "id": expected_id("charge-1"),
        "method": "POST",
        "path": "/v1/charges",
        "query": {"currency": "eur"},
        "json": {"amount": 500},
        "idempotency_key": "charge-1",
        "request_id": "req-1",
    }


def test_id_is_stable_per_idempotency_key(sim: ProviderSimulator) -> None:
    def create(key: str | None) -> str:
        headers = {"Idempotency-Key": key} if key else {}
        resp = requests.post(f"{sim.url}/v1/charges", json={}, headers=headers, timeout=5)
        body = resp.json()
        assert isinstance(body["id"], str)
        return body["id"]

    assert create("k1") == create("k1") == expected_id("k1")
    assert create("k2") != create("k1")
    assert create(None) != create(None)


def test_request_without_body_echoes_null_json(sim: ProviderSimulator) -> None:
    body = requests.get(f"{sim.url}/v1/contacts/7", timeout=5).json()

    assert body["json"] is None
    assert body["idempotency_key"] is None
    assert body["request_id"] is None
    assert body["id"].startswith("sim_")


@pytest.mark.parametrize("code", [201, 202])
def test_ok_status_changes_the_success_status(sim: ProviderSimulator, code: int) -> None:
    resp = requests.post(f"{sim.url}/v1/messages", params={"ok_status": code}, json={"to": "a@b"}, timeout=5)

    assert resp.status_code == code
    assert resp.json()["json"] == {"to": "a@b"}


def test_ok_status_204_answers_an_empty_body(sim: ProviderSimulator) -> None:
    resp = requests.delete(f"{sim.url}/v1/contacts/7", params={"ok_status": 204}, timeout=5)

    assert resp.status_code == 204
    assert resp.content == b""


def test_status_answers_the_error_body(sim: ProviderSimulator) -> None:
    resp = requests.post(f"{sim.url}/v1/charges", params={"status": 422}, json={}, timeout=5)

    assert resp.status_code == 422
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"error": {"type": "simulated", "message": "simulated 422", "status": 422}}
    assert "Retry-After" not in resp.headers


def test_fail_counts_per_idempotency_key(sim: ProviderSimulator) -> None:
    def post(key: str) -> int:
        resp = requests.post(
            f"{sim.url}/v1/charges", params={"fail": 2}, headers={"Idempotency-Key": key}, timeout=5
        )
        return resp.status_code

    assert [post("a"), post("a"), post("a"), post("a")] == [503, 503, 200, 200]
    assert [post("b"), post("b"), post("b")] == [503, 503, 200]
    assert [c.status for c in sim.calls(idempotency_key="a")] == [503, 503, 200, 200]


def test_fail_without_key_counts_per_path_and_query(sim: ProviderSimulator) -> None:
    def get(path: str, **params: str | int) -> int:
        return requests.get(f"{sim.url}{path}", params={"fail": 1, **params}, timeout=5).status_code

    assert [get("/x"), get("/x")] == [503, 200]
    assert [get("/y"), get("/y")] == [503, 200]
    assert [get("/x", page=2), get("/x", page=2)] == [503, 200]


def test_fail_status_and_error_body(sim: ProviderSimulator) -> None:
    resp = requests.post(f"{sim.url}/v1/charges", params={"fail": 1, "fail_status": 429}, timeout=5)

    assert resp.status_code == 429
    assert resp.json() == {"error": {"type": "simulated", "message": "simulated 429", "status": 429}}


@pytest.mark.parametrize("retry_after", ["7", formatdate(0, usegmt=True)])
def test_retry_after_is_passed_through_on_errors_only(sim: ProviderSimulator, retry_after: str) -> None:
    params: dict[str, str | int] = {"fail": 1, "retry_after": retry_after}
    headers = {"Idempotency-Key": "ra"}

    failed = requests.post(f"{sim.url}/v1/charges", params=params, headers=headers, timeout=5)
    succeeded = requests.post(f"{sim.url}/v1/charges", params=params, headers=headers, timeout=5)
    always = requests.get(f"{sim.url}/v1/x", params={"status": "503", "retry_after": retry_after}, timeout=5)

    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == retry_after
    assert succeeded.status_code == 200
    assert "Retry-After" not in succeeded.headers
    assert always.headers["Retry-After"] == retry_after


def test_drop_closes_the_connection_and_is_recorded(sim: ProviderSimulator) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{sim.url}/v1/charges", params={"drop": 1}, json={"amount": 1}, timeout=5)

    [call] = sim.calls("/v1/charges")
    assert call.status == 0
    assert call.json == {"amount": 1}


def test_drop_with_fail_drops_only_the_failing_requests(sim: ProviderSimulator) -> None:
    params = {"drop": 1, "fail": 1}
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{sim.url}/v1/charges", params=params, headers={"Idempotency-Key": "d"}, timeout=5)
    resp = requests.post(f"{sim.url}/v1/charges", params=params, headers={"Idempotency-Key": "d"}, timeout=5)

    assert resp.status_code == 200
    assert [c.status for c in sim.calls()] == [0, 200]


def test_delay_longer_than_the_client_timeout_times_out(sim: ProviderSimulator) -> None:
    with pytest.raises(requests.Timeout):
        requests.get(f"{sim.url}/v1/slow", params={"delay": 2}, timeout=0.2)

    assert [c.path for c in sim.calls()] == ["/v1/slow"]


def test_delay_shorter_than_the_client_timeout_answers(sim: ProviderSimulator) -> None:
    resp = requests.get(f"{sim.url}/v1/slow", params={"delay": 0.1}, timeout=5)

    assert resp.status_code == 200
    assert resp.elapsed.total_seconds() >= 0.1


def test_outage_answers_every_request_until_ended(sim: ProviderSimulator) -> None:
    sim.set_outage(503, retry_after=5)

    during = [
        requests.post(f"{sim.url}/v1/charges", params={"ok_status": 201}, timeout=5),
        requests.get(f"{sim.url}/anything/else", params={"drop": 1}, timeout=5),
    ]
    sim.set_outage(None)
    after = requests.post(f"{sim.url}/v1/charges", params={"ok_status": 201}, timeout=5)

    for resp in during:
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "5"
        assert resp.json()["error"]["status"] == 503
    assert after.status_code == 201
    assert [c.status for c in sim.calls()] == [503, 503, 201]


def test_calls_records_requests_and_filters(sim: ProviderSimulator) -> None:
    requests.post(
        f"{sim.url}/a?x=1", json={"n": 1}, headers={"Idempotency-Key": "k1", "X-Custom": "v"}, timeout=5
    )
    requests.post(f"{sim.url}/a", data=b"not json", headers={"Idempotency-Key": "k2"}, timeout=5)
    requests.put(f"{sim.url}/b", json=[1, 2], headers={"Idempotency-Key": "k1"}, timeout=5)

    assert [c.path for c in sim.calls()] == ["/a", "/a", "/b"]
    assert len(sim.calls("/a")) == 2
    assert [c.method for c in sim.calls(idempotency_key="k1")] == ["POST", "PUT"]
    [first] = sim.calls("/a", idempotency_key="k1")
    assert first.query == {"x": "1"}
    assert first.headers["x-custom"] == "v"
    assert first.headers["idempotency-key"] == "k1"
    assert first.body == b'{"n": 1}'
    assert first.json == {"n": 1}
    assert first.status == 200
    [second] = sim.calls(idempotency_key="k2")
    assert second.body == b"not json"
    assert second.json is None
    assert sim.calls("/missing") == []
    times = [c.received_at for c in sim.calls()]
    assert times == sorted(times)


def test_reset_forgets_calls_counters_and_outage(sim: ProviderSimulator) -> None:
    headers = {"Idempotency-Key": "r"}
    assert requests.post(f"{sim.url}/v1/charges?fail=1", headers=headers, timeout=5).status_code == 503
    sim.set_outage(500)

    sim.reset()

    assert sim.calls() == []
    assert requests.post(f"{sim.url}/v1/charges?fail=1", headers=headers, timeout=5).status_code == 503
    assert requests.post(f"{sim.url}/v1/charges?fail=1", headers=headers, timeout=5).status_code == 200


def test_text_answers_plain_ok(sim: ProviderSimulator) -> None:
    resp = requests.get(f"{sim.url}/health", params={"text": 1}, timeout=5)

    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.text == "ok"


def test_invalid_parameter_answers_400(sim: ProviderSimulator) -> None:
    resp = requests.get(f"{sim.url}/x", params={"status": "teapot"}, timeout=5)

    assert resp.status_code == 400
    assert resp.json()["error"]["status"] == 400


def test_keep_alive_serves_many_requests_on_one_connection(sim: ProviderSimulator) -> None:
    with requests.Session() as session:
        statuses = [
            session.post(f"{sim.url}/v1/items", json={"i": i}, timeout=5).status_code for i in range(200)
        ]
        adapter = session.get_adapter(sim.url)
        assert isinstance(adapter, HTTPAdapter)
        pools = adapter.poolmanager.pools
        opened = sum(pools[key].num_connections for key in pools.keys())  # noqa: SIM118

        assert statuses == [200] * 200
        assert opened == 1
    assert len(sim.calls("/v1/items")) == 200


def test_stop_is_idempotent_and_frees_the_port() -> None:
    sim = ProviderSimulator().start()
    port = sim.port
    with requests.Session() as session:
        assert session.get(sim.url, timeout=5).status_code == 200

        sim.stop()
        sim.stop()

        with pytest.raises(requests.ConnectionError):
            session.get(sim.url, timeout=5)
    with ProviderSimulator(port=port) as again:
        assert again.port == port
        assert requests.get(again.url, timeout=5).status_code == 200


def test_set_outage_rejects_non_error_status(sim: ProviderSimulator) -> None:
    with pytest.raises(ValueError, match="between 400 and 599"):
        sim.set_outage(200)


def statuses(responses: list[requests.Response]) -> list[int]:
    return [resp.status_code for resp in responses]


def test_rate_limit_lets_exactly_limit_of_a_burst_through(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(5, window=5)

    def call(i: int) -> requests.Response:
        method = "POST" if i % 2 else "GET"
        return requests.request(method, f"{sim.url}/v1/items/{i % 3}", timeout=5)

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(call, range(20)))

    assert sorted(statuses(responses)) == [200] * 5 + [429] * 15
    for resp in responses:
        if resp.status_code == 429:
            assert resp.json() == {"error": {"type": "simulated", "message": "simulated 429", "status": 429}}
            assert 1 <= int(resp.headers["Retry-After"]) <= 5
        else:
            assert "Retry-After" not in resp.headers
    assert sorted(c.status for c in sim.calls()) == [200] * 5 + [429] * 15


def test_rate_limit_lets_requests_through_again_once_the_window_passes(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(2, window=0.3)

    burst = [requests.get(f"{sim.url}/v1/x", timeout=5) for _ in range(3)]
    time.sleep(0.35)
    later = [requests.get(f"{sim.url}/v1/x", timeout=5) for _ in range(3)]

    assert statuses(burst) == [200, 200, 429]
    assert burst[2].headers["Retry-After"] == "1"
    assert statuses(later) == [200, 200, 429]


def test_rate_limit_window_slides(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(2, window=0.5)

    first = requests.get(f"{sim.url}/a", timeout=5)
    time.sleep(0.3)
    second = requests.get(f"{sim.url}/a", timeout=5)
    time.sleep(0.25)
    # A fixed window opened by the first request would have closed and let two more through; the second
    # request is still inside the sliding one, so only one more fits.
    after = [requests.get(f"{sim.url}/a", timeout=5) for _ in range(2)]

    assert statuses([first, second, *after]) == [200, 200, 200, 429]


def test_rate_limit_refusals_do_not_count(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(1, window=0.4)

    first = requests.get(f"{sim.url}/a", timeout=5)
    time.sleep(0.25)
    refused = requests.get(f"{sim.url}/a", timeout=5)
    time.sleep(0.2)
    after = requests.get(f"{sim.url}/a", timeout=5)

    assert statuses([first, refused, after]) == [200, 429, 200]


def test_rate_limit_headers(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(2, window=1.5, headers=True)

    responses = [requests.post(f"{sim.url}/v1/charges", timeout=5) for _ in range(3)]

    assert statuses(responses) == [200, 200, 429]
    assert [resp.headers["X-RateLimit-Limit"] for resp in responses] == ["2", "2", "2"]
    assert [resp.headers["X-RateLimit-Remaining"] for resp in responses] == ["1", "0", "0"]
    assert [resp.headers["X-RateLimit-Reset"] for resp in responses] == ["2", "2", "2"]
    assert responses[2].headers["Retry-After"] == "2"


def test_rate_limit_headers_only_when_asked(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(1, window=5)

    responses = [requests.get(f"{sim.url}/a", timeout=5) for _ in range(2)]

    assert statuses(responses) == [200, 429]
    assert not [name for resp in responses for name in resp.headers if name.lower().startswith("x-ratelimit")]


def test_rate_limit_decides_before_fail_and_delay(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(1, window=5)
    headers = {"Idempotency-Key": "k"}
    assert requests.get(f"{sim.url}/warm", timeout=5).status_code == 200

    refused = requests.post(f"{sim.url}/v1/charges?fail=1&delay=3", headers=headers, timeout=5)
    sim.set_rate_limit(None)
    failed = requests.post(f"{sim.url}/v1/charges?fail=1", headers=headers, timeout=5)

    assert refused.status_code == 429
    assert refused.elapsed.total_seconds() < 1
    assert failed.status_code == 503
    assert [c.status for c in sim.calls()] == [200, 429, 503]


def test_path_limit_only_throttles_its_path(sim: ProviderSimulator) -> None:
    limited = [
        requests.get(f"{sim.url}/a", params={"limit": 2, "limit_window": 5}, timeout=5) for _ in range(3)
    ]
    free = [requests.get(f"{sim.url}/b", timeout=5) for _ in range(5)]
    own_window = [
        requests.get(f"{sim.url}/b", params={"limit": 1, "limit_window": 5}, timeout=5) for _ in range(2)
    ]

    assert statuses(limited) == [200, 200, 429]
    assert 1 <= int(limited[2].headers["Retry-After"]) <= 5
    assert statuses(free) == [200] * 5
    assert statuses(own_window) == [200, 429]


def test_path_limit_window_defaults_to_one_second(sim: ProviderSimulator) -> None:
    responses = [requests.get(f"{sim.url}/a", params={"limit": 1}, timeout=5) for _ in range(2)]

    assert statuses(responses) == [200, 429]
    assert responses[1].headers["Retry-After"] == "1"


def test_provider_limit_is_checked_before_path_limit(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(3, window=5)

    responses = [
        requests.get(f"{sim.url}/a", params={"limit": 1, "limit_window": 5}, timeout=5),
        requests.get(f"{sim.url}/a", params={"limit": 1, "limit_window": 5}, timeout=5),
        requests.get(f"{sim.url}/b", timeout=5),
        requests.get(f"{sim.url}/b", timeout=5),
        requests.get(f"{sim.url}/b", timeout=5),
        requests.get(f"{sim.url}/c", params={"limit": 5, "limit_window": 5}, timeout=5),
    ]

    # The path's refusal takes no provider-wide slot; the provider-wide refusal takes no slot of /c.
    assert statuses(responses) == [200, 429, 200, 200, 429, 429]
    sim.set_rate_limit(None)
    assert requests.get(f"{sim.url}/c", params={"limit": 1, "limit_window": 5}, timeout=5).status_code == 200


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": "x"}, {"limit": 1, "limit_window": 0}, {"limit_window": 1}]
)
def test_invalid_path_limit_answers_400(sim: ProviderSimulator, params: dict[str, int | str]) -> None:
    assert requests.get(f"{sim.url}/a", params=params, timeout=5).status_code == 400


@pytest.mark.parametrize(("limit", "window"), [(0, 1.0), (1, 0.0), (1, float("inf"))])
def test_set_rate_limit_rejects_invalid_values(sim: ProviderSimulator, limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        sim.set_rate_limit(limit, window)


def test_reset_and_none_end_the_rate_limit(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(1, window=5)
    path = {"limit": 1, "limit_window": 5}
    before = [requests.get(f"{sim.url}/a", params=path, timeout=5) for _ in range(2)]

    sim.reset()
    after_reset = [
        requests.get(f"{sim.url}/a", params=path, timeout=5),
        requests.get(f"{sim.url}/b", timeout=5),
    ]
    sim.set_rate_limit(1, window=5)
    sim.set_rate_limit(None)
    after_none = [requests.get(f"{sim.url}/b", timeout=5) for _ in range(2)]

    assert statuses(before) == [200, 429]
    assert statuses(after_reset) == [200, 200]
    assert statuses(after_none) == [200, 200]


def test_rate_limit_does_not_count_outage_or_dropped_requests(sim: ProviderSimulator) -> None:
    sim.set_rate_limit(1, window=5, headers=True)
    sim.set_outage(503)
    during = [requests.get(f"{sim.url}/a", timeout=5) for _ in range(3)]
    sim.set_outage(None)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sim.url}/a", params={"drop": 1}, timeout=5)
    after = [requests.get(f"{sim.url}/a", timeout=5) for _ in range(2)]

    assert statuses(during) == [503] * 3
    assert "X-RateLimit-Limit" not in during[0].headers
    assert statuses(after) == [200, 429]
    assert [c.status for c in sim.calls()] == [503, 503, 503, 0, 200, 429]
