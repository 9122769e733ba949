"""What runs beside the agents: once a second, at a revocation, at the stop.

Once a second a quiet stream's last batch settles, dead letters are tried
again, windows close on idle time, a quiet partition forgets the identities
past the horizon, recovered partitions are adopted and the rules' state is
written (the rules' batches are acked with that write). A
revocation persists and acks everything first, then lets the partitions go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import faust
from faust.types import TP

from ctower.streams.faust_parts import active_partitions, tables_recovered
from ctower.streams.pending_acks import persist_and_release
from ctower.streams.tower import ControlTower


def install_upkeep(tower: ControlTower) -> None:
    app, decisions = tower.app, tower.decisions

    async def close_idle_windows() -> None:
        recovered = tables_recovered(app)
        for name, pending in tower.pending.items():
            if pending.events or pending.in_flight:
                await pending.settle()  # a quiet stream's last messages
            await pending.retry_dead_letters()
            for partition in pending.outbox.take_resumed():
                await tower.orders[name].rewind(partition)
            await tower.orders[name].retry()
        for stream, processor in tower.processors.items():
            if recovered:
                processor.state.adopt(active_partitions(app, tower.window_tables[stream]))
            processor.state.tick(caught_up=_caught_up(app, processor.topic))
            processor.forget_seen()
        if recovered and decisions is not None:
            decisions.adopt(active_partitions(app, decisions.table))
            decisions.tick()
        # the rules' batches wait for this write to be acked (also while a
        # rebalance waits for every message to be acked: Consumer.wait_empty)
        await persist_and_release(tower)

    async def release_for_shutdown() -> None:
        for pending in tower.pending.values():
            if pending.events or pending.in_flight:
                await pending.settle()
            # waiting for a dead letter: not acked, not in the way of the stop
            pending.let_go_waiting(app.consumer)
        await persist_and_release(tower)

    @app.task
    async def every_second() -> None:
        # Not an @app.timer: a timer ends as soon as the app is told to stop,
        # but Faust's shutdown then waits for every message to be acked
        # (Consumer.wait_empty), and the messages only this loop releases
        # (settled or held for the rules' write) would never be: the stop
        # hung until the worker was killed. A task runs until the app
        # cancels it, after the consumer has stopped.
        while True:
            await asyncio.sleep(1.0)
            await (release_for_shutdown() if app.should_stop else close_idle_windows())

    @app.task
    async def drop_monitor() -> None:
        # Faust's Monitor sensor sits on every message's path (about 20% of a
        # bare agent's time: 11.3k -> 13.8k messages/s without it); /stats/ reports what we need.
        if app.monitor in app.sensors:
            app.sensors.remove(app.monitor)

    # faust sends the revoked set positionally; mode's handler type wants *args
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        # still ours until the revocation completes: persist and ack, then let go
        for pending in tower.pending.values():
            await pending.settle()
        await persist_and_release(tower)
        for tp in revoked:
            for order in tower.orders.values():
                if tp.topic == order.topic:
                    order.forget(tp.partition)
            for pending in tower.pending.values():
                if tp.topic == pending.outbox.source_topic:
                    pending.let_go_waiting(app.consumer, tp.partition)
            for processor in tower.processors.values():
                if tp.topic == processor.topic:
                    processor.drop(tp.partition)
            if decisions is not None and tp.topic == decisions.processors["stock-moves"].topic:
                decisions.drop(tp.partition)


def _caught_up(app: faust.App, topic: str) -> Callable[[int, int], bool]:
    """Whether this worker has read everything Kafka holds for a partition."""

    def check(partition: int, last_offset: int) -> bool:
        highwater = app.consumer.highwater(TP(topic, partition))
        return highwater is not None and last_offset + 1 >= highwater

    return check
