"""The ``hubspot`` adapter: CRM contacts created in batches, with each input's fate read from the answer.

``batch_create_contacts`` sends ``POST /crm/v3/objects/contacts/batch/create`` with at most 100 inputs per
call. Every input carries an ``objectWriteTraceId`` (the caller's, or ``<idempotency key>#<position>``),
which turns on HubSpot's multi-status answers: a ``207`` names the failed inputs by their trace id in each
error's ``context``; a ``201`` without errors means every input was created. Error categories that say the
input itself is wrong fail the item for good; any other category is retried.
See https://developers.hubspot.com/docs/api-reference/error-handling (multi-status errors).

HubSpot takes no idempotency key on batch create: an item whose call's answer is lost (a timeout, a cut
connection) is sent again. A contact's e-mail address is unique in HubSpot, so such a repeat is answered
with a conflict naming the existing contact, which after an unanswered call is read as that call's success
(``{"id": <existing id>, "existing": true}``); a contact without an e-mail address may be created twice.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field

from integrations.adapters.answers import answer_mismatch, response_body
from integrations.adapters.base import Adapter, HttpCall, batch_operation
from integrations.batch import BatchItem, ItemResult
from integrations.errors import ContractViolation, OperationError, ProviderRejected, TransientError
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.webhooks.events import Event, EventLink
from integrations.webhooks.store import Relation

MAX_INPUTS = 100
# Categories that say the input itself is wrong: sending it again cannot help.
PERMANENT_CATEGORIES = frozenset({"VALIDATION_ERROR", "CONFLICT", "OBJECT_ALREADY_EXISTS", "INVALID_EMAIL"})
# Categories that say the record exists already (``context.existingId`` names it).
EXISTS_CATEGORIES = frozenset({"CONFLICT", "OBJECT_ALREADY_EXISTS"})


class AssociationType(BaseModel):
    model_config = ConfigDict(extra="forbid")

    associationCategory: Literal["HUBSPOT_DEFINED", "USER_DEFINED", "INTEGRATOR_DEFINED"]
    associationTypeId: int


class AssociationTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str


class Association(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: AssociationTarget
    types: list[AssociationType] = Field(min_length=1)


class ContactInput(BaseModel):
    """One item of ``batch_create_contacts``: a HubSpot contact input. Property values are strings, as
    HubSpot's API takes them (numbers and dates included)."""

    model_config = ConfigDict(extra="forbid")

    properties: dict[str, str] = Field(min_length=1)
    associations: list[Association] | None = None
    objectWriteTraceId: str | None = Field(default=None, min_length=1, max_length=255)


class CreatedObject(BaseModel):
    """A created record as HubSpot returns it (``SimplePublicObject``); other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str
    properties: dict[str, str | None]
    createdAt: str
    updatedAt: str
    archived: bool = False
    objectWriteTraceId: str | None = None


class BatchError(BaseModel):
    """One error of a multi-status answer (``StandardError``)."""

    model_config = ConfigDict(extra="ignore")

    status: str
    category: str
    message: str
    context: dict[str, list[str]] = Field(default_factory=dict)
    subCategory: Any = None


class BatchCreateResponse(BaseModel):
    """``BatchResponseSimplePublicObject`` (201) or ``...WithErrors`` (207)."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["PENDING", "PROCESSING", "CANCELED", "COMPLETE"]
    results: list[CreatedObject]
    numErrors: int = 0
    errors: list[BatchError] = Field(default_factory=list)
    startedAt: str
    completedAt: str


