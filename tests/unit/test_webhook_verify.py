"""Webhook signatures: each scheme's authentic deliveries pass, and nothing forged, stale or oversized does.

Deliveries are signed here by each provider's published recipe, written out apart from the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrations.webhooks.settings import WebhookSettings, resolve_keys
from integrations.webhooks.store import EventStore, NewEvent
from integrations.webhooks.verify import (
    BodyTooLarge,
    PayloadInvalid,
    SignatureInvalid,
    SignatureMissing,
    TimestampOutOfTolerance,
    VerifiedEvent,
    WebhookRefused,
    authenticate,
    canonical,
    read_body,
    verify,
)
from tests.providers import provider_settings

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
URL = "https://hooks.example/webhooks/acme"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
STANDARD_OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
SECRETS = {
    "stripe": "whsec_stripe_current",
    "hubspot_v3": "hubspot-client-secret",
    "hmac_sha256": "gh-secret",
}
OLD_SECRETS = {"stripe": "whsec_stripe_previous", "hubspot_v3": "hubspot-old-secret", "hmac_sha256": "gh-old"}
# With the sendgrid scheme, a "secret" here is the seed of a key pair made by the test: SendGrid signs with
# the private key, the providers file holds the public one (``configured``).
SENDGRID_SEEDS = ("sendgrid-current-key", "sendgrid-previous-key")
SECRETS["sendgrid"], OLD_SECRETS["sendgrid"] = SENDGRID_SEEDS
GITHUB = {"header": "X-Hub-Signature-256", "prefix": "sha256=", "event_id": "header:X-GitHub-Delivery"}
SCHEMES = ["stripe", "standard", "hubspot_v3", "sendgrid", "hmac_sha256"]
TIMED = ["stripe", "standard", "hubspot_v3", "sendgrid"]


@dataclass(frozen=True)
class Delivery:
    """One POST as it reaches the receiver."""

    headers: dict[str, str]
    body: bytes
    method: str = "POST"
    url: str = URL


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def stripe_delivery(secret: str, body: bytes, at: float) -> Delivery:
    t = str(int(at))
    v1 = _hmac(secret.encode(), f"{t}.".encode() + body).hex()
    return Delivery({"Stripe-Signature": f"t={t},v1={v1},v0=0000"}, body)


def standard_delivery(secret: str, body: bytes, at: float, message_id: str = "msg_2KWPBgLlAfx") -> Delivery:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    t = str(int(at))
    signature = base64.b64encode(_hmac(key, f"{message_id}.{t}.".encode() + body)).decode()
    return Delivery(
        {"webhook-id": message_id, "webhook-timestamp": t, "webhook-signature": f"v1,{signature}"}, body
    )


def hubspot_delivery(
    secret: str, body: bytes, at: float, url: str = URL, signed_uri: str | None = None
) -> Delivery:
    t = str(int(at * 1000))
    source = f"POST{signed_uri or url}".encode() + body + t.encode()
    signature = base64.b64encode(_hmac(secret.encode(), source)).decode()
    headers = {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": t}
    return Delivery(headers, body, url=url)


def sendgrid_private_key(seed: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 key pair of the test's own, the same for the same seed."""
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest()) % (2**255)
    return ec.derive_private_key(number + 1, ec.SECP256R1())


def sendgrid_public_key(seed: str) -> str:
    """The public key as SendGrid's settings show it: the base64 of its DER."""
    public = sendgrid_private_key(seed).public_key()
    return base64.b64encode(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).decode()


def sendgrid_delivery(seed: str, body: bytes, at: float) -> Delivery:
    """Signed as SendGrid's Signed Event Webhook signs: ECDSA P-256 with SHA-256 over the timestamp's
    text followed by the body, the DER signature in base64."""
    t = str(int(at))
    # Deterministic (RFC 6979), so a delivery signed twice is the same delivery: hypothesis replays them.
    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    signature = sendgrid_private_key(seed).sign(t.encode() + body, algorithm)
    return Delivery(
        {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": t,
        },
        body,
    )


def github_delivery(secret: str, body: bytes, at: float) -> Delivery:
    signature = "sha256=" + _hmac(secret.encode(), body).hex()
    return Delivery({"X-Hub-Signature-256": signature, "X-GitHub-Delivery": "72d3162e"}, body)


