"""Which member the partition table made owner of each partition at each epoch, as far as one PU saw the tables:
what a log record's writer and epoch are checked against before it is applied (a log no one can poison)."""

from __future__ import annotations

from spacegrid.partitioning import PartitionTable

EPOCHS_KEPT_PER_PARTITION = 16  # the newest epochs remembered per partition (records older than those: not checked)


class EpochOwners:
    """`observe(table)` for every table adopted; `refusal(partition, epoch, writer, epoch_max)` says why a record
    must not be applied, or None. An epoch's owner is unique: the table bumps a partition's epoch exactly when its
    owner changes, so a record whose writer is not the owner of its epoch, or whose epoch is past the newest one the
    table issued, was never written by an honest owner."""

    def __init__(self, partitions: int) -> None:
        self.owners: list[dict[int, str]] = [{} for _ in range(partitions)]

    def observe(self, table: PartitionTable) -> None:
        for partition, (owner, epoch) in enumerate(zip(table.owners, table.epochs)):
            if owner is None:
                continue
            known = self.owners[partition]
            known[epoch] = owner  # a different one only if the table was reset (its bucket recreated): newer wins
            if len(known) > EPOCHS_KEPT_PER_PARTITION:
                del known[min(known)]

    def owner(self, partition: int, epoch: int) -> str | None:
        return self.owners[partition].get(epoch)

    def refusal(self, partition: int, epoch: int, writer: str, epoch_max: int | None) -> str | None:
        """Why a record of `partition` at `epoch`, appended by `writer`, is forged; None if it may be applied.
        `epoch_max`: the newest epoch the table issued for it, when the reader knows it (a new owner: its own)."""
        if epoch_max is not None and epoch > epoch_max:
            return f"its epoch {epoch} is past {epoch_max}, the newest the partition table issued"
        owner = self.owner(partition, epoch)
        if owner is not None and owner != writer:
            return f"it was appended by {writer}, but the table made {owner} the owner at epoch {epoch}"
        return None
