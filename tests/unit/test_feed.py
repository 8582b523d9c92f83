"""The change feed's pure part: positions, and turning log messages into committed changes in order."""

from __future__ import annotations

from typing import Any

import pytest

from spacegrid import codec
from spacegrid.core.epochs import EpochOwners
from spacegrid.core.feed import WHOLE, ChangeReader, FeedFilter, Position
from spacegrid.core.logformat import encode_pu_message
from spacegrid.errors import ChangesLost, RequestError
from spacegrid.partitioning import PartitionTable

PREFIX = "sg.t.log.pu."


def part(epoch: int, *ops: tuple[str, list[tuple[str, str, int, Any, bool]]]) -> bytes:
    return codec.encode(["w", epoch, [[op_id, None, [[m, k, v, None if deleted else codec.encode(value), deleted]
                                                      for m, k, v, value, deleted in writes]]
                                      for op_id, writes in ops]])


def message(*parts: tuple[int, bytes]) -> bytes:
    return encode_pu_message(list(parts))


def reader(after: Position = Position(0), wanted: FeedFilter = FeedFilter(), epochs: EpochOwners | None = None,
           lenient: bool = False) -> ChangeReader:
    return ChangeReader(PREFIX, after, wanted, epochs or EpochOwners(4), lambda data: codec.decode(data, 1 << 20),
                        1 << 20, lenient)


def test_position_text_round_trips_and_orders() -> None:
    """A position prints as SEQ or SEQ.PART.RECORD, parses back, and orders as the log does; junk is refused."""
    assert str(Position(12)) == "12" and Position.parse("12") == Position(12, WHOLE, WHOLE)
    assert Position.parse("12.1.3") == Position(12, 1, 3) and str(Position(12, 1, 3)) == "12.1.3"
    assert Position(12, 0, 5) < Position(12, 1, 0) < Position(12) < Position(13, 0, 0)
    for bad in ("", "x", "1.2", "-1", "1.2.3.4", "1e3"):
        with pytest.raises(RequestError, match="not a change feed position"):
            Position.parse(bad)


def test_changes_come_in_log_order_with_positions_and_kinds() -> None:
    """Puts, deletes and TTL expiries of a message come out in order with their position; claims pass silently."""
    feed = reader()
    assert feed.on_message(1, "sg.t.log.claim.0", b"\x92\x01\xa1a") == []
    data = message((0, part(1, ("op1", [("m", "a", 1, {"x": 1}, False), ("m", "b", 2, None, True)]))),
                   (2, part(1, ("expire:pu:1", [("m", "c", 1, None, True)]))))
    changes = feed.on_message(2, PREFIX + "pu1", data)
    assert [(c.kind, c.key, c.value, c.version, c.partition, str(c.position)) for c in changes] == [
        ("put", "a", {"x": 1}, 1, 0, "2.0.0"), ("delete", "b", None, 2, 0, "2.0.1"),
        ("expire", "c", None, 1, 2, "2.1.0")]


def test_a_missing_stream_sequence_is_changes_lost() -> None:
    """A sequence that never arrives (trimmed, recreated log) raises ChangesLost instead of skipping changes."""
    feed = reader(Position(5))
    assert feed.first_seq() == 6
    with pytest.raises(ChangesLost, match="6..6"):
        feed.on_message(7, "sg.t.log.claim.0", b"")


def test_earliest_accepts_any_first_sequence_then_requires_each() -> None:
    """From "earliest" the first message may be anywhere; after it every sequence must follow in turn."""
    feed = reader(Position(0), lenient=True)
    feed.on_message(40, "sg.t.log.claim.0", b"")
    with pytest.raises(ChangesLost):
        feed.on_message(42, "sg.t.log.claim.0", b"")


def test_resuming_mid_message_gives_exactly_what_follows() -> None:
    """Resuming after record 0 of part 1 of message 3 yields record 1 of that part and the parts after it only."""
    data = message((0, part(1, ("o1", [("m", "a", 1, 1, False)]))),
                   (1, part(1, ("o2", [("m", "b", 1, 2, False), ("m", "c", 2, 3, False)]))),
                   (2, part(1, ("o3", [("m", "d", 1, 4, False)]))))
    feed = reader(Position(3, 1, 0))
    assert feed.first_seq() == 3
    assert [c.key for c in feed.on_message(3, PREFIX + "pu1", data)] == ["c", "d"]


def test_a_version_seen_twice_is_skipped_and_a_skipped_version_is_changes_lost() -> None:
    """A partition's write delivered again is not given twice; one whose version jumps past a missing one raises."""
    feed = reader()
    feed.on_message(1, PREFIX + "pu1", message((0, part(1, ("o1", [("m", "a", 1, 1, False)])))))
    assert feed.on_message(2, PREFIX + "pu1", message((0, part(1, ("o1", [("m", "a", 1, 1, False)]))))) == []
    assert feed.counters["duplicates"] == 1
    with pytest.raises(ChangesLost, match="from version 1 to 3"):
        feed.on_message(3, PREFIX + "pu1", message((0, part(1, ("o3", [("m", "a", 3, 1, False)])))))


def test_a_record_its_writer_could_not_append_is_refused() -> None:
    """A part whose writer the table did not make owner at its epoch (a forged log) gives no change."""
    epochs = EpochOwners(4)
    epochs.observe(PartitionTable(version=1, owners=("pu1",) * 4, epochs=(1,) * 4,
                                  backups=((),) * 4))
    feed = reader(epochs=epochs)
    assert feed.on_message(1, PREFIX + "intruder", message((0, part(1, ("x", [("m", "a", 1, 1, False)]))))) == []
    assert feed.counters["refused_records"] == 1
    assert len(feed.on_message(2, PREFIX + "pu1", message((0, part(1, ("o", [("m", "a", 1, 1, False)])))))) == 1


def test_filters_by_map_key_partition_and_predicate() -> None:
    """Only the wanted map's puts the predicate accepts, and its deletes, come out; expiries only if asked."""
    data = message((1, part(1, ("o", [("m", "a", 1, 5, False), ("m", "b", 2, 6, False), ("n", "a", 3, 7, False)]))),
                   (1, part(1, ("expire:p:1", [("m", "a", 4, None, True)]))))
    even = FeedFilter(map="m", where=lambda key, value: value % 2 == 0)
    assert [(c.key, c.kind) for c in reader(wanted=even).on_message(1, PREFIX + "p", data)] == [("b", "put"),
                                                                                               ("a", "expire")]
    quiet = FeedFilter(map="m", key="a", partition=1, expiries=False)
    assert [c.value for c in reader(wanted=quiet).on_message(1, PREFIX + "p", data)] == [5]
    other = FeedFilter(map="m", key="a", partition=2)
    assert reader(wanted=other).on_message(1, PREFIX + "p", data) == []


def test_snapshot_pages_give_each_key_its_page_version() -> None:
    """A continuous query's pages: a key up to a page's last key has that page's version; past all, the last's."""
    from spacegrid.client.feed import _Pages

    pages = _Pages(["f", "m"], [5, 7, 9])
    assert [pages.version_of(key) for key in ("a", "f", "g", "m", "n", "zz")] == [5, 5, 7, 7, 9, 9]
    assert _Pages([], [4]).version_of("any") == 4
