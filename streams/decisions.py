"""The decision layer in a worker: re-keying for the rules, the rule agents,
and where their alerts, coupon signals and live levels go.

Three rule families, each on the partitions where its key lives:

- pickup queues on the pickup stream's own partitions (keyed by store);
- stock on ``stock-moves``, which the scan, order and inventory agents fill
  with the stock effects of their events, re-keyed by SKU;
- lanes on ``lanes``, which the logistics agent fills, re-keyed by carrier
  and region; the guide rules take the same arrays (guide deliveries travel
  on their region's ``GUIDE`` lane).
- shipping on ``shipping``: paid orders owing a shipment and shipment events,
  re-keyed by order id, so an order and its parcels meet (the order and
  logistics agents fill it).

Every partition number of every topic goes to the same worker (Faust's
assignor keeps co-partitioned topics together), so one changelog table holds
all the rule state. Rules are evaluated for the keys a batch touched, right
after the batch (well under a second from event to alert), and every second
for what time alone changes (a queue's waits leave their window, a lane goes
silent).

What the rules write is paced, not per batch: the rule state goes to its
changelog about once a second (:meth:`DecisionLayer.persist`) and the live
levels are coalesced to the latest per key in between. Producing records was
the worker's main cost (one changelog record per touched entity per 0.2 s
batch, one level per change), and both now go out as whole Kafka batches
(``batch_writer.py``). The batches' source messages stay unacked until the
write that covers them is in the producer, so a committed offset never runs
ahead of the state (see ``PendingAcks`` in ``streams/pending_acks.py``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Any

import faust
import msgspec

from ctower.coupons.policy import campaign_partition
from ctower.rules.actions import ActionBook
from ctower.rules.alert_book import AlertBook, AlertEntry
from ctower.rules.config import Rules, RulesError, RulesWatcher
from ctower.rules.guides import GuideRulesFamily, GuideStore
from ctower.rules.lanes import Lane, LaneEvent, LaneRules
from ctower.rules.pickup import PickupQueue, PickupRules
from ctower.rules.rule_state import FLUSH_INTERVAL_S, FLUSH_MAX_DIRTY, RuleState
from ctower.rules.service import ServiceItem, ServiceRulesFamily
from ctower.rules.shipping import (
    SHIPPED_FULFILMENTS,
    AwaitedOrder,
    ShippingEvent,
    ShippingRules,
)
from ctower.rules.stock import StockItem, StockMove, StockRulesEngine
from ctower.rules.tasks import TaskBook
from ctower.schemas.actions import ActionOrder, ActionStatus
from ctower.schemas.control import Alert, CouponSignal, DeadLetter, PickupLevel, StockLevel
from ctower.schemas.control import encoder as control_encoder
from ctower.schemas.events import (
    MINUTE,
    Event,
    Inventory,
    Logistics,
    Order,
    Pickup,
    Scan,
    Service,
)
from ctower.schemas.master_data import MasterData, load_master_data
from ctower.schemas.tasks import ShipmentTask
from ctower.schemas.wire import reject
from ctower.settings import Settings, SettingsError
from ctower.streams.batch_writer import BatchedChangelog, BatchWriter
from ctower.streams.faust_parts import raw_topic
from ctower.streams.processing import RawMessage
from ctower.streams.shadow import ShadowRules
from ctower.topics import partition_for

log = logging.getLogger(__name__)

_CHUNK = 4_000
"""Items per message on the internal topics (about 200 kB of msgpack)."""

_KNOWN_KEYS = 1 << 16
"""Keys whose partition a forwarder keeps at most (SKUs: a catalogue's worth)."""
_sku_of = attrgetter("sku")

_stock_moves = msgspec.msgpack.Decoder(list[StockMove])
_lane_events = msgspec.msgpack.Decoder(list[LaneEvent])
_shipping_events = msgspec.msgpack.Decoder(list[ShippingEvent])
_action_status = msgspec.json.Decoder(ActionStatus | list[ActionStatus])
_pack = msgspec.msgpack.Encoder().encode


def _decode_action_status(raw: bytes) -> list[ActionStatus]:
    """One answer or a JSON array of them."""
    found = _action_status.decode(raw)
    return found if isinstance(found, list) else [found]


class Forwarder:
    """Items re-keyed to an internal topic, sent per destination partition at flush.

    A source message's items never straddle two arrays: the receiving rules
    recognise a replayed message by (source, offset) at its first item.
    """

    def __init__(self, topic: faust.TopicT, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.pending: dict[int, list[tuple[tuple[int, int], list[Any]]]] = defaultdict(list)
        self.sent = 0
        self.records = 0
        self._partition_of: dict[str, int] = {}
        """Key -> partition, for :meth:`add_each` (cleared past ``_KNOWN_KEYS``)."""

    def add(self, key: str, message: tuple[int, int], items: list[Any]) -> None:
        """Items of the source ``message`` (partition, offset) for ``key``'s partition."""
        self.pending[partition_for(key.encode(), self.partitions)].append((message, items))

    def add_each(
        self, message: tuple[int, int], items: list[Any], key_of: Callable[[Any], str]
    ) -> None:
        """Items of the source ``message``, each for its own key's partition.

        One group per partition, not per key: a message of 100 scans holds about
        80 SKUs, and grouping per SKU first cost a list, a partition lookup and
        an entry per SKU. The items of one key stay in their order.
        """
        known = self._partition_of
        groups: dict[int, list[Any]] = {}
        for item in items:
            key = key_of(item)
            partition = known.get(key)
            if partition is None:
                if len(known) >= _KNOWN_KEYS:
                    known.clear()
                partition = known[key] = partition_for(key.encode(), self.partitions)
            group = groups.get(partition)
            if group is None:
                groups[partition] = [item]
            else:
                group.append(item)
        for partition, group in groups.items():
            self.pending[partition].append((message, group))

    def flush(self) -> None:
        pending, self.pending = self.pending, defaultdict(list)
        for partition, groups in pending.items():
            chunk: list[Any] = []
            previous: tuple[int, int] | None = None
            for message, items in groups:
                if chunk and message != previous and len(chunk) + len(items) > _CHUNK:
                    self._send(partition, chunk)
                    chunk = []
                chunk.extend(items)
                previous = message
            if chunk:
                self._send(partition, chunk)

    def _send(self, partition: int, items: list[Any]) -> None:
        self.topic.send_soon(value=_pack(items), partition=partition)
        self.sent += len(items)
        self.records += 1


class RuleProcessor:
    """A rule family's agent body: decode arrays from an internal topic, apply, evaluate.

    Same interface as :class:`StreamProcessor` (``absorb``/``flush``/``stats``)
    so the app acks it the same way: persisted first, then acknowledged.
    ``persist`` writes the rule state when it is due and says whether
    everything absorbed so far is in the changelog (the batch may be acked).
    """

    def __init__(
        self,
        stream: str,
        topic: str,
        decode: Callable[[bytes], list[Any]],
        apply: Callable[[int, list[Any]], None],
        evaluate: Callable[[], None],
        state: RuleState[Any],
        persist: Callable[[], bool],
    ) -> None:
        self.stream = stream
        self.topic = topic
        self.decode = decode
        self.apply = apply
        self.evaluate = evaluate
        self.state = state
        self.persist = persist
        self.messages = 0
        self.items = 0
        self.bad = 0
        self.publish_dead_letter: Callable[[DeadLetter], None] | None = None
        """Where a message that cannot be decoded goes (set by the app)."""

    def absorb(self, message: RawMessage) -> None:
        self.messages += 1
        self.state.read(message.partition, message.offset)
        raw = message.value or b""
        try:
            items = self.decode(raw)
        except Exception as exc:  # our own topic: only a bug writes garbage here; never stop
            self.bad += 1
            rejected = reject(-1, raw, exc)
            log.warning(
                "undecodable message on %s:%d@%d (%s): dead-lettered",
                self.topic, message.partition, message.offset, rejected.reason,
            )
            if self.publish_dead_letter is not None:
                self.publish_dead_letter(DeadLetter.bounded(
                    source_topic=self.topic, partition=message.partition,
                    offset=message.offset, index=-1, reason=rejected.reason,
                    detail=rejected.detail, raw=raw, received_at=int(time.time() * 1000),
                ))
            return
        self.items += len(items)
        self.apply(message.partition, items)

    def position(self, partition: int) -> int:
        return self.state.position(partition)

    def flush(self) -> bool:
        """Evaluate what the batch touched (alerts go out now); True when durable."""
        self.evaluate()
        return self.persist()

    def stats(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "items": self.items,
            "bad_messages": self.bad,
            "replayed_skips": self.state.replayed_skips,
        }


class DecisionLayer:
    """Everything the rules need in one worker, built once by ``build_app``."""

    def __init__(self, app: faust.App, settings: Settings, writer: BatchWriter) -> None:
        self.settings = settings
        try:
            self.watcher = RulesWatcher(settings.rules_file)
        except RulesError as exc:
            raise SettingsError(f"CTOWER_RULES_FILE: {exc}") from None
        self.master: MasterData | None = None
        if settings.master_data_file is not None:
            try:
                self.master = load_master_data(settings.master_data_file)
            except ValueError as exc:
                raise SettingsError(f"CTOWER_MASTER_DATA_FILE: {exc}") from None
        partitions = settings.topic_partitions
        self.table = app.Table(
            "rules-state",
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
        )
        self.writer = writer
        """Takes the rule state and the levels: the caller awaits its
        :meth:`BatchWriter.write` after :meth:`persist`, before acking."""
        changelog = BatchedChangelog(self.table, self.writer)

        def topic(name: str) -> faust.TopicT:
            return raw_topic(app, settings.topic(name))

        self.alerts_topic = topic("alerts")
        self.signals_topic = topic("coupon-signals")
        self.stock_levels_topic = topic("stock-levels")
        self.pickup_levels_topic = topic("pickup-levels")
        self.stock_moves_topic = topic("stock-moves")
        self.lanes_topic = topic("lanes")
        self.stock_moves = Forwarder(self.stock_moves_topic, partitions)
        self.lanes = Forwarder(self.lanes_topic, partitions)
        self.shipping_topic = topic("shipping")
        self.shipping = Forwarder(self.shipping_topic, partitions)
        self.alerts_sent = 0
        self.on_alert: Callable[[Alert], None] | None = None
        """Sees every alert sent (the event-to-alert histogram of /metrics)."""
        self.signals_sent = 0
        self._stock_levels: dict[bytes, StockLevel] = {}
        self._pickup_levels: dict[bytes, PickupLevel] = {}
        """Live levels since the last persist, the latest per key: a level is a
        gauge, its intermediate values within a second are noise downstream."""
        self.levels_sent = 0
        self.flushes = 0
        self.flushed_entities = 0
        self._flushed_at = time.monotonic()

        def book(family: str) -> AlertBook:
            return AlertBook(
                RuleState(changelog, f"alerts.{family}", AlertEntry),
                self.publish_alert,
                settings.language,
                lambda: int(self.rules.alerts.cooldown_minutes * MINUTE),
            )

        self.pickup = PickupRules(
            RuleState(changelog, "pickup", PickupQueue), book("pickup"),
            lambda: self.rules, self.master, self.publish_signal, self.publish_pickup_level,
            room=self.publish_signal,
        )
        self.actions_topic = topic("actions")
        stock_book = book("stock")
        self.actions = ActionBook(
            RuleState(changelog, "actions", ActionOrder), self.publish_action,
            lambda: settings.action_auto_approve_qty,
            lambda: int(self.rules.alerts.cooldown_minutes * MINUTE), stock_book,
        )
        self.stock = StockRulesEngine(
            RuleState(changelog, "stock", StockItem), stock_book,
            lambda: self.rules, self.master, self.publish_signal, self.publish_stock_level,
            actions=self.actions,
        )
        self.tasks_topic = topic("tasks")
        self.tasks = TaskBook(RuleState(changelog, "tasks", ShipmentTask), self.publish_task,
                              settings.language)
        self.lane_rules = LaneRules(RuleState(changelog, "lanes", Lane), book("lanes"),
                                    lambda: self.rules, tasks=self.tasks)
        self.service = ServiceRulesFamily(RuleState(changelog, "service", ServiceItem),
                                          book("service"), lambda: self.rules, self.master)
        self.shipping_rules = ShippingRules(
            RuleState(changelog, "shipping", AwaitedOrder), book("shipping"),
            lambda: self.rules, self.master, self.publish_task, self._member_hint,
            settings.language,
        )
        # guide deliveries travel on the GUIDE lanes: the guide rules take the same arrays
        self.guides = GuideRulesFamily(RuleState(changelog, "guides", GuideStore),
                                       book("guides"), lambda: self.rules, self.master)
        self.processors = {
            "stock-moves": RuleProcessor(
                "stock-moves", settings.topic("stock-moves"), _stock_moves.decode,
                self.stock.apply, self.stock.evaluate_touched, self.stock.state,
                self.persist,
            ),
            "lanes": RuleProcessor(
                "lanes", settings.topic("lanes"), _lane_events.decode,
                self._apply_lane_events, self._evaluate_lanes, self.lane_rules.state,
                self.persist,
            ),
            "shipping": RuleProcessor(
                "shipping", settings.topic("shipping"), _shipping_events.decode,
                self.shipping_rules.apply, self._evaluate_shipping,
                self.shipping_rules.state, self.persist,
            ),
            # answers to the orders, keyed by SKU: beside the stock rules that issued them
            "action-status": RuleProcessor(
                "action-status", settings.topic("action-status"), _decode_action_status,
                self.actions.apply, self.stock.evaluate_touched, self.actions.state,
                self.persist,
            ),
        }
        self.shadow = ShadowRules.for_app(app, settings, self.master)
        """The candidate rules beside these (``CTOWER_SHADOW_RULES_FILE``), or None."""
        if self.shadow is not None:
            self.shadow.follow(self.processors)

    @property
    def rules(self) -> Rules:
        return self.watcher.rules

    def families(self) -> tuple[Any, ...]:
        return (
            self.pickup, self.stock, self.lane_rules, self.service, self.shipping_rules,
            self.guides,
        )

    def states(self) -> list[RuleState[Any]]:
        families = self.families()
        return [family.state for family in families] + [
            family.book.state for family in families] + [self.actions.state, self.tasks.state]

    def _apply_lane_events(self, partition: int, events: list[LaneEvent]) -> None:
        self.lane_rules.apply(partition, events)
        self.guides.apply(partition, events)

    def _evaluate_lanes(self) -> None:
        """After a lanes batch: nothing more than what ``apply`` judged as event
        time passed. Lane and guide alerts are about minutes (silence, staleness,
        late deliveries) and the tick judges every lane and store each second,
        so judging the touched ones again at every batch (five a second on a
        live stream, each a walk over the lane's open shipments) only cost: at
        10,000 events/s it was a twentieth of the worker's time."""

    # -------------------------------------------------------------- outputs
    def _publish(self, topic: faust.TopicT, key: str, value: bytes) -> None:
        """A decision record through the batch writer, on the partition Kafka's
        default partitioner gives its key. Not Faust's ``send_soon``: a burst
        of more than 100 (a replay opening alerts by the thousand) stalled the
        consumer until its buffer ebbed, seen with two workers draining a
        backlog; the writer's batches go out with the rule state."""
        self.writer.add_keyed(
            topic.get_topic_name(), self.settings.topic_partitions, key.encode(), value
        )

    def publish_alert(self, alert: Alert) -> None:
        self.alerts_sent += 1
        self._publish(self.alerts_topic, alert.alert_id, control_encoder.encode(alert))
        log.info("alert %s %s: %s", alert.status, alert.key, alert.message)
        if self.on_alert is not None:
            self.on_alert(alert)

    def publish_action(self, order: ActionOrder) -> None:
        self._publish(self.actions_topic, order.order_id, control_encoder.encode(order))
        log.info("action order %s %s: %s %d of %s from %s to %s", order.order_id, order.status,
                 order.kind, order.qty, order.sku, order.source, order.destination)

    def publish_task(self, task: ShipmentTask) -> None:
        self._publish(self.tasks_topic, task.task_id, control_encoder.encode(task))

    def _member_hint(self, lane: str, items: list[LaneEvent]) -> None:
        """Which member a shipment is for, from the shipping rules to its lane's rules."""
        self.lanes.add(lane, (-1, items[0].offset), items)

    def _evaluate_shipping(self) -> None:
        """After a shipping batch: judge, and send the members found to the lanes."""
        self.shipping_rules.evaluate_touched()
        self.lanes.flush()

    def publish_signal(self, signal: CouponSignal) -> None:
        self.signals_sent += 1
        self.writer.add(
            self.signals_topic.get_topic_name(),
            campaign_partition(signal.campaign_id, self.settings.topic_partitions),
            signal.key().encode(),
            control_encoder.encode(signal),
        )

    def publish_stock_level(self, level: StockLevel) -> None:
        self._stock_levels[f"{level.location_id}|{level.sku}".encode()] = level

    def publish_pickup_level(self, level: PickupLevel) -> None:
        self._pickup_levels[level.store_id.encode()] = level

    def _send_levels(self) -> None:
        partitions = self.settings.topic_partitions
        for topic, pending in (
            (self.stock_levels_topic, self._stock_levels),
            (self.pickup_levels_topic, self._pickup_levels),
        ):
            name = topic.get_topic_name()
            for key, level in pending.items():
                self.writer.add_keyed(name, partitions, key, control_encoder.encode(level))
            self.levels_sent += len(pending)
            pending.clear()

    # ---------------------------------------------------------- persisting
    def persist(self, force: bool = False) -> bool:
        """Write the levels and the rule state if due; True when nothing is left unwritten.

        "Written" means added to :attr:`writer`; the caller awaits its
        ``write()`` before acknowledging anything this covers.

        Due once ``FLUSH_INTERVAL_S`` has passed since the last write, or when
        ``FLUSH_MAX_DIRTY`` entities wait. Levels go first: a level is only
        re-published when it changes, so the state recording it as published
        must not reach the changelog before the level itself.
        """
        states = self.states()
        unflushed = sum(state.unflushed() for state in states)
        if not unflushed and not self._stock_levels and not self._pickup_levels:
            return True
        now = time.monotonic()
        if not force and unflushed < FLUSH_MAX_DIRTY and now - self._flushed_at < FLUSH_INTERVAL_S:
            return False
        self._send_levels()
        for state in states:
            self.flushed_entities += state.flush_all()
        self.flushes += 1
        self._flushed_at = now
        return True

    # ------------------------------------------------ hooks on the stream agents
    def observer(self, stream: str) -> Callable[[int, int, list[Event]], None] | None:
        """What the rules take from a stream's decoded events, if anything."""
        return {
            "scan": self._scans,
            "order": self._orders,
            "inventory": self._inventory,
            "logistics": self._logistics,
            "pickup": self._pickups,
            "service": self._service,
        }.get(stream)

    def after_flush(self, stream: str) -> Callable[[], bool | None] | None:
        if stream in ("scan", "inventory"):
            return self.stock_moves.flush
        if stream == "order":
            return self._flush_orders
        if stream == "logistics":
            return self._flush_logistics
        if stream == "pickup":
            return self._flush_pickup
        if stream == "service":
            return self._flush_service
        return None

    def _scans(self, partition: int, offset: int, events: list[Event]) -> None:
        source = f"scan:{partition}"
        counts: dict[tuple[str, str, int], list[int]] = {}
        scans: list[Scan] = events  # type: ignore[assignment]  # the scan stream's
        for ev in scans:  # half the events of the worker: kept to the bone
            ts: int = ev.ts  # type: ignore[assignment]
            bucket = (ev.store_id, ev.sku, ts - ts % MINUTE)
            slot = counts.get(bucket)
            if slot is None:
                counts[bucket] = [1, ts]
            else:
                slot[0] += 1
                if ts > slot[1]:
                    slot[1] = ts
        moves = [StockMove(store, sku, "scan", n, ts, source, offset)
                 for (store, sku, _), (n, ts) in counts.items()]
        self.stock_moves.add_each((partition, offset), moves, _sku_of)

    def _flush_orders(self) -> None:
        self.stock_moves.flush()
        self.shipping.flush()

    def _flush_logistics(self) -> None:
        self.lanes.flush()
        self.shipping.flush()

    def _orders(self, partition: int, offset: int, events: list[Event]) -> None:
        source = f"order:{partition}"
        moves: list[StockMove] = []
        by_order: dict[str, list[ShippingEvent]] = defaultdict(list)
        for ev in events:
            assert isinstance(ev, Order)
            if ev.status != "created" and ev.fulfillment in SHIPPED_FULFILMENTS:
                by_order[ev.order_id].append(ShippingEvent(
                    ev.order_id, ev.status, ev.ts, source, offset, ev.member_id,  # type: ignore[arg-type]
                    ev.store_id, ev.fulfillment))
            if ev.status != "paid":
                continue
            location = ev.stock_location
            for line in ev.lines:
                moves.append(
                    StockMove(location, line.sku, "sale", line.qty, ev.ts, source, offset)  # type: ignore[arg-type]
                )
        if moves:
            self.stock_moves.add_each((partition, offset), moves, _sku_of)
        for order_id, items in by_order.items():
            self.shipping.add(order_id, (partition, offset), items)

    def _inventory(self, partition: int, offset: int, events: list[Event]) -> None:
        source = f"inventory:{partition}"
        moves: list[StockMove] = []
        for ev in events:
            assert isinstance(ev, Inventory)
            moves.append(
                StockMove(ev.location_id, ev.sku, ev.kind, ev.qty, ev.ts, source, offset)  # type: ignore[arg-type]
            )
        self.stock_moves.add_each((partition, offset), moves, _sku_of)

    def _logistics(self, partition: int, offset: int, events: list[Event]) -> None:
        source = f"logistics:{partition}"
        by_lane: dict[str, list[LaneEvent]] = defaultdict(list)
        by_order: dict[str, list[ShippingEvent]] = defaultdict(list)
        for ev in events:
            assert isinstance(ev, Logistics)
            lane = f"{ev.carrier}|{ev.region}"
            by_lane[lane].append(
                LaneEvent(ev.shipment_id, ev.status, ev.ts, ev.eta, ev.carrier, ev.region,  # type: ignore[arg-type]
                          source, offset, ev.order_id, ev.district or "",
                          guide_id=ev.guide_id or "",
                          store=ev.origin_id if ev.origin_type == "guide" else "")
            )
            by_order[ev.order_id].append(ShippingEvent(
                ev.order_id, "shipment", ev.ts, source, offset, shipment_id=ev.shipment_id,  # type: ignore[arg-type]
                status=ev.status, carrier=ev.carrier, region=ev.region))
        for lane, items in by_lane.items():
            self.lanes.add(lane, (partition, offset), items)
        for order_id, items in by_order.items():
            self.shipping.add(order_id, (partition, offset), items)

    def _pickups(self, partition: int, offset: int, events: list[Event]) -> None:
        pickups: Iterable[Pickup] = events  # type: ignore[assignment]
        self.pickup.apply(partition, f"pickup:{partition}", offset, pickups)
        if self.shadow is not None:
            self.shadow.pickups(partition, f"pickup:{partition}", offset, pickups)

    def _flush_pickup(self) -> bool:
        """After a pickup batch: evaluate now, write when due; True when durable."""
        self.pickup.evaluate_touched()
        if self.shadow is not None:
            self.shadow.evaluate_pickups()
        return self.persist()

    def _service(self, partition: int, offset: int, events: list[Event]) -> None:
        tickets: Iterable[Service] = events  # type: ignore[assignment]
        self.service.apply(partition, f"service:{partition}", offset, tickets)
        if self.shadow is not None:
            self.shadow.service(partition, f"service:{partition}", offset, tickets)

    def _flush_service(self) -> bool:
        """After a service batch: evaluate now, write when due; True when durable."""
        self.service.evaluate_touched()
        if self.shadow is not None:
            self.shadow.evaluate_service()
        return self.persist()

    # ----------------------------------------------------------------- timer
    def tick(self) -> None:
        """Every second: re-read the rules if changed, let time pass, persist."""
        self.watcher.check()
        for family in self.families():
            family.tick()
        if self.shadow is not None:
            self.shadow.tick()
        self.persist(force=True)

    def adopt(self, partitions: Iterable[int]) -> None:
        owned = list(partitions)
        for state in self.states():
            state.adopt(owned)

    def drop(self, partition: int) -> None:
        for state in self.states():
            state.drop(partition)
        self.actions.forget(partition)
        self.tasks.forget(partition)
        self.shipping_rules.forget(partition)
        if self.shadow is not None:
            self.shadow.drop(partition)

    def stats(self) -> dict[str, object]:
        return {
            "rules_version": self.watcher.version,
            "rules_error": self.watcher.last_error,
            "shadow": self.shadow.stats() if self.shadow is not None else None,
            "master_data_stores": len(self.master.stores) if self.master is not None else 0,
            "alerts_sent": self.alerts_sent,
            "signals_sent": self.signals_sent,
            "moves_forwarded": self.stock_moves.sent,
            "move_records": self.stock_moves.records,
            "lane_events_forwarded": self.lanes.sent,
            "lane_records": self.lanes.records,
            "shipping_events_forwarded": self.shipping.sent,
            "shipping_records": self.shipping.records,
            "not_shipped": dict(self.shipping_rules.stats),
            "stock_judgements": self.stock.judgements,
            "actions": dict(self.actions.stats),
            "tasks": dict(self.tasks.stats),
            "levels_sent": self.levels_sent,
            "batched_records": self.writer.records,
            "batches": self.writer.batches,
            "state_flushes": self.flushes,
            "state_entities_written": self.flushed_entities,
            **{name: proc.stats() for name, proc in self.processors.items()},
        }
