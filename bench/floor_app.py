"""The floor: what the promises cost at the least. The bare task's HTTP call, plus what every attempt of
ours must pay for them and nothing else: one statement that starts or claims the operation's row and one
that ends it, on the database driver with no layer above it, and two Redis script calls (admission before
the call, record after it) that do one increment each. No validation, no breaker or throttle logic, no
history: no implementation that keeps an attempt durable and guarded can cost less on the same machine.
Configured as carefully as the other baselines (JSON, late acks, prefetch 1)."""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

import redis
import requests
from sqlalchemy import Column, Integer, MetaData, String, Table, Text

from bench.careful import REDIS_URL, careful_app
from bench.handrolled_app import engine_for

QUEUE = "bench.floor"
TASK = "bench.floor_call"

app = careful_app("bench-floor", QUEUE)

metadata = MetaData()
operations = Table(
    "floor_operations",
    metadata,
    Column("idempotency_key", String(255), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("version", Integer, nullable=False),
    Column("response", Text),
)

# One increment each: the least a script that keeps shared state can do.
ADMIT = "return redis.call('HINCRBY', KEYS[1], 'admitted', 1)"
RECORD = "return redis.call('HINCRBY', KEYS[1], 'recorded', 1)"


@cache
def connection() -> tuple[Any, str]:
    """This process's driver connection, committing every statement, and its parameter marker. Made in
    the worker process: connections must not cross the prefork fork."""
    engine = engine_for(os.environ["DATABASE_URL"])
    driver = engine.raw_connection().driver_connection
    assert driver is not None
    if engine.dialect.name == "sqlite":
        driver.isolation_level = None
        return driver, "?"
    driver.autocommit = True
    return driver, "%s"


@cache
def session() -> requests.Session:
    return requests.Session()


@cache
def scripts() -> tuple[Any, Any]:
    client = redis.Redis.from_url(REDIS_URL)
    return client.register_script(ADMIT), client.register_script(RECORD)


@app.task(name=TASK)
def floor_call(url: str, key: str) -> dict[str, Any]:
    driver, mark = connection()
    admit, record = scripts()
    cursor = driver.cursor()
    cursor.execute(
        f"INSERT INTO floor_operations VALUES ({mark}, 'running', 1, 1, NULL) "
        "ON CONFLICT (idempotency_key) DO UPDATE SET attempts = floor_operations.attempts + 1, "
        "version = floor_operations.version + 1 WHERE floor_operations.status = 'queued' RETURNING *",
        (key,),
    )
    row = cursor.fetchone()
    if row is None:  # the key is another task's, or ended: nothing to do (never so in the benchmarks)
        cursor.close()
        return {"status": "taken"}
    _, _, attempts, version, _ = row
    admit(keys=["{floor}:guards"])
    response = session().post(url, headers={"Idempotency-Key": key}, timeout=10)
    answer = {"status_code": response.status_code, "body": response.json()}
    record(keys=["{floor}:guards"])
    cursor.execute(
        f"UPDATE floor_operations SET status = 'succeeded', version = {mark}, response = {mark} "
        f"WHERE idempotency_key = {mark} AND version = {mark}",
        (version + 1, json.dumps(answer), key, version),
    )
    cursor.close()
    return {"status": "succeeded", "attempts": attempts, "response": answer}
