"""Change feeds without I/O: the committed changes a log message holds, in log order, checked against the
partition table's owners, each with the position a reader resumes after."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from spacegrid import codec
from spacegrid.core.epochs import EpochOwners
from spacegrid.core.logformat import parts_of
from spacegrid.errors import ChangesLost, RequestError

WHOLE: Final = 2**31 - 1  # a position's part and record when the whole message was delivered
EXPIRE_OP_PREFIX: Final = "expire:"  # the operation id of a TTL expiry's delete (unit.maintenance)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """The last change a reader was given: log message `seq`, its `part`-th partition part, the `record`-th write
    of that part (WHOLE, WHOLE: all of the message). Resuming after it gives every change after it, once. Its text
    form is `seq` or `seq.part.record`, what a caller stores."""

    seq: int
    part: int = WHOLE
    record: int = WHOLE

    def __post_init__(self) -> None:
        assert self.seq >= 0 and 0 <= self.part <= WHOLE and 0 <= self.record <= WHOLE, "positions are not negative"

    def __str__(self) -> str:
        if self.part == WHOLE and self.record == WHOLE:
            return str(self.seq)
        return f"{self.seq}.{self.part}.{self.record}"

    @property
    def whole(self) -> bool:
        return self.part == WHOLE and self.record == WHOLE

    @classmethod
    def parse(cls, text: str | int | Position) -> Position:
        """A position from its text form (or a stream sequence); RequestError saying the form if it is not one."""
        if isinstance(text, Position):
            return text
        if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
            return cls(text)
        fields = str(text).split(".")
        if len(fields) not in (1, 3) or not all(field.isdigit() and len(field) <= 19 for field in fields):
            raise RequestError(f"{str(text)[:40]!r} is not a change feed position: 'SEQ' or 'SEQ.PART.RECORD', "
                               "as a Change's position prints")
        numbers = [int(field) for field in fields]
        if any(number > WHOLE for number in numbers[1:]):
            raise RequestError(f"{text!r}: a part or record index is at most {WHOLE}")
        return cls(*numbers)


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write: `kind` "put", "delete" or "expire" (a TTL expiry's delete); `value` None unless a put."""

    kind: str
    map: str
    key: str
    value: Any
    version: int
    partition: int
    position: Position


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """Which changes a reader wants: of `map` (None: every map), of one `key` (then its partition's parts only are
    decoded), puts whose (key, value) `where` accepts (deletes and expiries of matching keys always pass: the
    reader can't tell whether the old value matched), expiries or not."""

    map: str | None = None
    key: str | None = None
    partition: int | None = None
    where: Callable[[str, Any], bool] | None = None
    expiries: bool = True


class ChangeReader:
    """Feed it every log message in stream order (`on_message`), from `first_seq()`: it returns the changes after
    `after` that pass the filter. Every stream sequence must arrive in turn: a missing one was removed from the log
    (trimmed behind the store, a recreated log) and raises ChangesLost, as does a partition's version skipping one
    (no committed write may be missed silently). Records the table says their writer could not append (a forged
    log) are skipped and counted, as a PU's replay does; a version seen before is skipped (never delivered twice)."""

    def __init__(self, pu_subject_prefix: str, after: Position, wanted: FeedFilter, epochs: EpochOwners,
                 decode_value: Callable[[bytes], Any], part_bytes_max: int, lenient_start: bool = False) -> None:
        self.pu_prefix = pu_subject_prefix
        self.after = after
        self.wanted = wanted
        self.epochs = epochs
        self.decode_value = decode_value
        self.part_bytes_max = part_bytes_max
        self.lenient_start = lenient_start  # "earliest": the first message is wherever the retained log starts
        self.last_seq: int | None = None  # the last stream sequence fed
        self.versions: dict[int, int] = {}  # partition -> the newest version seen (delivered or filtered out)
        self.counters = {"messages": 0, "changes": 0, "refused_records": 0, "duplicates": 0}

    def first_seq(self) -> int:
        """The stream sequence to start reading at: the position's message again if only part of it was given."""
        return self.after.seq + 1 if self.after.whole else self.after.seq

    def on_message(self, seq: int, subject: str, data: bytes) -> list[Change]:
        expected = self.first_seq() if self.last_seq is None else self.last_seq + 1
        if seq < expected:
            return []  # delivered again (a consumer reset): already fed
        if seq > expected and not (self.last_seq is None and self.lenient_start):
            raise ChangesLost(f"the log no longer holds messages {expected}..{seq - 1} (trimmed behind the store, or "
                              f"the log was recreated): the changes after position {self.position_before(expected)} "
                              "can't all be read. Take a new snapshot (continuous_query) and listen from there")
        self.last_seq = seq
        self.counters["messages"] += 1
        if not subject.startswith(self.pu_prefix):
            return []  # a claim, a reset marker, a quarantined message: no change of its own
        writer = subject[len(self.pu_prefix):]
        changes: list[Change] = []
        for part_index, (partition, part) in enumerate(parts_of(codec.decode(data, 2 * self.part_bytes_max))):
            if self.wanted.partition is not None and partition != self.wanted.partition:
                continue
            if seq == self.after.seq and part_index < self.after.part:
                continue
            skip_through = self.after.record if seq == self.after.seq and part_index == self.after.part else -1
            record = codec.decode_opaque(part, self.part_bytes_max)  # a result's typed values kept as they came
            self._read_part(seq, part_index, partition, record, writer, skip_through, changes)
        self.counters["changes"] += len(changes)
        return changes

    def read_through(self) -> int:
        """The stream sequence every message up to which was fed (before the first: the one before the start)."""
        return self.first_seq() - 1 if self.last_seq is None else self.last_seq

    def position_before(self, seq: int) -> Position:
        return Position(max(seq - 1, 0))

    def _read_part(self, seq: int, part_index: int, partition: int, record: Any, writer: str, skip_through: int,
                   changes: list[Change]) -> None:
        if self.epochs.refusal(partition, int(record[1]), writer, epoch_max=None) is not None:
            self.counters["refused_records"] += 1
            return
        index = -1
        for op_id, _result, writes in record[2]:
            for map_name, key, version, value, deleted in writes:
                index += 1
                if index <= skip_through:
                    continue
                if not self._in_order(partition, version):
                    continue
                change = self._wanted(op_id, map_name, key, version, value, deleted, partition,
                                      Position(seq, part_index, index))
                if change is not None:
                    changes.append(change)

    def _in_order(self, partition: int, version: int) -> bool:
        """Whether a write of `partition` at `version` is new; ChangesLost if one before it was never seen."""
        newest = self.versions.get(partition)
        if newest is not None and version <= newest:
            self.counters["duplicates"] += 1
            return False
        if newest is not None and version != newest + 1:
            raise ChangesLost(f"partition {partition}'s writes jump from version {newest} to {version} in the log: "
                              "the ones between are gone. Take a new snapshot (continuous_query) and listen from there")
        self.versions[partition] = version
        return True

    def _wanted(self, op_id: str, map_name: str, key: str, version: int, value: Any, deleted: bool, partition: int,
                position: Position) -> Change | None:
        wanted = self.wanted
        if wanted.map is not None and map_name != wanted.map or wanted.key is not None and key != wanted.key:
            return None
        if deleted:
            expiry = op_id.startswith(EXPIRE_OP_PREFIX)
            if expiry and not wanted.expiries:
                return None
            return Change("expire" if expiry else "delete", map_name, key, None, version, partition, position)
        decoded = self.decode_value(bytes(value))
        if wanted.where is not None and not wanted.where(key, decoded):
            return None
        return Change("put", map_name, key, decoded, version, partition, position)
