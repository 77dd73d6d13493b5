"""One stand-in for the broker, where the broker itself is not what a test is about: a publisher that
keeps the records it is given and answers with a task id."""

from __future__ import annotations

from integrations.ledger.records import OperationRecord


class Published(list[OperationRecord]):
    """``publish(record) -> task id``: ``task_id`` when given, else the record's own."""

    def __init__(self, task_id: str | None = None) -> None:
        super().__init__()
        self.task_id = task_id

    def __call__(self, record: OperationRecord) -> str:
        self.append(record)
        return self.task_id or record.task_id or "new-task"

    def keys(self) -> list[str | None]:
        return [record.idempotency_key for record in self]
