"""Recorded operation histories of a versioned key-value store, for the history checkers.

An `Operation` is one call an agent made on one key: what it asked for (kind, value, expected
version), when it was invoked and when it completed (`time.monotonic_ns()`, which on Linux is
the system-wide CLOCK_MONOTONIC, so times recorded by different processes on one machine are
comparable), and what it observed (`Outcome`). An operation whose body raised or was cancelled
has an `Unknown` outcome: it may have taken effect at any time after its invocation, or never.

`HistoryRecorder` records the operations of one agent; with a `path` it streams two JSON lines
per operation (one at invocation, one at completion) and flushes each, so the history of an
agent process killed with SIGKILL still holds its in-flight operations (loaded as `Unknown`).
`load_history()` merges such files. This module only records and parses: it never judges a
history (see `sagemem.verify.linearizability` and `sagemem.verify.staleness`).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from sagemem.errors import ClosedResourceError, SageMemError, VersionConflict
from sagemem.values import JSONValue

__all__ = [
    "CasConflict",
    "CommitRecord",
    "Deleted",
    "HistoryFormatError",
    "HistoryRecorder",
    "IncompleteOperationError",
    "OpKind",
    "Operation",
    "Outcome",
    "PendingOperation",
    "ReadHit",
    "ReadMiss",
    "Unknown",
    "Written",
    "load_commits",
    "load_history",
    "outcome_from_dict",
    "outcome_to_dict",
]


class HistoryFormatError(SageMemError, ValueError):
    """A history record (a dict or a JSON line) is malformed or contradicts another record."""


class IncompleteOperationError(SageMemError, RuntimeError):
    """A recorded operation's body finished without calling `complete()` (a recorder misuse)."""


class OpKind(enum.StrEnum):
    """What an operation asked the store to do."""

    READ = "read"
    WRITE = "write"
    CAS = "cas"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class ReadHit:
    """A read found the key live with `value` at `version`."""

    value: JSONValue
    version: int


@dataclass(frozen=True, slots=True)
class ReadMiss:
    """A read found the key absent (never written, or deleted)."""


@dataclass(frozen=True, slots=True)
class Written:
    """A write, or a compare-and-swap that succeeded, created `version`."""

    version: int


@dataclass(frozen=True, slots=True)
class CasConflict:
    """A compare-and-swap found `actual` (None: absent) instead of the expected version."""

    actual: int | None


@dataclass(frozen=True, slots=True)
class Deleted:
    """A delete left a tombstone at `version`, or found nothing to delete (`version` None)."""

    version: int | None


@dataclass(frozen=True, slots=True)
class Unknown:
    """The operation crashed, timed out or was cancelled: it may or may not have taken effect."""

    reason: str


type Outcome = ReadHit | ReadMiss | Written | CasConflict | Deleted | Unknown

_OUTCOMES_BY_KIND: Final[Mapping[OpKind, tuple[type, ...]]] = {
    OpKind.READ: (ReadHit, ReadMiss, Unknown),
    OpKind.WRITE: (Written, Unknown),
    OpKind.CAS: (Written, CasConflict, Unknown),
    OpKind.DELETE: (Deleted, Unknown),
}


def _check_version(version: object, what: str) -> int:
    if type(version) is not int or version < 1:
        raise HistoryFormatError(f"{what} must be an int >= 1, got {version!r}")
    return version


def _check_optional_version(version: object, what: str) -> int | None:
    return None if version is None else _check_version(version, what)


def outcome_to_dict(outcome: Outcome) -> dict[str, JSONValue]:
    """The JSON form of `outcome`: a dict with a `"type"` tag."""
    match outcome:
        case ReadHit(value=value, version=version):
            return {"type": "hit", "value": value, "version": version}
        case ReadMiss():
            return {"type": "miss"}
        case Written(version=version):
            return {"type": "written", "version": version}
        case CasConflict(actual=actual):
            return {"type": "conflict", "actual": actual}
        case Deleted(version=version):
            return {"type": "deleted", "version": version}
        case Unknown(reason=reason):
            return {"type": "unknown", "reason": reason}


