"""An adapter for the (fictional) Notes API: one class, its request and response models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from integrations.adapters import Adapter, HttpCall, operation


class CreateNote(BaseModel):
    """The payload of ``integrations.<provider>.create_note``."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    body: str = ""
    tags: list[str] = []


class Note(BaseModel):
    """What the Notes API answers; fields it adds later are ignored, a missing ``id`` is a contract violation."""

    id: str


class NotesAdapter(Adapter):
    name = "notes"

    @operation(payload=CreateNote, response=Note)
    def create_note(self, payload: CreateNote) -> HttpCall:
        return HttpCall(method="POST", path="/v1/notes", json=payload.model_dump())