class HubSpotAdapter(Adapter):
    """HubSpot's CRM API (``base_url = "https://api.hubapi.com"``), with a private app's access token or
    OAuth2 in ``[providers.<p>.auth]``."""

    name = "hubspot"

    @batch_operation(item=ContactInput, max_items=MAX_INPUTS, key="objectWriteTraceId")
    def batch_create_contacts(self, items: Sequence[BatchItem]) -> HttpCall:
        inputs = []
        for item in items:
            assert isinstance(item.value, ContactInput)
            body = item.value.model_dump(mode="json", exclude_none=True)
            inputs.append(body | {"objectWriteTraceId": item.key})
        return HttpCall("POST", "/crm/v3/objects/contacts/batch/create", json={"inputs": inputs})

    def reference(self, operation: str, response: Any) -> str | None:
        """A created contact's id (``SimplePublicObject.id``). Only single operations are given a
        reference; ``batch_create_contacts`` makes many contacts, and keeps each id in its item."""
        found = response.get("id") if isinstance(response, dict) else None
        return found if isinstance(found, str) and 0 < len(found) <= MAX_KEY_LENGTH else None

    def event_link(self, event: Event) -> EventLink | None:
        """``contact.creation`` confirms the operation that created the contact, found by the contact's
        id (``objectId``). A webhook body is a list of events; the receiver stores it as one event named
        by the first (its ``eventId``), so the first is the one read here. A body that is a single event
        object is read as well."""
        payload = event.payload
        first = payload[0] if isinstance(payload, list) and payload else payload
        if not isinstance(first, dict) or first.get("subscriptionType") != "contact.creation":
            return None
        contact = first.get("objectId")
        if isinstance(contact, bool) or not isinstance(contact, int | str) or contact == "":
            return None
        reference = str(contact)
        if len(reference) > MAX_KEY_LENGTH:
            return None
        return EventLink(Relation.CONFIRMS, reference=reference)

    def classify(self, operation: str, response: requests.Response) -> OperationError | None:
        """The base classification with HubSpot's words (its ``category`` and ``message`` name the property
        or limit at fault) and, for a 401/403, the token and scope to check."""
        error = super().classify(operation, response)
        if error is None:
            return None
        body = error.body if isinstance(error.body, dict) else {}
        detail = body.get("message")
        category = body.get("category") or body.get("errorType")
        if detail:  # HubSpot's own words name the property or the limit that was hit
            error.message += f": {category + ': ' if category else ''}{detail}"
        if response.status_code in (401, 403):
            error.message += (
                f"; check the access token of [providers.{self.provider.name}.auth] and its scopes "
                "(crm.objects.contacts.write)"
            )
        return error

    def item_results(
        self, operation: str, items: Sequence[BatchItem], response: requests.Response
    ) -> list[ItemResult]:
        where = self.where(operation)
        try:
            answer = BatchCreateResponse.model_validate(response.json())
        except ValueError as exc:
            raise answer_mismatch(where, BatchCreateResponse, exc, response) from None
        sent = {item.key: item for item in items}
        failed: dict[str, OperationError] = {}
        existing: dict[str, str] = {}  # sent again after a lost answer, and found created: its id
        for error in answer.errors:
            traces = [t for t in error.context.get("objectWriteTraceId", []) if t in sent]
            if not traces:
                raise ContractViolation(
                    f"{where}: an error in the answer names no input that was sent (has the API changed?): "
                    f"{error.category}: {error.message}",
                    status_code=response.status_code,
                    body=response_body(response),
                )
            for trace in traces:
                existing_id = error.context.get("existingId", [None])[0]
                if error.category in EXISTS_CATEGORIES and existing_id and sent[trace].sent_unanswered:
                    existing[trace] = existing_id
                else:
                    failed[trace] = _item_error(where, trace, error)
        created = _match_created(answer.results, items, failed.keys() | existing.keys())
        if len(answer.results) != len(items) - len(failed) - len(existing) or created is None:
            raise ContractViolation(
                f"{where}: {len(answer.results)} created and {len(failed)} failed inputs do not add up to the "
                f"{len(items)} sent (has the API changed?)",
                status_code=response.status_code,
                body=response_body(response),
            )
        created |= {key: {"id": contact_id, "existing": True} for key, contact_id in existing.items()}
        return [
            ItemResult(item.key, failed[item.key])
            if item.key in failed
            else ItemResult(item.key, response=created.get(item.key))
            for item in items
        ]


def _item_error(where: str, trace: str, error: BatchError) -> OperationError:
    message = f"{where}: item {trace!r}: {error.category}: {error.message}"
    body = error.model_dump(mode="json", exclude_none=True)
    if error.category in PERMANENT_CATEGORIES:
        return ProviderRejected(message, body=body)
    return TransientError(message, body=body)


def _match_created(
    results: list[CreatedObject], items: Sequence[BatchItem], not_created: Set[str]
) -> dict[str, dict[str, Any]] | None:
    """Each created record by the key of its input: by ``objectWriteTraceId`` when HubSpot returns it,
    else by e-mail address (unique among contacts), else by elimination when one input was created.
    Records that cannot be matched leave the item's response empty; ``None`` if one matches no input
    that could have been created."""
    created_keys = [item.key for item in items if item.key not in not_created]
    by_email: dict[str, str] = {}
    for item in items:
        if item.key in not_created:
            continue
        assert isinstance(item.value, ContactInput)
        email = item.value.properties.get("email")
        if email:
            by_email[email.lower()] = item.key
    created: dict[str, dict[str, Any]] = {}
    for record in results:
        key = record.objectWriteTraceId or by_email.get((record.properties.get("email") or "").lower())
        if key is None and len(created_keys) == 1:
            key = created_keys[0]
        if key is None:
            continue
        if key not in created_keys:
            return None
        created[key] = record.model_dump(mode="json", exclude={"objectWriteTraceId"})
    return created
