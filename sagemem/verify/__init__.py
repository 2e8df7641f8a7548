"""Checkers for recorded operation histories of sagemem's versioned key-value store.

`history` records what agents did (operations with invocation and completion times and
outcomes) and loads the JSON-lines files agent processes write; `linearizability` decides
whether each key's history is linearizable (the `strict` mode's promise); `staleness`
measures stale reads and the session guarantees of the `coherent` mode. Nothing here touches
a store or imports a driver.
"""

from __future__ import annotations

from sagemem.verify.history import (
    CasConflict,
    CommitRecord,
    Deleted,
    HistoryFormatError,
    HistoryRecorder,
    IncompleteOperationError,
    Operation,
    OpKind,
    Outcome,
    PendingOperation,
    ReadHit,
    ReadMiss,
    Unknown,
    Written,
    load_commits,
    load_history,
)
from sagemem.verify.linearizability import (
    KeyState,
    LinearizabilityResult,
    SearchBoundExceeded,
    VersionRule,
    check_history,
    check_linearizable,
)
from sagemem.verify.staleness import (
    SessionGuarantee,
    SessionViolation,
    StalenessReport,
    StaleRead,
    UncoveredStaleRead,
    analyze_staleness,
    check_invalidation_coverage,
)

__all__ = [
    "CasConflict",
    "CommitRecord",
    "Deleted",
    "HistoryFormatError",
    "HistoryRecorder",
    "IncompleteOperationError",
    "KeyState",
    "LinearizabilityResult",
    "OpKind",
    "Operation",
    "Outcome",
    "PendingOperation",
    "ReadHit",
    "ReadMiss",
    "SearchBoundExceeded",
    "SessionGuarantee",
    "SessionViolation",
    "StaleRead",
    "StalenessReport",
    "UncoveredStaleRead",
    "Unknown",
    "VersionRule",
    "Written",
    "analyze_staleness",
    "check_history",
    "check_invalidation_coverage",
    "check_linearizable",
    "load_commits",
    "load_history",
]
