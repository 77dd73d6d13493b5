"""The ``hubspot`` adapter: CRM contacts created one at a time, or in batches with each input's fate read
from the answer.

``create_contact`` sends ``POST /crm/v3/objects/contacts`` with ``{"properties", "associations"?}``; HubSpot
answers ``201`` with the contact, whose id is the operation's ``reference`` (the ``objectId`` of the
``contact.creation`` event that follows). A contact's e-mail address is unique in HubSpot, and a create
with one that exists is answered ``409`` naming it only in its message (``Contact already exists. Existing
ID: <id>``). HubSpot takes no idempotency key, so after a call whose answer was lost (the pipeline sends
again after a timeout) that conflict answers our own create, and the adapter cannot tell it from a contact
made elsewhere. It reads the existing contact instead: if the contact holds every property value sent, what
the operation asked for exists and it succeeds (``existing: true``, the contact's id as its reference); a
contact holding other values was not made by it, and the conflict is a rejection naming the contact and
the properties that differ, never their values. A contact without an e-mail address may be created
twice.
See https://developers.hubspot.com/docs/api/crm/contacts.

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

import re
from collections.abc import Sequence, Set
from typing import Any, Literal

import requests
from pydantic import BaseModel, ConfigDict, Field

from integrations.adapters.answers import answer_mismatch, response_body
from integrations.adapters.base import Adapter, HttpCall, OperationSpec, Reply, batch_operation, operation
from integrations.batch import BatchItem, ItemResult
from integrations.errors import ContractViolation, OperationError, ProviderRejected, TransientError
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.webhooks.events import Event, EventLink
from integrations.webhooks.store import Relation

CONTACTS = "/crm/v3/objects/contacts"
MAX_INPUTS = 100
# How HubSpot names the contact that holds an e-mail address already, in a create's 409 answer.
EXISTING_ID = re.compile(r"Existing ID: (\d+)")
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


class CreateContact(BaseModel):
    """The payload of ``create_contact``: HubSpot's ``SimplePublicObjectInputForCreate``. Property values are
    strings, as HubSpot's API takes them."""

    model_config = ConfigDict(extra="forbid")

    properties: dict[str, str] = Field(min_length=1)
    associations: list[Association] | None = None


class Contact(BaseModel):
    """The answer of ``create_contact``: the contact as HubSpot returns it (``SimplePublicObject``; other
    fields are ignored). ``existing``: HubSpot had the contact already, holding every value sent, after a
    call of this operation whose answer was lost."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    properties: dict[str, str | None]
    createdAt: str
    updatedAt: str
    archived: bool = False
    existing: bool = False


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

    @operation(payload=CreateContact, response=Contact)
    def create_contact(self, payload: CreateContact) -> HttpCall:
        return HttpCall("POST", CONTACTS, json=payload.model_dump(mode="json", exclude_none=True))

    @batch_operation(item=ContactInput, max_items=MAX_INPUTS, key="objectWriteTraceId")
    def batch_create_contacts(self, items: Sequence[BatchItem]) -> HttpCall:
        inputs = []
        for item in items:
            assert isinstance(item.value, ContactInput)
            body = item.value.model_dump(mode="json", exclude_none=True)
            inputs.append(body | {"objectWriteTraceId": item.key})
        return HttpCall("POST", f"{CONTACTS}/batch/create", json={"inputs": inputs})

    def call(self, operation: str, payload: BaseModel, *, idempotency_key: str, request_id: str) -> Reply:
        """One attempt; for ``create_contact``, a conflict naming an existing contact is read as described
        in the module's docstring."""
        try:
            return super().call(operation, payload, idempotency_key=idempotency_key, request_id=request_id)
        except ProviderRejected as conflict:
            existing = _existing_contact(conflict) if operation == "create_contact" else None
            if existing is None:
                raise
            assert isinstance(payload, CreateContact)
            return self._made_already(operation, payload, existing, conflict, idempotency_key, request_id)

    def _made_already(
        self,
        operation: str,
        payload: CreateContact,
        existing: str,
        conflict: ProviderRejected,
        idempotency_key: str,
        request_id: str,
    ) -> Reply:
        """The existing contact as this operation's success if it holds every property value sent; else
        the conflict, naming the properties that differ."""
        spec = self.spec(operation)
        assert isinstance(spec, OperationSpec)
        names = sorted(payload.properties)
        read = HttpCall("GET", f"{CONTACTS}/{existing}", params={"properties": ",".join(names)})
        where = self.where(operation)
        try:
            response = self._exchange(operation, read, idempotency_key, request_id)
            reply = self._read(operation, response, lambda: Reply(self.parse_response(spec, response), {}))
        except OperationError as exc:
            detail = exc.message.removeprefix(f"{where}: ")
            exc.message = f"{where}: reading contact {existing}, named by a conflict: {detail}"
            raise
        found = reply.model
        assert isinstance(found, Contact)
        differ = [name for name in names if not _same_value(name, payload.properties[name], found.properties)]
        if differ:
            conflict.message += (
                f"; contact {existing} holds other values of {', '.join(differ)}, so this operation did not "
                "make it: update that contact, or create one with another e-mail address under a new "
                "idempotency key"
            )
            raise conflict
        return Reply(found.model_copy(update={"existing": True}), reply.headers)

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
                "(crm.objects.contacts.write; create_contact reads a conflicting contact with "
                "crm.objects.contacts.read)"
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


def _existing_contact(error: ProviderRejected) -> str | None:
    """The id of the contact a create's ``409`` names as holding the e-mail address already."""
    body = error.body if isinstance(error.body, dict) else {}
    message = body.get("message")
    found = EXISTING_ID.search(message) if error.status_code == 409 and isinstance(message, str) else None
    return found.group(1) if found else None


def _same_value(name: str, sent: str, held: dict[str, str | None]) -> bool:
    """Whether the contact holds the value sent: e-mail addresses compare without case, as HubSpot matches
    them, and an empty string sent leaves a property unset."""
    value = held.get(name) or ""
    return value.lower() == sent.lower() if name == "email" else value == sent


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
