"""HubSpot's batch create of contacts, as https://developers.hubspot.com/docs/api-reference/error-handling
(multi-status errors) and the CRM objects reference describe it: ``POST /crm/v3/objects/contacts/batch/create``
with ``{"inputs": [{"properties", "associations"?, "objectWriteTraceId"?}]}``, at most 100 inputs; ``201``
with every created record, or ``207`` with ``numErrors`` and ``errors`` whose ``context.objectWriteTraceId``
names the failed inputs. Contacts are unique by e-mail address (a second create is a ``CONFLICT``)."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from tests.fakes.server import Answer, FakeAPI, Received

PATH = "/crm/v3/objects/contacts/batch/create"
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
                contact_id = str(next(self.ids))
                if email is not None:
                    self.contacts[email.lower()] = contact_id
                self.created[trace] += 1
                record: dict[str, Any] = {
                    "id": contact_id,
                    "properties": entry["properties"]
                    | {"createdate": TIMESTAMP, "hs_object_id": contact_id, "lastmodifieddate": TIMESTAMP},
                    "createdAt": TIMESTAMP,
                    "updatedAt": TIMESTAMP,
                    "archived": False,
                }
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
