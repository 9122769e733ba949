"""Re-keying onto the internal topics: each item on its key's partition, a
source message's items together, one key's items in their order."""

from __future__ import annotations

from operator import itemgetter

from ctower.streams.decisions import Forwarder
from ctower.topics import partition_for


class _Topic:
    """Nothing is flushed here: what the forwarder queued is read from ``pending``."""

    def send_soon(self, *, value: bytes, partition: int) -> None:
        raise AssertionError("not flushed in these tests")


def test_each_item_goes_to_its_keys_partition_in_order_one_group_per_partition() -> None:
    forwarder = Forwarder(_Topic(), 4)  # type: ignore[arg-type]
    items = [(f"K{n % 13}", n) for n in range(100)]
    forwarder.add_each((0, 7), items, itemgetter(0))
    forwarder.add_each((0, 8), items[:3], itemgetter(0))
    sent = {(0, 7): items, (0, 8): items[:3]}
    seen: dict[tuple[int, int], list[int]] = {message: [] for message in sent}
    for partition, groups in forwarder.pending.items():
        for message, group in groups:
            seen[message].append(partition)
            # the message's items of this partition, in the message's order
            assert group == [item for item in sent[message]
                             if partition_for(item[0].encode(), 4) == partition]
    for message, partitions in seen.items():  # one group per partition and message
        assert sorted(partitions) == sorted(
            {partition_for(key.encode(), 4) for key, _ in sent[message]})