BODIES = {
    "stripe": b'{"id": "evt_1NG8Du2eZvKYlo2C", "type": "payment_intent.succeeded", "data": {"object": {}}}',
    "standard": b'{"type":"contact.created","timestamp":"2026-01-01T00:00:00Z","data":{"id":"1f81eb52"}}',
    "hubspot_v3": b'[{"eventId": 1001, "subscriptionType": "contact.creation", "objectId": 123},'
    b' {"eventId": 1002, "subscriptionType": "contact.deletion", "objectId": 124}]',
    "sendgrid": b'[{"email":"a@example.com","event":"delivered","sg_event_id":"sg-1","timestamp":1767225590},'
    b'{"email":"b@example.com","event":"bounce","sg_event_id":"sg-2","timestamp":1767225595}]\r\n',
    "hmac_sha256": b'{"id": 7, "type": "push", "ref": "refs/heads/main"}',
}
EXPECTED = {
    "stripe": ("evt_1NG8Du2eZvKYlo2C", "payment_intent.succeeded"),
    "standard": ("msg_2KWPBgLlAfx", "contact.created"),
    "hubspot_v3": ("1001", "contact.creation"),
    "sendgrid": ("sg-1", "delivered"),
    "hmac_sha256": ("72d3162e", "push"),
}


def sign(scheme: str, secret: str, body: bytes, at: float = NOW) -> Delivery:
    signers: dict[str, Callable[[str, bytes, float], Delivery]] = {
        "stripe": stripe_delivery,
        "standard": standard_delivery,
        "hubspot_v3": hubspot_delivery,
        "sendgrid": sendgrid_delivery,
        "hmac_sha256": github_delivery,
    }
    return signers[scheme](secret, body, at)


def configured(scheme: str, secret: str) -> str:
    """What the providers file references for ``secret``: SendGrid's public key, else the secret."""
    return sendgrid_public_key(secret) if scheme == "sendgrid" else secret


def current(scheme: str) -> str:
    return STANDARD_SECRET if scheme == "standard" else SECRETS[scheme]


def old(scheme: str) -> str:
    return STANDARD_OLD_SECRET if scheme == "standard" else OLD_SECRETS[scheme]


def webhooks(scheme: str, monkeypatch: pytest.MonkeyPatch, *secrets: str, **table: Any) -> WebhookSettings:
    """The settings a providers file with this ``[providers.acme.webhooks]`` table gives, its secrets
    set in the environment as ``env:`` references."""
    references = []
    for index, secret in enumerate(secrets or (current(scheme),)):
        monkeypatch.setenv(f"ACME_WEBHOOK_SECRET_{index}", configured(scheme, secret))
        references.append(f"env:ACME_WEBHOOK_SECRET_{index}")
    extra = GITHUB if scheme == "hmac_sha256" and "header" not in table else {}
    provider = provider_settings("acme", webhooks={"scheme": scheme, "secrets": references} | extra | table)
    assert provider.webhooks is not None
    return provider.webhooks


def check(settings: WebhookSettings, delivery: Delivery, now: float = NOW) -> VerifiedEvent:
    """The delivery's first event (the one ``EXPECTED`` names)."""
    return check_all(settings, delivery, now)[0]


def check_all(settings: WebhookSettings, delivery: Delivery, now: float = NOW) -> tuple[VerifiedEvent, ...]:
    keys = resolve_keys("acme", settings)
    return verify(
        settings,
        keys,
        method=delivery.method,
        url=delivery.url,
        headers=delivery.headers,
        body=delivery.body,
        now=now,
    )


def test_the_standard_webhooks_published_test_vector_passes() -> None:
    """The vector of the specification's reference libraries (standard-webhooks, libraries/*/tests)."""
    settings = WebhookSettings(scheme="standard", secrets=["env:UNUSED"])
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = b'{"test": 2432232314}'

    authenticate(settings, [key], method="POST", url=URL, headers=headers, body=body, now=1614265330)

    changed = b'{"test": 2432232315}'
    with pytest.raises(SignatureInvalid):
        authenticate(settings, [key], method="POST", url=URL, headers=headers, body=changed, now=1614265330)


