"""Keys go to the partitions Kafka's default partitioner gives them, as every producer agrees."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st
from webhook_tasks_runtime.partitioning import default_partitioner, murmur2, partition_of

# Kafka's own test vectors (UtilsTest.testMurmur2), as the signed ints Java returns.
KAFKA_VECTORS = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("text", "java"), KAFKA_VECTORS.items())
def test_murmur2_gives_what_the_java_client_gives(text: str, java: int) -> None:
    assert murmur2(text.encode()) == java % 2**32


@given(st.binary(max_size=400))
def test_murmur2_agrees_with_aiokafka_for_any_bytes(data: bytes) -> None:
    # Keys of every length up to 400 bytes (UUIDs are 36), tail bytes 0-3 included.
    assert murmur2(data) == aiokafka_murmur2(data)


@given(key=st.binary(max_size=64), count=st.integers(min_value=1, max_value=64))
def test_a_key_goes_where_aiokafka_s_default_partitioner_puts_it(key: bytes, count: int) -> None:
    partitions = list(range(count))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert default_partitioner(key, partitions, partitions) == expected
    assert partition_of(key, count) == expected


def test_a_record_without_a_key_goes_to_a_partition_with_a_leader_when_there_is_one() -> None:
    chosen = {default_partitioner(None, [0, 1, 2], [2]) for _ in range(50)}
    assert chosen == {2}
    assert {default_partitioner(None, [0, 1, 2], []) for _ in range(200)} == {0, 1, 2}
