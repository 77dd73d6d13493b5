"""HubSpot's contacts API, as https://developers.hubspot.com/docs/api/crm/contacts, the error-handling guide
(multi-status errors) and the CRM objects reference describe it:

- ``POST /crm/v3/objects/contacts`` with ``{"properties", "associations"?}``: ``201`` with the contact; ``409``
  ``CONFLICT`` naming the existing contact in its message when the e-mail address is taken; ``400``
  ``VALIDATION_ERROR`` for an address that is not one;
- ``GET /crm/v3/objects/contacts/{id}?properties=a,b``: the contact with the properties asked for (``null``
  when unset) and those HubSpot always returns; ``404`` for an unknown id;
- ``POST /crm/v3/objects/contacts/batch/create`` with ``{"inputs": [{"properties", "associations"?,
  "objectWriteTraceId"?}]}``, at most 100 inputs: ``201`` with every created record, or ``207`` with
  ``numErrors`` and ``errors`` whose ``context.objectWriteTraceId`` names the failed inputs.

Contacts are unique by e-mail address (a second create is a ``CONFLICT``)."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from tests.fakes.server import Answer, FakeAPI, Received

CONTACTS = "/crm/v3/objects/contacts"
PATH = f"{CONTACTS}/batch/create"
# Returned with every contact, whichever properties are asked for.
DEFAULT_PROPERTIES = ("createdate", "hs_object_id", "lastmodifieddate")
TIMESTAMP = "2026-11-21T10:00:00.000Z"


def error(category: str, message: str, trace: str, **context: list[str]) -> dict[str, Any]:
    return {
        "status": "error",
        "category": category,
        "message": message,
        "context": {"objectWriteTraceId": [trace], **context},
    }


class FakeHubSpot(FakeAPI):
    def __init__(self, token: str = "pat-test-token") -> None:
        super().__init__()
        self.token = token
        self.ids = itertools.count(1001)
        self.contacts: dict[str, str] = {}  # e-mail -> id
        self.records: dict[str, dict[str, Any]] = {}  # id -> the contact as HubSpot returns it
        self.sent: Counter[str] = Counter()  # objectWriteTraceId -> times sent
        self.created: Counter[str] = Counter()  # objectWriteTraceId -> times created
        self.resent_after_success: Counter[str] = Counter()  # inputs sent again once created
        self.transient: dict[str, int] = {}  # objectWriteTraceId -> how many more times it fails (retryable)
        self.echo_trace_ids = False  # the documented example's results carry no objectWriteTraceId
        self.lose_answers = 0  # this many calls are carried out and their answers lost

    def answer(self, request: Received) -> Answer:
        if request.header("authorization") != f"Bearer {self.token}":
            return Answer(
                401,
                {
                    "status": "error",
                    "message": "Authentication credentials not found.",
                    "category": "INVALID_AUTHENTICATION",
                    "correlationId": "4a8c6f0e-0d5c-4c27-9a4e-1f3e3e0f9a11",
                },
            )
        if request.method == "POST" and request.path == CONTACTS:
            return self.create_one(request.json())
        if request.method == "GET" and request.path.startswith(f"{CONTACTS}/"):
            return self.read_one(
                request.path.removeprefix(f"{CONTACTS}/"), request.query.get("properties", "")
            )
        if request.method != "POST" or request.path != PATH:
            return Answer(404, {"status": "error", "message": "Not found", "category": "OBJECT_NOT_FOUND"})
        inputs = request.json()["inputs"]
        if len(inputs) > 100:
            return Answer(
                400,
                {
                    "status": "error",
                    "message": "Too many inputs: at most 100 are allowed",
                    "category": "VALIDATION_ERROR",
                    "correlationId": "5b9d7a1f-1e6d-4d38-8b5f-2a4f4f1a0b22",
                },
            )
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for entry in inputs:
            trace = entry.get("objectWriteTraceId")
            self.sent[trace] += 1
            if self.created[trace]:
                self.resent_after_success[trace] += 1
            email = entry["properties"].get("email")
            if self.transient.get(trace, 0) > 0:
                self.transient[trace] -= 1
                errors.append(error("RATE_LIMITS", "Too many writes to this record, try again later", trace))
            elif email is not None and "@" not in email:
                errors.append(error("INVALID_EMAIL", f"Email address {email} is invalid", trace))
            elif email is not None and email.lower() in self.contacts:
                existing = self.contacts[email.lower()]
                errors.append(
                    error(
                        "CONFLICT",
                        f"Contact already exists. Existing ID: {existing}",
                        trace,
                        existingId=[existing],
                    )
                )
            else:
                self.created[trace] += 1
                record = self.make(entry["properties"])
                if self.echo_trace_ids:
                    record["objectWriteTraceId"] = trace
                results.append(record)
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": TIMESTAMP,
            "completedAt": TIMESTAMP,
        }
        lost = self.lose_answers > 0
        self.lose_answers -= lost
        if errors:
            return Answer(207, body | {"numErrors": len(errors), "errors": errors}, lost=lost)
        return Answer(201, body, lost=lost)

    def make(self, properties: dict[str, str]) -> dict[str, Any]:
        """A new contact, kept, as HubSpot returns it."""
        contact_id = str(next(self.ids))
        email = properties.get("email")
        if email is not None:
            self.contacts[email.lower()] = contact_id
        record: dict[str, Any] = {
            "id": contact_id,
            "properties": properties
            | {"createdate": TIMESTAMP, "hs_object_id": contact_id, "lastmodifieddate": TIMESTAMP},
            "createdAt": TIMESTAMP,
            "updatedAt": TIMESTAMP,
            "archived": False,
        }
        self.records[contact_id] = record
        return dict(record)

    def create_one(self, body: dict[str, Any]) -> Answer:
        email = body["properties"].get("email")
        lost = self.lose_answers > 0
        self.lose_answers -= lost
        if email is not None and "@" not in email:
            problem = f'[{{"isValid":false,"message":"Email address {email} is invalid","error":"INVALID_EMAIL","name":"email"}}]'
            return Answer(
                400,
                {
                    "status": "error",
                    "message": f"Property values were not valid: {problem}",
                    "correlationId": "7c1e9b3a-2f7e-4e49-9c60-3b5a5a2b1c33",
                    "category": "VALIDATION_ERROR",
                },
                lost=lost,
            )
        if email is not None and email.lower() in self.contacts:
            return Answer(
                409,
                {
                    "status": "error",
                    "message": f"Contact already exists. Existing ID: {self.contacts[email.lower()]}",
                    "correlationId": "8d2fac4b-3a8f-4f5a-8d71-4c6b6b3c2d44",
                    "category": "CONFLICT",
                },
                lost=lost,
            )
        return Answer(201, self.make(body["properties"]), lost=lost)

    def read_one(self, contact_id: str, properties: str) -> Answer:
        record = self.records.get(contact_id)
        if record is None:
            return Answer(
                404, {"status": "error", "message": "resource not found", "category": "OBJECT_NOT_FOUND"}
            )
        names = [name for name in properties.split(",") if name] + list(DEFAULT_PROPERTIES)
        return Answer(200, record | {"properties": {name: record["properties"].get(name) for name in names}})