def test_a_whsec_secret_from_the_environment_is_the_vector_s_key(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = webhooks("standard", monkeypatch, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert resolve_keys("acme", settings) == (base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_authentic_delivery_gives_its_event_id_and_type(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = webhooks(scheme, monkeypatch)
    event = check(settings, sign(scheme, current(scheme), BODIES[scheme]))
    assert (event.event_id, event.event_type) == EXPECTED[scheme]
    parsed = json.loads(BODIES[scheme])
    assert event.payload == (parsed[0] if isinstance(parsed, list) else parsed)
    assert "payload" not in repr(event) and "body" not in repr(event)  # a repr that reaches a log


def test_sendgrid_s_published_test_vector_passes() -> None:
    """The vector of SendGrid's own library (sendgrid-python, test/unit/test_eventwebhook.py): its public
    key as SendGrid's settings show it, and a body with the trailing CRLF SendGrid sends."""
    settings = WebhookSettings(scheme="sendgrid", secrets=["env:UNUSED"])
    key = base64.b64decode(
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaIN"
        "XvVpiglSI8eNEc6wEA3F+g=="
    )
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe"
        "5W0JuG+luQAbPIqHh89M15TluLtEZtM=",
        "X-Twilio-Email-Event-Webhook-Timestamp": "1600112502",
    }
    event = {
        "email": "hello@world.com",
        "event": "dropped",
        "reason": "Bounced Address",
        "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
        "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
        "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
        "timestamp": 1600112492,
    }
    body = json.dumps([event], sort_keys=True, separators=(",", ":")).encode() + b"\r\n"

    [verified] = verify(settings, [key], method="POST", url=URL, headers=headers, body=body, now=1600112502)

    assert (verified.event_id, verified.event_type, verified.payload) == (
        event["sg_event_id"],
        "dropped",
        event,
    )
    with pytest.raises(SignatureInvalid):
        authenticate(settings, [key], method="POST", url=URL, headers=headers, body=body[:-2], now=1600112502)


@pytest.mark.parametrize("scheme", ["sendgrid", "hubspot_v3"])
def test_an_array_body_is_one_event_per_element_kept_as_its_canonical_json(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = webhooks(scheme, monkeypatch)
    elements = json.loads(BODIES[scheme])

    events = check_all(settings, sign(scheme, current(scheme), BODIES[scheme]))

    fields = {"sendgrid": ("sg_event_id", "event"), "hubspot_v3": ("eventId", "subscriptionType")}[scheme]
    assert [(event.event_id, event.event_type) for event in events] == [
        (str(element[fields[0]]), element[fields[1]]) for element in elements
    ]
    assert [event.payload for event in events] == elements
    assert [json.loads(event.body) for event in events] == elements
    # The same element in another batch, its keys in another order, is kept as the same bytes.
    reordered = json.dumps([{"x": "é", **dict(reversed(elements[1].items()))}], ensure_ascii=False).encode()
    [again] = check_all(settings, sign(scheme, current(scheme), reordered))
    assert again.body == canonical({**elements[1], "x": "é"})
    assert (
        again.body
        == json.dumps(
            {**elements[1], "x": "é"}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )


def test_an_array_body_whose_events_are_named_by_a_header_is_one_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = webhooks("hmac_sha256", monkeypatch, event_type="header:X-GitHub-Event")
    body = b'[{"id": 1}, {"id": 2}]'
    delivery = github_delivery(SECRETS["hmac_sha256"], body, NOW)
    delivery = replace(delivery, headers=delivery.headers | {"X-GitHub-Event": "push"})
    [event] = check_all(settings, delivery)
    assert (event.event_id, event.event_type, event.body) == ("72d3162e", "push", body)


def hubspot_batch(*event_ids: int) -> bytes:
    return json.dumps(
        [{"eventId": i, "subscriptionType": "contact.creation", "objectId": 500 + i} for i in event_ids]
    ).encode()


def test_a_hubspot_redelivery_batched_otherwise_stores_only_its_new_event(
    monkeypatch: pytest.MonkeyPatch, ledger_url: str
) -> None:
    """As the receiver stores a delivery: every event verified, then all of them in one transaction."""
    settings = webhooks("hubspot_v3", monkeypatch)
    store = EventStore.connect(ledger_url)

    def deliver(body: bytes) -> list[tuple[str, bool]]:
        events = check_all(settings, sign("hubspot_v3", current("hubspot_v3"), body))
        stored = store.store_all("hubspot", [NewEvent(e.event_id, e.event_type, e.body) for e in events])
        return [(record.event_id, new) for record, new in stored]

    try:
        assert deliver(hubspot_batch(1, 2, 3)) == [("1", True), ("2", True), ("3", True)]
        assert deliver(hubspot_batch(3, 4)) == [("3", False), ("4", True)]
        assert deliver(hubspot_batch(2, 1, 4)) == [("2", False), ("1", False), ("4", False)]
        # An event listed twice in one body is stored once.
        assert deliver(hubspot_batch(5, 5)) == [("5", True), ("5", False)]

        stored = store.list(provider="hubspot")
        assert sorted(record.event_id for record in stored) == ["1", "2", "3", "4", "5"]
        four = store.find("hubspot", "4")
        assert four is not None and four.body is not None
        assert json.loads(four.body) == {
            "eventId": 4,
            "subscriptionType": "contact.creation",
            "objectId": 504,
        }
    finally:
        store.dispose()


def test_overlapping_batches_stored_at_once_in_opposite_orders_store_each_event_once(ledger_url: str) -> None:
    """Two receivers storing batches that share events, listed in opposite orders, at the same moment:
    neither waits on the other for ever (PostgreSQL would abort one as a deadlock), and each event is new
    for exactly one of them."""
    store = EventStore.connect(ledger_url)
    rounds, size = 20, 30

    def deliver(batch: list[str]) -> list[tuple[str, bool]]:
        stored = store.store_all("hubspot", [NewEvent(i, "contact.creation", b"{}") for i in batch])
        return [(record.event_id, new) for record, new in stored]

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for round_ in range(rounds):
                ids = [f"{round_}-{i:02d}" for i in range(size)]
                answers = list(pool.map(deliver, [ids, ids[::-1], ids[::2], ids[::-3]]))
                news = [event_id for answer in answers for event_id, new in answer if new]
                assert sorted(news) == ids
    finally:
        store.dispose()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_while_a_secret_is_rotated_both_are_accepted_and_no_other(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = webhooks(scheme, monkeypatch, current(scheme), old(scheme))
    body = BODIES[scheme]
    assert check(settings, sign(scheme, current(scheme), body)).event_id == EXPECTED[scheme][0]
    assert check(settings, sign(scheme, old(scheme), body)).event_id == EXPECTED[scheme][0]

    stranger = "whsec_" + base64.b64encode(b"s" * 32).decode() if scheme == "standard" else "a-third-secret"
    with pytest.raises(SignatureInvalid):
        check(settings, sign(scheme, stranger, body))


def test_a_standard_header_with_the_old_and_new_signatures_passes_with_either_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = BODIES["standard"]
    new, previous = (
        standard_delivery(secret, body, NOW) for secret in (STANDARD_SECRET, STANDARD_OLD_SECRET)
    )
    both = new.headers["webhook-signature"] + " v1a,bm90LWNoZWNrZWQ= " + previous.headers["webhook-signature"]
    delivery = replace(new, headers=new.headers | {"webhook-signature": both})
    for secret in (STANDARD_SECRET, STANDARD_OLD_SECRET):
        assert check(webhooks("standard", monkeypatch, secret), delivery).event_type == "contact.created"


SIGNATURE_HEADERS = {
    "stripe": "Stripe-Signature",
    "standard": "webhook-signature",
    "hubspot_v3": "X-HubSpot-Signature-v3",
    "sendgrid": "X-Twilio-Email-Event-Webhook-Signature",
    "hmac_sha256": "X-Hub-Signature-256",
}


def signature_of(scheme: str, delivery: Delivery) -> bytes:
    """The signature's bytes in a delivery signed here."""
    value = delivery.headers[SIGNATURE_HEADERS[scheme]]
    if scheme == "stripe":
        return bytes.fromhex(value.split(",v1=")[1].split(",")[0])
    if scheme == "hmac_sha256":
        return bytes.fromhex(value.removeprefix("sha256="))
    return base64.b64decode(value.removeprefix("v1,"))


def with_signature(scheme: str, delivery: Delivery, signature: bytes) -> Delivery:
    """The delivery with its signature header carrying ``signature`` in the scheme's own format."""
    header = SIGNATURE_HEADERS[scheme]
    encoded = base64.b64encode(signature).decode()
    value = {
        "stripe": f"{delivery.headers[header].split(',')[0]},v1={signature.hex()}",
        "standard": f"v1,{encoded}",
        "hubspot_v3": encoded,
        "sendgrid": encoded,
        "hmac_sha256": f"sha256={signature.hex()}",
    }[scheme]
    return replace(delivery, headers=delivery.headers | {header: value})


def _flipped(signature: bytes) -> bytes:
    return signature[:-1] + bytes([signature[-1] ^ 0x01])


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (
            lambda scheme, delivery: with_signature(
                scheme, delivery, _flipped(signature_of(scheme, delivery))
            ),
            SignatureInvalid,
        ),
        (
            lambda scheme, delivery: with_signature(scheme, delivery, signature_of(scheme, delivery)[:-1]),
            SignatureInvalid,
        ),
        (lambda scheme, delivery: with_signature(scheme, delivery, b""), SignatureInvalid),
        (
            lambda scheme, delivery: replace(
                delivery, headers=delivery.headers | {SIGNATURE_HEADERS[scheme]: " "}
            ),
            SignatureMissing,
        ),
        (
            lambda scheme, delivery: replace(
                delivery,
                headers={k: v for k, v in delivery.headers.items() if k != SIGNATURE_HEADERS[scheme]},
            ),
            SignatureMissing,
        ),
    ],
    ids=["wrong", "truncated", "no-signature-in-header", "blank-header", "absent-header"],
)
def test_a_wrong_truncated_or_missing_signature_is_refused_with_401(
    scheme: str,
    change: Callable[[str, Delivery], Delivery],
    refusal: type[WebhookRefused],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = webhooks(scheme, monkeypatch)
    genuine = sign(scheme, current(scheme), BODIES[scheme])
    assert check(settings, with_signature(scheme, genuine, signature_of(scheme, genuine))).event_id
    with pytest.raises(refusal) as refused:
        check(settings, change(scheme, genuine))
    assert refused.value.status == 401


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_body_changed_by_one_byte_is_refused(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = webhooks(scheme, monkeypatch)
    delivery = sign(scheme, current(scheme), BODIES[scheme])
    for position in (0, len(delivery.body) // 2, len(delivery.body) - 1):
        body = bytearray(delivery.body)
        body[position] ^= 0x01
        with pytest.raises(SignatureInvalid):
            check(settings, replace(delivery, body=bytes(body)))


@pytest.mark.parametrize("scheme", TIMED)
@pytest.mark.parametrize("offset", [-301, 301], ids=["stale", "future"])
def test_a_timestamp_beyond_the_tolerance_is_refused_with_400(
    scheme: str, offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = webhooks(scheme, monkeypatch)
    with pytest.raises(TimestampOutOfTolerance) as refused:
        check(settings, sign(scheme, current(scheme), BODIES[scheme], at=NOW + offset))
    assert refused.value.status == 400
    # At the tolerance's edge, either way, it still passes.
    for edge in (-300, 300):
        assert check(settings, sign(scheme, current(scheme), BODIES[scheme], at=NOW + edge)).event_id


@pytest.mark.parametrize("scheme", TIMED)
def test_the_tolerance_is_the_settings(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = webhooks(scheme, monkeypatch, tolerance=30)
    check(settings, sign(scheme, current(scheme), BODIES[scheme], at=NOW - 30))
    with pytest.raises(TimestampOutOfTolerance):
        check(settings, sign(scheme, current(scheme), BODIES[scheme], at=NOW - 31))


@pytest.mark.parametrize("scheme", TIMED)
def test_a_forged_delivery_with_a_stale_timestamp_is_refused_as_unsigned(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signature is checked first: a stranger learns nothing about the receiver's clock."""
    settings = webhooks(scheme, monkeypatch)
    with pytest.raises(SignatureInvalid):
        check(settings, sign(scheme, "not-the-secret", BODIES[scheme], at=NOW - 3600))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_body_that_is_not_json_after_a_valid_signature_is_refused_with_400(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = webhooks(scheme, monkeypatch)
    for body in (b"{not json", b"\xff\xfe\x00", b""):
        with pytest.raises(PayloadInvalid, match="not JSON") as refused:
            check(settings, sign(scheme, current(scheme), body))
        assert refused.value.status == 400


@pytest.mark.parametrize(
    ("scheme", "body", "message"),
    [
        ("stripe", b'{"type": "charge.succeeded"}', "no field 'id'"),
        ("stripe", b'{"id": true, "type": "charge.succeeded"}', "'id' of the body is not text"),
        ("stripe", b'{"id": "' + b"e" * 256 + b'", "type": "x"}', "1 to 255 characters"),
        ("standard", b'{"data": {}}', "no field 'type'"),
        ("stripe", b'[{"id": "evt_1", "type": "x"}, 7]', "event #2 of the body is not a JSON object"),
        ("hubspot_v3", b"[]", "the body is an empty list of events"),
        ("hubspot_v3", b'{"eventId": 1}', "the body has no field 'subscriptionType'"),
        ("hubspot_v3", b'[{"eventId": 1}]', "event #1 of the body has no field 'subscriptionType'"),
        (
            "sendgrid",
            b'[{"sg_event_id": "a", "event": "open"}, {"event": "open"}]',
            "#2 .* no field 'sg_event_id'",
        ),
        ("sendgrid", b'[{"sg_event_id": "a", "event": null}]', "'event' of event #1 of the body is not text"),
    ],
)
def test_an_authentic_body_without_the_event_s_id_or_type_is_refused_naming_the_field(
    scheme: str, body: bytes, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(PayloadInvalid, match=message):
        check(webhooks(scheme, monkeypatch), sign(scheme, current(scheme), body))


def test_hubspot_signs_the_uri_with_its_listed_escapes_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = webhooks("hubspot_v3", monkeypatch)
    received = "https://hooks.example/webhooks/acme?portal=62515&since=2026-01-01T00%3A00%3a00%2C1&q=a%20b"
    signed = "https://hooks.example/webhooks/acme?portal=62515&since=2026-01-01T00:00:00,1&q=a%20b"
    delivery = hubspot_delivery(
        SECRETS["hubspot_v3"], BODIES["hubspot_v3"], NOW, url=received, signed_uri=signed
    )
    assert check(settings, delivery).event_id == "1001"

    undecoded = hubspot_delivery(SECRETS["hubspot_v3"], BODIES["hubspot_v3"], NOW, url=received)
    with pytest.raises(SignatureInvalid):
        check(settings, undecoded)
    with pytest.raises(SignatureInvalid):  # the method is signed too
        check(settings, replace(delivery, method="PUT"))


def test_hmac_sha256_in_base64_without_a_prefix_and_ids_from_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = webhooks(
        "hmac_sha256",
        monkeypatch,
        header="X-Signature",
        encoding="base64",
        event_id="body:data.event.id",
        event_type="header:X-Event-Type",
    )
    body = b'{"data": {"event": {"id": "ev_9"}}}'
    signature = base64.b64encode(_hmac(SECRETS["hmac_sha256"].encode(), body)).decode()
    delivery = Delivery({"X-Signature": signature, "X-Event-Type": "invoice.paid"}, body)
    assert check(settings, delivery) == VerifiedEvent("ev_9", "invoice.paid", json.loads(body), body)

    with pytest.raises(PayloadInvalid, match="X-Event-Type header is missing"):
        check(settings, replace(delivery, headers={"X-Signature": signature}))
    hexadecimal = _hmac(SECRETS["hmac_sha256"].encode(), body).hex()
    with pytest.raises(SignatureInvalid):
        check(settings, replace(delivery, headers=delivery.headers | {"X-Signature": hexadecimal}))


def test_hmac_sha256_refuses_a_signature_without_its_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = webhooks("hmac_sha256", monkeypatch)
    delivery = github_delivery(SECRETS["hmac_sha256"], BODIES["hmac_sha256"], NOW)
    bare = delivery.headers["X-Hub-Signature-256"].removeprefix("sha256=")
    with pytest.raises(SignatureInvalid, match="does not start with 'sha256='"):
        check(settings, replace(delivery, headers=delivery.headers | {"X-Hub-Signature-256": bare}))
    # Header names are matched in any case, as HTTP has them.
    lowered = {name.lower(): value for name, value in delivery.headers.items()}
    assert check(settings, replace(delivery, headers=lowered)).event_id == "72d3162e"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_body_above_the_limit_is_refused_with_413_before_its_signature_is_looked_at(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = webhooks(scheme, monkeypatch, max_body_bytes=64)
    body = b'{"id": "evt_1", "type": "x", "pad": "' + b"p" * 64 + b'"}'
    authentic = sign(scheme, current(scheme), body)
    for delivery in (authentic, Delivery({}, body)):  # signed or not: the size decides first
        with pytest.raises(BodyTooLarge) as refused:
            check(settings, delivery)
        assert refused.value.status == 413


class EndlessBody(io.RawIOBase):
    """A request body that never ends, counting what was read of it."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert size > 0, "an unbounded read of a request body"
        self.served += size
        return b"x" * size


def test_reading_a_body_stops_one_byte_past_the_limit() -> None:
    stream = EndlessBody()
    with pytest.raises(BodyTooLarge):
        read_body(stream, 1024 * 1024)
    assert stream.served == 1024 * 1024 + 1


def test_a_declared_length_above_the_limit_is_refused_without_reading() -> None:
    stream = EndlessBody()
    with pytest.raises(BodyTooLarge):
        read_body(stream, 1024, content_length="1025")
    assert stream.served == 0
    with pytest.raises(PayloadInvalid, match="Content-Length"):
        read_body(stream, 1024, content_length="-5")


def test_a_body_within_the_limit_is_read_whole_and_no_further() -> None:
    assert read_body(io.BytesIO(b"a" * 100), 100) == b"a" * 100
    # With a Content-Length, exactly that much is read: a WSGI input must not be read past it.
    stream = EndlessBody()
    assert read_body(stream, 1024, content_length="10") == b"x" * 10
    assert stream.served == 10


# -- forgeries -------------------------------------------------------------------------------------

FORGERY = settings(
    max_examples=60,
    deadline=None,
    database=None,  # no example database in the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


ATTACKS = ["body", "signature", "truncated signature", "signature text", "signed header", "wrong key"]


@pytest.mark.parametrize("scheme", SCHEMES)
@FORGERY
@given(data=st.data())
def test_random_forged_deliveries_are_never_accepted(
    scheme: str, data: st.DataObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever an attacker changes of a genuine delivery (the body, the signature, a signed header) or
    signs with a key of their own, the delivery is refused as unsigned."""
    settings = webhooks(scheme, monkeypatch, current(scheme), old(scheme))
    body = data.draw(
        st.sampled_from([BODIES[scheme]])
        | st.binary(max_size=200).map(lambda extra: BODIES[scheme] + extra)
        | st.binary(max_size=200),
        label="genuine body",
    )
    genuine = sign(scheme, data.draw(st.sampled_from([current(scheme), old(scheme)])), body, at=NOW - 10)
    attack = data.draw(st.sampled_from(ATTACKS), label="attack")
    if attack == "body":
        forged = replace(genuine, body=data.draw(st.binary(max_size=300).filter(lambda other: other != body)))
    elif attack == "signature":
        real = signature_of(scheme, genuine)
        forged = with_signature(
            scheme, genuine, data.draw(st.binary(max_size=64).filter(lambda s: s != real))
        )
    elif attack == "truncated signature":
        real = signature_of(scheme, genuine)
        forged = with_signature(scheme, genuine, real[: data.draw(st.integers(0, len(real) - 1))])
    elif attack == "signature text":
        printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120)
        forged = replace(genuine, headers=genuine.headers | {SIGNATURE_HEADERS[scheme]: data.draw(printable)})
    elif attack == "signed header" and scheme == "stripe":  # a later t= with the same v1
        t, rest = genuine.headers["Stripe-Signature"].split(",", 1)
        later = int(t.removeprefix("t=")) + data.draw(st.integers(1, 250))
        forged = replace(genuine, headers={"Stripe-Signature": f"t={later},{rest}"})
    elif attack == "signed header" and scheme == "standard":
        other_id = data.draw(
            st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)
        )
        forged = replace(genuine, headers=genuine.headers | {"webhook-id": other_id})
    elif attack == "signed header" and scheme == "sendgrid":
        moment = str(
            int(genuine.headers["X-Twilio-Email-Event-Webhook-Timestamp"]) + data.draw(st.integers(1, 250))
        )
        forged = replace(
            genuine, headers=genuine.headers | {"X-Twilio-Email-Event-Webhook-Timestamp": moment}
        )
    elif attack == "signed header" and scheme == "hubspot_v3":
        moment = str(int(genuine.headers["X-HubSpot-Request-Timestamp"]) + data.draw(st.integers(1, 250_000)))
        forged = replace(genuine, headers=genuine.headers | {"X-HubSpot-Request-Timestamp": moment})
    else:  # a key of the attacker's own (hmac_sha256 signs no header)
        stranger = "whsec_" + base64.b64encode(data.draw(st.binary(min_size=1, max_size=40))).decode()
        forged = sign(scheme, stranger, body)
    if forged == genuine:
        return
    with pytest.raises(SignatureInvalid):
        check(settings, forged)