def outcome_from_dict(data: Mapping[str, object]) -> Outcome:
    """Parse the JSON form written by `outcome_to_dict`, or raise `HistoryFormatError`."""
    tag = data.get("type")
    match tag:
        case "hit":
            if "value" not in data:
                raise HistoryFormatError(f"a 'hit' outcome needs a 'value': {dict(data)!r}")
            value: JSONValue = data["value"]  # type: ignore[assignment]  # loaded from JSON
            return ReadHit(value, _check_version(data.get("version"), "hit version"))
        case "miss":
            return ReadMiss()
        case "written":
            return Written(_check_version(data.get("version"), "written version"))
        case "conflict":
            return CasConflict(_check_optional_version(data.get("actual"), "conflict actual"))
        case "deleted":
            return Deleted(_check_optional_version(data.get("version"), "deleted version"))
        case "unknown":
            reason = data.get("reason", "")
            return Unknown(reason if isinstance(reason, str) else repr(reason))
        case _:
            raise HistoryFormatError(
                f"unknown outcome type {tag!r} in {dict(data)!r}; expected one of "
                "'hit', 'miss', 'written', 'conflict', 'deleted', 'unknown'"
            )


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """The home committed `version` of `key` at `committed_at_ns` (a tombstone if `deleted`).

    Optional evidence for the staleness checks: a write's completion only bounds its commit
    from above, so an exact commit time (if the home can report it) gives exact ages.
    """

    key: str
    version: int
    committed_at_ns: int
    deleted: bool = False

    def to_dict(self) -> dict[str, JSONValue]:
        """The JSON form (a `"type": "commit"` record)."""
        return {
            "type": "commit",
            "key": self.key,
            "version": self.version,
            "committed_at_ns": self.committed_at_ns,
            "deleted": self.deleted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CommitRecord:
        """Parse the form written by `to_dict`, or raise `HistoryFormatError`."""
        key, at, deleted = data.get("key"), data.get("committed_at_ns"), data.get("deleted")
        if not isinstance(key, str) or type(at) is not int or not isinstance(deleted, bool):
            raise HistoryFormatError(
                "a commit record needs a str 'key', an int 'committed_at_ns' and a bool "
                f"'deleted': {dict(data)!r}"
            )
        return cls(key, _check_version(data.get("version"), "commit version"), at, deleted)


@dataclass(frozen=True)
class Operation:
    """One operation of one agent on one key, with its real-time interval and outcome.

    `value` is the value written (write and cas; None otherwise), `expected_version` the
    version a cas requires (None: "must not exist"). `completed_at_ns` is when the outcome was
    observed; for an `Unknown` outcome it is when the failure was observed (or None if never),
    and the checkers treat the operation as possibly taking effect at any time after
    `invoked_at_ns`. Equality compares every field; the hash is the `op_id` alone, because a
    value may be a (mutable, unhashable) list or dict.
    """

    op_id: str
    agent_id: str
    key: str
    kind: OpKind
    invoked_at_ns: int
    completed_at_ns: int | None
    outcome: Outcome
    value: JSONValue = None
    expected_version: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.outcome, _OUTCOMES_BY_KIND[self.kind]):
            allowed = ", ".join(t.__name__ for t in _OUTCOMES_BY_KIND[self.kind])
            raise HistoryFormatError(
                f"operation {self.op_id}: a {self.kind} cannot have outcome {self.outcome!r}; "
                f"allowed: {allowed}"
            )
        if self.completed_at_ns is None and not isinstance(self.outcome, Unknown):
            raise HistoryFormatError(
                f"operation {self.op_id} has outcome {self.outcome!r} but no completion time; "
                "only an Unknown outcome may lack one"
            )
        if self.completed_at_ns is not None and self.completed_at_ns < self.invoked_at_ns:
            raise HistoryFormatError(
                f"operation {self.op_id} completed at {self.completed_at_ns} ns, before its "
                f"invocation at {self.invoked_at_ns} ns; record both with the same clock"
            )
        if self.expected_version is not None and self.kind is not OpKind.CAS:
            raise HistoryFormatError(
                f"operation {self.op_id}: only a cas has an expected version, "
                f"this {self.kind} has {self.expected_version!r}"
            )

    def __hash__(self) -> int:
        return hash(self.op_id)

    @property
    def is_unknown(self) -> bool:
        """True if the outcome is `Unknown` (the operation may or may not have taken effect)."""
        return isinstance(self.outcome, Unknown)

    def describe(self) -> str:
        """A one-line human description, e.g. `a1#7 cas(expected=3, 'x') -> version 4`."""
        match self.kind:
            case OpKind.READ:
                call = "read()"
            case OpKind.WRITE:
                call = f"write({self.value!r})"
            case OpKind.CAS:
                expected = "absent" if self.expected_version is None else self.expected_version
                call = f"cas(expected={expected}, {self.value!r})"
            case OpKind.DELETE:
                call = "delete()"
        match self.outcome:
            case ReadHit(value=value, version=version):
                result = f"{value!r} at version {version}"
            case ReadMiss():
                result = "miss"
            case Written(version=version):
                result = f"version {version}"
            case CasConflict(actual=actual):
                result = f"conflict (found {'absent' if actual is None else actual})"
            case Deleted(version=version):
                result = "nothing to delete" if version is None else f"tombstone {version}"
            case Unknown(reason=reason):
                result = f"unknown outcome ({reason})"
        end = "?" if self.completed_at_ns is None else str(self.completed_at_ns)
        return f"{self.op_id} {call} -> {result} [{self.invoked_at_ns}..{end} ns]"

    def to_dict(self) -> dict[str, JSONValue]:
        """The JSON form of the whole operation (a `"type": "operation"` record)."""
        return {
            "type": "operation",
            "op": self.op_id,
            "agent": self.agent_id,
            "key": self.key,
            "kind": self.kind.value,
            "value": self.value,
            "expected_version": self.expected_version,
            "invoked_at_ns": self.invoked_at_ns,
            "completed_at_ns": self.completed_at_ns,
            "outcome": outcome_to_dict(self.outcome),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Operation:
        """Parse the form written by `to_dict`, or raise `HistoryFormatError`."""
        invocation = _Invocation.from_dict(data)
        outcome_data = data.get("outcome")
        if not isinstance(outcome_data, Mapping):
            raise HistoryFormatError(f"operation record without an 'outcome' dict: {dict(data)!r}")
        completed = data.get("completed_at_ns")
        if completed is not None and type(completed) is not int:
            raise HistoryFormatError(f"completed_at_ns must be an int or null, got {completed!r}")
        return invocation.finish(completed, outcome_from_dict(outcome_data))


@dataclass(frozen=True)
class _Invocation:
    """The first half of a streamed operation: what was asked, and when."""

    op_id: str
    agent_id: str
    key: str
    kind: OpKind
    invoked_at_ns: int
    value: JSONValue
    expected_version: int | None

    def to_dict(self) -> dict[str, JSONValue]:
        return {
            "type": "invoke",
            "op": self.op_id,
            "agent": self.agent_id,
            "key": self.key,
            "kind": self.kind.value,
            "value": self.value,
            "expected_version": self.expected_version,
            "invoked_at_ns": self.invoked_at_ns,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> _Invocation:
        strings = {}
        for name in ("op", "agent", "key", "kind"):
            item = data.get(name)
            if not isinstance(item, str):
                raise HistoryFormatError(f"record field {name!r} must be a str: {dict(data)!r}")
            strings[name] = item
        try:
            kind = OpKind(strings["kind"])
        except ValueError:
            raise HistoryFormatError(
                f"unknown operation kind {strings['kind']!r}; expected one of "
                f"{[k.value for k in OpKind]}"
            ) from None
        invoked = data.get("invoked_at_ns")
        if type(invoked) is not int:
            raise HistoryFormatError(f"invoked_at_ns must be an int, got {invoked!r}")
        value: JSONValue = data.get("value")  # type: ignore[assignment]  # loaded from JSON
        return cls(
            op_id=strings["op"],
            agent_id=strings["agent"],
            key=strings["key"],
            kind=kind,
            invoked_at_ns=invoked,
            value=value,
            expected_version=_check_optional_version(
                data.get("expected_version"), "expected_version"
            ),
        )

    def finish(self, completed_at_ns: int | None, outcome: Outcome) -> Operation:
        return Operation(
            op_id=self.op_id,
            agent_id=self.agent_id,
            key=self.key,
            kind=self.kind,
            invoked_at_ns=self.invoked_at_ns,
            completed_at_ns=completed_at_ns,
            outcome=outcome,
            value=self.value,
            expected_version=self.expected_version,
        )


class PendingOperation:
    """An operation in flight: call one of the completion methods when its outcome is known.

    Used as a context manager (sync or async); leaving it without a completion records the
    operation as `Unknown`. A `VersionConflict` escaping the body of a cas is recorded as the
    `CasConflict` it reports (and re-raised), since the store answered.
    """

    def __init__(self, recorder: HistoryRecorder, invocation: _Invocation) -> None:
        self._recorder = recorder
        self._invocation = invocation
        self._operation: Operation | None = None

    @property
    def op_id(self) -> str:
        """The identifier of this operation (`<agent>#<sequence number>`)."""
        return self._invocation.op_id

    @property
    def operation(self) -> Operation | None:
        """The recorded operation once completed, else None."""
        return self._operation

    def complete(self, outcome: Outcome) -> Operation:
        """Record `outcome`, timestamped now, and return the finished operation."""
        completed_at_ns = self._recorder.clock_ns()
        if self._operation is not None:
            raise IncompleteOperationError(
                f"operation {self.op_id} was already completed as {self._operation.outcome!r}; "
                "complete each operation exactly once"
            )
        # Operation.__post_init__ checks that the outcome fits the kind.
        operation = self._invocation.finish(completed_at_ns, outcome)
        self._operation = operation
        self._recorder._record_completion(operation)
        return operation

    def hit(self, value: JSONValue, version: int) -> Operation:
        """Complete a read that found `value` at `version`."""
        return self.complete(ReadHit(value, version))

    def miss(self) -> Operation:
        """Complete a read that found the key absent."""
        return self.complete(ReadMiss())

    def written(self, version: int) -> Operation:
        """Complete a write or a successful cas that created `version`."""
        return self.complete(Written(version))

    def conflict(self, actual: int | None) -> Operation:
        """Complete a cas that found version `actual` (None: absent)."""
        return self.complete(CasConflict(actual))

    def deleted(self, version: int | None) -> Operation:
        """Complete a delete that left tombstone `version` (None: there was nothing to delete)."""
        return self.complete(Deleted(version))

    def _finish_on_exit(self, exc: BaseException | None) -> None:
        if self._operation is not None:
            return
        if isinstance(exc, VersionConflict) and self._invocation.kind is OpKind.CAS:
            self.complete(CasConflict(exc.actual))
            return
        if exc is None:
            self.complete(Unknown("the body finished without recording an outcome"))
            raise IncompleteOperationError(
                f"operation {self.op_id} ({self._invocation.kind} on "
                f"{self._invocation.key!r}) left its block without an outcome; call "
                "complete() (or hit/miss/written/conflict/deleted) inside the block"
            )
        self.complete(Unknown(f"{type(exc).__name__}: {exc}"))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._finish_on_exit(exc)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._finish_on_exit(exc)


@dataclass
class HistoryRecorder:
    """Records the operations of one agent, in memory and optionally to a JSON-lines file.

    `agent_id` must be unique across the agents whose histories are merged. With `path`, the
    recorder opens (and owns) the file in append mode on first use; `close()` closes it. Each
    record is one short line written and flushed synchronously: a few microseconds on an
    event loop, and it makes the file crash-safe up to the last completed line.
    """

    agent_id: str
    path: Path | None = None
    clock_ns: Callable[[], int] = time.monotonic_ns
    _operations: list[Operation] = field(default_factory=list, init=False, repr=False)
    _commits: list[CommitRecord] = field(default_factory=list, init=False, repr=False)
    _sequence: int = field(default=0, init=False, repr=False)
    _file: IO[str] | None = field(default=None, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    @property
    def operations(self) -> tuple[Operation, ...]:
        """The completed operations, in completion order."""
        return tuple(self._operations)

    def operation(
        self,
        kind: OpKind,
        key: str,
        *,
        value: JSONValue = None,
        expected_version: int | None = None,
    ) -> PendingOperation:
        """Start an operation now; use the result as `async with` (or `with`) block."""
        if self._closed:
            raise ClosedResourceError(
                f"recorder of agent {self.agent_id!r} is closed; create a new recorder"
            )
        if expected_version is not None and kind is not OpKind.CAS:
            raise HistoryFormatError(
                f"only a cas takes expected_version, got {expected_version!r} for a {kind}"
            )
        self._sequence += 1
        invocation = _Invocation(
            op_id=f"{self.agent_id}#{self._sequence}",
            agent_id=self.agent_id,
            key=key,
            kind=kind,
            invoked_at_ns=self.clock_ns(),
            value=value,
            expected_version=expected_version,
        )
        self._write_line(invocation.to_dict())
        return PendingOperation(self, invocation)

    def read(self, key: str) -> PendingOperation:
        """Start a read of `key`."""
        return self.operation(OpKind.READ, key)

    def write(self, key: str, value: JSONValue) -> PendingOperation:
        """Start an unconditional write of `value` to `key`."""
        return self.operation(OpKind.WRITE, key, value=value)

    def cas(self, key: str, value: JSONValue, expected_version: int | None) -> PendingOperation:
        """Start a compare-and-swap of `key` to `value` if it is at `expected_version`."""
        return self.operation(OpKind.CAS, key, value=value, expected_version=expected_version)

    def delete(self, key: str) -> PendingOperation:
        """Start a delete of `key`."""
        return self.operation(OpKind.DELETE, key)

    def _record_completion(self, operation: Operation) -> None:
        self._operations.append(operation)
        self._write_line(
            {
                "type": "complete",
                "op": operation.op_id,
                "completed_at_ns": operation.completed_at_ns,
                "outcome": outcome_to_dict(operation.outcome),
            }
        )

    def _write_line(self, record: dict[str, JSONValue]) -> None:
        if self.path is None:
            return
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def commit(
        self, key: str, version: int, committed_at_ns: int, *, deleted: bool = False
    ) -> None:
        """Record that the home committed `version` of `key` at `committed_at_ns`."""
        record = CommitRecord(key, version, committed_at_ns, deleted)
        self._commits.append(record)
        self._write_line(record.to_dict())

    @property
    def commits(self) -> tuple[CommitRecord, ...]:
        """The commit records, in recording order."""
        return tuple(self._commits)

    def dump(self, path: Path) -> None:
        """Write every completed operation to `path` as `"type": "operation"` JSON lines."""
        with path.open("w", encoding="utf-8") as out:
            for operation in self._operations:
                out.write(json.dumps(operation.to_dict(), separators=(",", ":")) + "\n")
            for commit in self._commits:
                out.write(json.dumps(commit.to_dict(), separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Close the file (if any); idempotent."""
        self._closed = True
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _records(path: Path, *, allow_torn_last_line: bool) -> Iterator[tuple[int, dict[str, object]]]:
    lines = [
        (number, line)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip()
    ]
    for index, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            # A process killed mid-write leaves at most a torn last line.
            if allow_torn_last_line and index == len(lines) - 1:
                return
            raise HistoryFormatError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(record, dict):
            raise HistoryFormatError(f"{path}:{number}: a record must be a JSON object")
        yield number, record


def load_history(
    paths: Iterable[Path | str], *, allow_torn_last_line: bool = True
) -> list[Operation]:
    """Load and merge JSON-lines histories, sorted by invocation time.

    Accepts whole `"operation"` records and streamed `"invoke"`/`"complete"` pairs; an
    invocation without its completion (an agent killed mid-operation) becomes an `Unknown`
    operation. With `allow_torn_last_line`, an unparsable last line of a file (a write torn
    by SIGKILL) is ignored. Duplicate operation ids across files raise `HistoryFormatError`.
    """
    operations: dict[str, Operation] = {}
    for raw_path in paths:
        path = Path(raw_path)
        pending: dict[str, _Invocation] = {}
        for number, record in _records(path, allow_torn_last_line=allow_torn_last_line):
            _merge_record(path, number, record, pending, operations)
        for op_id, invocation in pending.items():
            if op_id in operations:
                raise HistoryFormatError(f"{path}: operation id {op_id!r} appears twice")
            operations[op_id] = invocation.finish(None, Unknown("no completion recorded"))
    return sorted(operations.values(), key=lambda op: (op.invoked_at_ns, op.op_id))


def _merge_record(
    path: Path,
    number: int,
    record: dict[str, object],
    pending: dict[str, _Invocation],
    operations: dict[str, Operation],
) -> None:
    where = f"{path}:{number}"
    try:
        match record.get("type"):
            case "operation":
                operation = Operation.from_dict(record)
                if operation.op_id in operations or operation.op_id in pending:
                    raise HistoryFormatError(f"operation id {operation.op_id!r} appears twice")
                operations[operation.op_id] = operation
            case "invoke":
                invocation = _Invocation.from_dict(record)
                if invocation.op_id in operations or invocation.op_id in pending:
                    raise HistoryFormatError(f"operation id {invocation.op_id!r} appears twice")
                pending[invocation.op_id] = invocation
            case "complete":
                op_id = record.get("op")
                if not isinstance(op_id, str) or op_id not in pending:
                    raise HistoryFormatError(
                        f"completion of {op_id!r} without an earlier invocation in this file"
                    )
                outcome_data = record.get("outcome")
                if not isinstance(outcome_data, Mapping):
                    raise HistoryFormatError("a completion record needs an 'outcome' dict")
                completed = record.get("completed_at_ns")
                if completed is not None and type(completed) is not int:
                    raise HistoryFormatError(
                        f"completed_at_ns must be an int or null, got {completed!r}"
                    )
                invocation = pending.pop(op_id)
                operations[op_id] = invocation.finish(completed, outcome_from_dict(outcome_data))
            case "commit":
                pass  # see load_commits()
            case other:
                raise HistoryFormatError(
                    f"unknown record type {other!r}; expected 'operation', 'invoke', "
                    "'complete' or 'commit'"
                )
    except HistoryFormatError as error:
        raise HistoryFormatError(f"{where}: {error}") from None


def load_commits(
    paths: Iterable[Path | str], *, allow_torn_last_line: bool = True
) -> list[CommitRecord]:
    """Load the `"commit"` records of JSON-lines histories (see `HistoryRecorder.commit`)."""
    commits: list[CommitRecord] = []
    for raw_path in paths:
        path = Path(raw_path)
        for number, record in _records(path, allow_torn_last_line=allow_torn_last_line):
            if record.get("type") == "commit":
                try:
                    commits.append(CommitRecord.from_dict(record))
                except HistoryFormatError as error:
                    raise HistoryFormatError(f"{path}:{number}: {error}") from None
    return commits
