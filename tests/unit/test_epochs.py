"""What a log record's writer and epoch are checked against: the owners the partition tables gave each epoch."""

from __future__ import annotations

from spacegrid.core.epochs import EPOCHS_KEPT_PER_PARTITION, EpochOwners
from spacegrid.partitioning import PartitionTable


def tables() -> EpochOwners:
    owners = EpochOwners(2)
    owners.observe(PartitionTable(1, ("a", "b"), (1, 1)))
    owners.observe(PartitionTable(2, ("c", "b"), (2, 1)))
    return owners


def test_a_record_of_its_epochs_owner_is_applied() -> None:
    """The owner the table made at an epoch may write at that epoch, up to the newest epoch issued."""
    owners = tables()
    assert owners.refusal(0, 1, "a", epoch_max=2) is None
    assert owners.refusal(0, 2, "c", epoch_max=2) is None
    assert owners.refusal(1, 1, "b", epoch_max=None) is None


def test_another_writer_at_a_known_epoch_or_an_epoch_never_issued_is_refused() -> None:
    """A record whose writer was not its epoch's owner, or whose epoch is past the newest issued, is refused with
    the reason."""
    owners = tables()
    assert "the table made a the owner at epoch 1" in str(owners.refusal(0, 1, "c", epoch_max=2))
    assert "past 2" in str(owners.refusal(0, 3, "c", epoch_max=2))


def test_an_epoch_never_seen_is_not_held_against_its_writer() -> None:
    """A PU that did not see a table (started later) can't tell who owned that epoch: the record is applied."""
    assert tables().refusal(0, 0, "anyone", epoch_max=None) is None


def test_only_the_newest_epochs_are_kept() -> None:
    """Per partition at most EPOCHS_KEPT_PER_PARTITION epochs are remembered (the oldest are forgotten)."""
    owners = EpochOwners(1)
    for epoch in range(1, EPOCHS_KEPT_PER_PARTITION + 3):
        owners.observe(PartitionTable(epoch, (f"m{epoch}",), (epoch,)))
    assert owners.owner(0, 1) is None and owners.owner(0, 2) is None
    assert owners.owner(0, EPOCHS_KEPT_PER_PARTITION + 2) == f"m{EPOCHS_KEPT_PER_PARTITION + 2}"
