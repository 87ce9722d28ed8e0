"""The audit trail of one request: every read of personal data, and every refused attempt.

Resolvers note what they release (`read`) or refuse (`denied`) as they go; the app writes the
notes as `audit_log` rows — one per subject, entity, purpose and outcome, listing the fields —
in one statement *before* the answer is sent. If that write fails, the answer is withheld:
no read without its audit row.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Connection, insert

from campushub.models.service import AuditEntry

ALLOWED, DENIED = "allowed", "denied"
# 10 bound values a row: well under SQLite's and PostgreSQL's limits on one statement's parameters.
ROWS_PER_STATEMENT = 1_000
# Nothing is read back: without `inline()` PostgreSQL would return each new row's id.
_INSERT = insert(AuditEntry).inline()


@dataclass
class AuditTrail:
    request_id: str
    actor: str
    actor_role: str
    # (subject person id, entity, purpose, outcome, detail) -> fields, in the order first read
    _entries: dict[tuple[int | None, str, str, str, str | None], dict[str, None]] = field(
        default_factory=lambda: defaultdict(dict)
    )

    def read(self, subject: int | None, entity: str, fields: list[str] | tuple[str, ...], purpose: str) -> None:
        self._entries[subject, entity, purpose, ALLOWED, None].update(dict.fromkeys(fields))

    def denied(
        self, subject: int | None, entity: str, fields: list[str] | tuple[str, ...], purpose: str, why: str
    ) -> None:
        self._entries[subject, entity, purpose, DENIED, why[:256]].update(dict.fromkeys(fields))

    def __len__(self) -> int:
        return len(self._entries)

    def rows(self, at: dt.datetime) -> list[dict]:
        return [
            {
                "at": at,
                "request_id": self.request_id,
                "actor": self.actor,
                "actor_role": self.actor_role,
                "purpose": purpose,
                "subject_person_id": subject,
                "entity": entity,
                "fields": list(fields),
                "outcome": outcome,
                "detail": detail,
            }
            for (subject, entity, purpose, outcome, detail), fields in self._entries.items()
        ]

    def write(self, connection: Connection) -> None:
        """The rows as one multi-row INSERT (per chunk): a single statement is atomic even on an
        autocommit connection, and on SQLite it holds the write lock only while SQLite itself
        runs — not across Python code waiting for the GIL, as BEGIN … COMMIT in separate calls
        would, stalling the other API workers' audit writes."""
        rows = self.rows(dt.datetime.now(dt.UTC))
        if len(rows) == 1:  # the common case (a form, one person): a statement built once
            connection.execute(_INSERT, rows[0])
            return
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            connection.execute(_INSERT.values(rows[start : start + ROWS_PER_STATEMENT]))
