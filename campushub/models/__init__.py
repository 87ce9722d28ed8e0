"""The unified data layer: SQLAlchemy models of raw landing, unified entities, quarantine,
sync state, provenance and conflicts. The schema is made and changed by Alembic migrations
(`migrations/`), never by `create_all`."""

from campushub.models.base import Base
from campushub.models.landing import QuarantinedRecord, RawRecord, SyncRun, SyncState
from campushub.models.service import (
    AuditEntry,
    CheckResult,
    CorrectionRequest,
    Notification,
    RowCountAcceptance,
    WorkOrder,
)
from campushub.models.unified import (
    CardAccount,
    CardTransaction,
    ClassGroup,
    Conflict,
    Course,
    FeeBill,
    FieldProvenance,
    Grade,
    Major,
    OrgUnit,
    Payment,
    Person,
    Staff,
    Student,
)

__all__ = [
    "AuditEntry",
    "Base",
    "CardAccount",
    "CardTransaction",
    "CheckResult",
    "ClassGroup",
    "Conflict",
    "CorrectionRequest",
    "Course",
    "FeeBill",
    "FieldProvenance",
    "Grade",
    "Major",
    "Notification",
    "OrgUnit",
    "Payment",
    "Person",
    "QuarantinedRecord",
    "RawRecord",
    "RowCountAcceptance",
    "Staff",
    "Student",
    "SyncRun",
    "SyncState",
    "WorkOrder",
]
