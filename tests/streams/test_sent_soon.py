"""A commit waits until Kafka has what the worker sent with ``send_soon``
(``streams/sent_soon.py``): Faust's own flush gives up after 0.1 s."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.producer import ProducerBuffer

from ctower.streams import sent_soon
from ctower.streams.intake import Intake, IntakeConsumer
from ctower.streams.sent_soon import SentSoon

SEND_SECONDS = 0.3
"""How long the slow producer below takes per record (a busy loop, a full
accumulator): longer than the 0.1 s Faust's flush waits for one."""


class SlowBuffer(ProducerBuffer):
    """Faust's buffer, whose sends take ``SEND_SECONDS`` each and resolve the
    record's future as Faust's ``_on_published`` does."""

    async def _send_pending(self, fut: Any) -> None:
        await asyncio.sleep(SEND_SECONDS)
        fut.set_result(None)


def test_faust_flush_returns_with_records_unsent_and_sent_soon_waits_for_them() -> None:
    async def run() -> tuple[int, bool, int]:
        buffer = SlowBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        await buffer.start()
        try:
            producer = SimpleNamespace(send_soon=buffer.put)
            sent = SentSoon(producer)
            loop = asyncio.get_running_loop()
            records = [loop.create_future() for _ in range(3)]
            for record in records:
                producer.send_soon(record)
            await buffer.flush()  # what Faust's commit awaits
            unsent_after_flush = sum(not record.done() for record in records)
            delivered = await sent.delivered(timeout=5)
            return unsent_after_flush, delivered, sum(not r.done() for r in records)
        finally:
            await buffer.stop()

    unsent_after_flush, delivered, unsent = asyncio.run(run())
    assert unsent_after_flush > 0  # the hole: a commit after this flush covers unsent records
    assert delivered and unsent == 0


def consumer_for(intake: Intake) -> IntakeConsumer:
    """The worker's consumer class, without the Faust service around it (only
    its commit is exercised)."""
    cls = type("IntakeConsumer", (IntakeConsumer,), {"intake": intake})
    consumer: IntakeConsumer = object.__new__(cls)
    return consumer


def test_the_consumer_commits_once_kafka_has_what_was_sent_soon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commits: list[Any] = []

    async def faust_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        commits.append(offsets)
        return True

    monkeypatch.setattr(AIOKafkaConsumer, "_commit_offsets", faust_commit)

    async def run() -> tuple[list[Any], list[Any], bool]:
        producer = SimpleNamespace(send_soon=lambda fut: None)
        intake = Intake(SimpleNamespace(consumer_generation_id=1, producer=producer))  # type: ignore[arg-type]
        intake.sent = SentSoon(producer)
        record: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        producer.send_soon(record)
        commit = asyncio.ensure_future(consumer_for(intake)._commit_offsets({"tp": 5}))
        await asyncio.sleep(0.05)
        before = list(commits)
        record.set_result(None)
        result = await asyncio.wait_for(commit, 1)
        return before, list(commits), result

    before, after, result = asyncio.run(run())
    assert before == []
    assert after == [{"tp": 5}] and result is True


def test_a_commit_is_skipped_while_a_record_is_not_in_kafka(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Skipping is safe (the messages come again); waiting for good would stall
    the fetch loop that commits."""
    commits: list[Any] = []

    async def faust_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        commits.append(offsets)
        return True

    monkeypatch.setattr(AIOKafkaConsumer, "_commit_offsets", faust_commit)
    monkeypatch.setattr(sent_soon, "WAIT_SECONDS", 0.05)

    async def run() -> tuple[bool, int]:
        producer = SimpleNamespace(send_soon=lambda fut: None)
        intake = Intake(SimpleNamespace(consumer_generation_id=1))  # type: ignore[arg-type]
        intake.sent = SentSoon(producer)
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        producer.send_soon(never)
        result = await consumer_for(intake)._commit_offsets({"tp": 5})
        return result, len(intake.sent.pending)

    result, pending = asyncio.run(run())
    assert result is False and commits == []
    assert pending == 1
