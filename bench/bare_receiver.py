"""The receiver benchmark's baseline: a bare endpoint of the same framework and server (FastAPI on uvicorn)
that takes the body and writes the same row, without reading a providers file, checking a signature or
counting. ``python -m uvicorn bench.bare_receiver:app`` with ``DATABASE_URL``."""

from __future__ import annotations

import json
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from integrations.webhooks.store import EventStore

store = EventStore.connect(os.environ["DATABASE_URL"])
app = FastAPI(docs_url=None, redoc_url=None)


@app.post("/webhooks/{provider}", status_code=202)
async def receive(provider: str, request: Request) -> JSONResponse:
    body = await request.body()
    event = json.loads(body)
    record, _new = await run_in_threadpool(store.store, provider, event["id"], event["type"], body)
    return JSONResponse({"id": record.id}, status_code=202)
