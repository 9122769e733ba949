"""The coupon service on the Faust workers: the ledger's table, its agents and HTTP API.

Where a campaign lives: on partition ``murmur2(campaign_id) % n``, the
partition of its coupon events. Policies (``ct.coupon-policy``) and signals
(``ct.coupon-signals``) are written to that same partition explicitly, and
the ledger's changelog records go there too. Faust's assignor hands the
same partition number of co-partitioned topics (same partition count, same
subscribers) to one worker, so the worker that reads a campaign's policies
also holds its counts and answers its reservations. Requests that reach
another worker are forwarded to the owner (Faust's own ``table_route``
drops a POST's body, so the forwarding is done here, from the assignor's
table metadata).

Durability: a reservation is counted in memory at once (the check and the
increment cannot interleave with another request), and the answer waits
until its records are acknowledged by Kafka, so a granted reservation
survives a crash. Reservations that arrive in the same turn of the event
loop share one write (a group commit). Counts from the coupon stream are
written by :meth:`CouponService.flush`, which the stream's agent must call
before it acknowledges the messages it passed to :meth:`observe_coupons`.

HTTP (JSON), on every worker:

- ``POST /coupons/{campaign}/reserve`` ``{"store_id", "member_id"}``: granted or
  not, the reason, what remains, the reservation id to issue the coupon with.
- ``GET /coupons/{campaign}/status?store=S``: policies, counts, state.
- ``POST /coupons/{campaign}/policy``: set a policy (fields not given are kept).
- ``GET /coupons/``: partitions assigned and owned here (and, while they differ,
  the rebalance flags saying why), and counters.

Reservations and policy changes need ``Authorization: Bearer <CTOWER_COUPON_API_TOKEN>``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import aiohttp
import faust
import msgspec
from faust.types import TP
from faust.web import Request, Response, View
from msgspec import UNSET, Meta, Struct, UnsetType

from ctower.coupons.policy import (
    PolicyError,
    campaign_partition,
    check_policy,
    policy_key,
)
from ctower.schemas.control import (
    ALL_STORES,
    CouponDecision,
    CouponPolicy,
    CouponSignal,
    DeadLetter,
)
from ctower.schemas.control import encoder as control_encoder
from ctower.schemas.events import Coupon
from ctower.schemas.master_data import MasterData, load_master_data
from ctower.schemas.wire import reject
from ctower.settings import Settings
from ctower.streams.batch_writer import AckedChangelog, complete_when_all, faust_producer
from ctower.streams.faust_parts import raw_topic, rebalance_state, tables_recovered
from ctower.tables.coupon_ledger import CouponLedger

log = logging.getLogger(__name__)

TABLE_NAME = "coupon-ledger"
FORWARDED_HEADER = "X-Ctower-Forwarded"
"""Set on a request one worker forwards to another; it is never forwarded again."""

LEDGER_CHANGELOG_CONFIGS = {
    # counters and remembered ids of ended windows are tombstoned; small
    # segments let compaction drop them, so recovery reads recent state
    "segment.ms": 600_000,
    "min.cleanable.dirty.ratio": 0.1,
    "delete.retention.ms": 600_000,
}

DURABLE_TIMEOUT = 10.0
"""Longest wait for Kafka to acknowledge a reservation before answering 503."""

Id = Annotated[str, Meta(min_length=1, max_length=128)]


class ReserveBody(Struct, forbid_unknown_fields=True):
    store_id: Id
    member_id: Id


class PolicyBody(Struct, forbid_unknown_fields=True, kw_only=True):
    """A policy change; fields left out keep their value in force."""

    store_id: Id | None = None
    cap_per_window: int | UnsetType | None = UNSET
    window_seconds: int | UnsetType = UNSET
    per_member_limit: int | UnsetType | None = UNSET
    paused: bool | UnsetType = UNSET
    shift_share: float | UnsetType | None = UNSET
    set_by: Annotated[str, Meta(min_length=1, max_length=128)] = "api"


_reserve_decoder = msgspec.json.Decoder(ReserveBody)
_policy_body_decoder = msgspec.json.Decoder(PolicyBody)
_policy_decoder = msgspec.json.Decoder(CouponPolicy)
_signal_decoder = msgspec.json.Decoder(CouponSignal)
_json = msgspec.json.Encoder()


class CouponService:
    """The ledger of the campaigns on this worker's partitions, and its I/O."""

    def __init__(self, app: faust.App, settings: Settings, master: MasterData | None) -> None:
        self.app = app
        self.settings = settings
        self.partitions = settings.topic_partitions
        self.on_reserved: Callable[[float], None] | None = None
        self.table = app.Table(
            TABLE_NAME,
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.topic_partitions,
            extra_topic_configs=LEDGER_CHANGELOG_CONFIGS,
        )
        self.changelog = AckedChangelog(self.table, lambda: faust_producer(app))
        self.ledger = CouponLedger(
            table=self.changelog,
            default_window_ms=settings.coupon_default_window_seconds * 1000,
            known_campaigns=_known_campaigns(master),
            campaign_stores=_campaign_stores(master),
            neighbours=_neighbours(master),
        )

        self.policy_topic = raw_topic(app, settings.topic("coupon-policy"))
        self.signal_topic = raw_topic(app, settings.topic("coupon-signals"))
        self.decision_topic = raw_topic(app, settings.topic("coupon-decisions"))
        self.dead_letter_topic = raw_topic(app, settings.topic("dead-letter"))
        self.co_partitioned = [settings.topic(name) for name in ("coupon", "coupon-policy",
                                                                 "coupon-signals")]
        self.layout_error: str | None = None
        self._layout_checked = False
        self._batches: dict[int, asyncio.Future[None]] = {}
        # murmur2 is pure Python in kafka-python (about 10 µs); campaigns are few
        self.partition_of: Callable[[str], int] = functools.lru_cache(maxsize=65536)(
            functools.partial(_partition_of, partitions=self.partitions)
        )

    # ------------------------------------------------------------ ownership
    def _active_partitions(self) -> set[int]:
        """Campaign partitions assigned here: those of ``ct.coupon-policy``.

        Not the changelog's own assignment: on a first start Faust creates the
        changelog topic while the group is joining, and the first assignment
        leaves it out ("Ignoring missing topic") until the next rebalance. The
        policy topic is co-partitioned with it and always exists, and a
        changelog left out is a new, empty one.
        """
        topic = self.policy_topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def ready(self, partition: int) -> bool:
        """Whether this worker may answer for the partition now (owned and recovered)."""
        if not tables_recovered(self.app):
            return False
        if self.ledger.owns(partition):
            return True
        if partition in self._active_partitions():
            self.ledger.adopt([partition])
            return True
        return False

    def owner_url(self, partition: int) -> str | None:
        """The web URL of the worker the campaign partition is assigned to, by
        the assignment Faust shares with every member."""
        topic = self.policy_topic.get_topic_name()
        for url, topics in self.app.router.external_topics_metadata().items():
            if partition in topics.get(topic, ()):
                return url
        return None

    def check_layout(self) -> None:
        """Once the consumer knows the topics: the ledger's partitioning
        (``settings.topic_partitions``) must be the coupon topics' own, or a
        campaign's policies, events and counts would not meet on one worker."""
        if self._layout_checked or self.app.consumer is None:
            return
        counts = {topic: self.app.consumer.topic_partitions(topic)
                  for topic in self.co_partitioned}
        if any(count is None for count in counts.values()):
            return
        self._layout_checked = True
        wrong = {t: c for t, c in counts.items() if c != self.partitions}
        if wrong:
            self.layout_error = (
                f"topics {wrong} do not have CTOWER_TOPIC_PARTITIONS={self.partitions} "
                "partitions; coupon caps cannot be enforced until they match"
            )
            log.error("%s", self.layout_error)

    # ---------------------------------------------------------- stream input
    def observe_coupons(self, partition: int, offset: int, events: list[Coupon]) -> None:
        """Count the ``issued`` coupons of one ``ct.coupon`` message.

        Called by the coupon stream's agent for every message it decoded;
        :meth:`flush` must run before that agent acknowledges the message.
        """
        if events:
            self.ledger.observe(partition, offset, events, int(time.time() * 1000))

    def flush(self) -> None:
        """Write what changed (the coupon stream's counts among it) to the changelog."""
        self.ledger.flush_all()

    async def handed_over(self) -> None:
        """Return once what :meth:`flush` wrote is in the producer: the coupon
        stream's messages are acknowledged only then (Faust's commit flushes
        the producer, not what has yet to reach it)."""
        await self.changelog.handed_over()

    def on_policy(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        if value is None:  # a deleted key of the compacted topic: the policy is lifted
            campaign_id, _, store = (key or b"").decode(errors="replace").partition("|")
            if not campaign_id:
                return
            scope = None if store in ("", ALL_STORES) else store
            self._apply("coupon-policy", partition, campaign_id, b"", lambda: (
                self.ledger.apply_policy(partition, offset, campaign_id, scope, None)
            ))
            return
        try:
            policy = _policy_decoder.decode(value)
            check_policy(policy)
        except Exception as exc:  # any bytes: a dead letter, never a crash
            self._dead_letter("coupon-policy", partition, offset, value, exc)
            return
        self._apply("coupon-policy", partition, policy.campaign_id, value, lambda: (
            self.ledger.apply_policy(partition, offset, policy.campaign_id, policy.store_id, policy)
        ))

    def on_signal(self, partition: int, offset: int, value: bytes | None) -> None:
        if value is None:
            return
        try:
            signal = _signal_decoder.decode(value)
        except Exception as exc:  # any bytes: a dead letter, never a crash
            self._dead_letter("coupon-signals", partition, offset, value, exc)
            return
        self._apply("coupon-signals", partition, signal.campaign_id, value, lambda: (
            self.ledger.apply_signal(partition, offset, signal)
        ))

    def _apply(
        self,
        stream: str,
        partition: int,
        campaign_id: str,
        value: bytes,
        change: Callable[[], list[CouponDecision]],
    ) -> None:
        expected = self.partition_of(campaign_id)
        if expected != partition:
            # the ledger of this campaign is elsewhere: applying it here would be lost
            self._dead_letter(
                stream, partition, -1, value, ValueError(
                    f"campaign {campaign_id!r} belongs on partition {expected}, "
                    f"not {partition}: write it with campaign_partition()"
                ),
            )
            return
        self.publish_decisions(change())
        self.ledger.flush(partition)  # Faust flushes the producer before it commits

    def publish_decisions(self, decisions: Iterable[CouponDecision]) -> None:
        for decision in decisions:
            self.decision_topic.send_soon(
                key=f"{decision.campaign_id}|{decision.store_id}".encode(),
                value=control_encoder.encode(decision),
                partition=self.partition_of(decision.campaign_id),
            )
            log.info(
                "coupon decision: %s at %s %s (%s)",
                decision.campaign_id, decision.store_id, decision.state, decision.reason,
            )

    def _dead_letter(
        self, stream: str, partition: int, offset: int, raw: bytes, exc: Exception
    ) -> None:
        rejected = reject(-1, raw, exc)
        log.warning(
            "bad record on %s[%d]@%d: %s: %s",
            stream, partition, offset, rejected.reason, rejected.detail[:200],
        )
        record = DeadLetter.bounded(
            source_topic=self.settings.topic(stream), partition=partition, offset=offset,
            index=-1, reason=rejected.reason, detail=rejected.detail, raw=raw,
            received_at=int(time.time() * 1000),
        )
        self.dead_letter_topic.send_soon(
            key=record.dedup_key().encode(), value=control_encoder.encode(record)
        )

    # ------------------------------------------------------------ upkeep
    async def tick(self) -> None:
        """Every second: adopt recovered partitions, forget ended windows, write."""
        self.check_layout()
        if tables_recovered(self.app):
            self.ledger.adopt(self._active_partitions())
        self.ledger.purge(int(time.time() * 1000))
        self.ledger.flush_all()

    async def on_revoked(self, revoked: set[TP]) -> None:
        """Write what is pending while the partitions are still ours, then let go;
        reservations for them are refused (503) until they are recovered here
        or elsewhere."""
        self.ledger.flush_all()
        pending = [fut for p in self.ledger.owned() for fut in self.ledger.unacked(p)]
        if pending:
            await asyncio.wait(pending, timeout=DURABLE_TIMEOUT)
        for partition in self.ledger.owned():
            self.ledger.drop(partition)

    def durable(self, partition: int) -> asyncio.Future[None]:
        """A future done once the partition's changes so far are acknowledged by Kafka.

        Callers in the same turn of the event loop share one write and one
        future; it fails after ``DURABLE_TIMEOUT`` rather than hang a request.
        """
        batch = self._batches.get(partition)
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._batches[partition] = loop.create_future()
            loop.call_soon(self._write_batch, partition, batch)
        return batch

    def _write_batch(self, partition: int, batch: asyncio.Future[None]) -> None:
        del self._batches[partition]
        try:
            self.ledger.flush(partition)
        except Exception as exc:
            batch.set_exception(exc)
            return
        # every write in flight, not only this flush's: the counts of these
        # callers may have left with the upkeep's or a policy's flush
        sent = self.ledger.unacked(partition)
        if not sent:
            batch.set_result(None)
            return
        loop = asyncio.get_running_loop()

        def time_out() -> None:
            if not batch.done():
                batch.set_exception(TimeoutError(
                    f"Kafka did not acknowledge within {DURABLE_TIMEOUT:.0f} s"
                ))

        timer = loop.call_later(DURABLE_TIMEOUT, time_out)
        batch.add_done_callback(lambda _: timer.cancel())
        complete_when_all(sent, batch)

    # ------------------------------------------------------------------ HTTP
    def _auth_error(self, view: View, request: Request) -> Response | None:
        token = self.settings.coupon_api_token
        if not token:
            return view.error(
                503,
                "the coupon API is disabled on this worker: the setting "
                "CTOWER_COUPON_API_TOKEN is not set",
            )
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.get_secret_value().encode()
        ):
            return view.json(
                {"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="coupons"'},
            )
        return None

    async def _locate(
        self, view: View, request: Request, campaign_id: str
    ) -> tuple[int | None, Response | None]:
        """The campaign's partition if it is answered here, or the response
        to return instead (forwarded to the owner, or an error)."""
        if not 0 < len(campaign_id) <= 128:
            return None, view.error(400, "campaign id: 1 to 128 characters")
        if self.layout_error:
            return None, view.error(503, self.layout_error)
        partition = self.partition_of(campaign_id)
        if self.ready(partition):
            return partition, None
        if tables_recovered(self.app) and not request.headers.get(FORWARDED_HEADER):
            owner = self.owner_url(partition)
            if owner and owner.rstrip("/") != str(self.app.conf.canonical_url).rstrip("/"):
                return None, await self._forward(view, request, owner, campaign_id)
        return None, view.json(
            {"error": f"partition {partition} of campaign {campaign_id!r} is being "
                      "assigned or recovered; retry shortly"},
            status=503, headers={"Retry-After": "1"},
        )

    async def _forward(
        self, view: View, request: Request, owner: str, campaign_id: str
    ) -> Response:
        url = f"{owner.rstrip('/')}{request.rel_url}"  # aiohttp's path_qs
        headers = {FORWARDED_HEADER: "1"}
        for name in ("Authorization", "Content-Type"):
            if name in request.headers:
                headers[name] = request.headers[name]
        body = await request.read()
        timeout = aiohttp.ClientTimeout(total=self.settings.coupon_route_timeout_seconds)
        try:
            async with self.app.http_client.request(
                request.method, url, headers=headers, data=body, timeout=timeout
            ) as answer:
                payload = await answer.read()
                return view.bytes(
                    payload, content_type=answer.content_type, status=answer.status,
                    headers={"Retry-After": answer.headers["Retry-After"]}
                    if "Retry-After" in answer.headers else None,
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            return view.json(
                {"error": f"the worker owning campaign {campaign_id!r} ({owner}) did not "
                          f"answer: {type(exc).__name__}"},
                status=503, headers={"Retry-After": "1"},
            )

    def _unknown(self, view: View, campaign_id: str) -> Response:
        return view.error(
            404, f"unknown campaign {campaign_id!r}: no policy set for it and not in master data"
        )

    async def handle_reserve(self, view: View, request: Request, campaign_id: str) -> Response:
        refused = self._auth_error(view, request)
        if refused is not None:
            return refused
        partition, answer = await self._locate(view, request, campaign_id)
        if partition is None:
            assert answer is not None
            return answer
        try:
            body = _reserve_decoder.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return view.error(
                400, f'bad body, expected {{"store_id": "...", "member_id": "..."}}: {exc}'
            )
        if not self.ledger.is_known(partition, campaign_id):
            return self._unknown(view, campaign_id)
        reservation = self.ledger.reserve(
            partition, campaign_id, body.store_id, body.member_id, int(time.time() * 1000)
        )
        if reservation.granted:
            try:
                await self.durable(partition)
            except Exception as exc:  # a grant that is not durable must not be given
                log.error("reservation for %s not persisted: %s", campaign_id, exc)
                return view.json(
                    {"error": f"the reservation could not be made durable: {exc}"},
                    status=503, headers={"Retry-After": "1"},
                )
        return view.bytes(_json.encode(reservation), content_type="application/json")

    async def handle_status(self, view: View, request: Request, campaign_id: str) -> Response:
        partition, answer = await self._locate(view, request, campaign_id)
        if partition is None:
            assert answer is not None
            return answer
        if not self.ledger.is_known(partition, campaign_id):
            return self._unknown(view, campaign_id)
        store = request.query.get("store") or None
        status = self.ledger.status(partition, campaign_id, store, int(time.time() * 1000))
        status["worker"] = str(self.app.conf.canonical_url)
        return view.bytes(_json.encode(status), content_type="application/json")

    async def handle_policy(self, view: View, request: Request, campaign_id: str) -> Response:
        refused = self._auth_error(view, request)
        if refused is not None:
            return refused
        partition, answer = await self._locate(view, request, campaign_id)
        if partition is None:
            assert answer is not None
            return answer
        try:
            body = _policy_body_decoder.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return view.error(400, f"bad policy body: {exc}")
        current = self.ledger.policy(partition, campaign_id, body.store_id)
        fields = msgspec.structs.asdict(current) if current else {}
        for name in ("cap_per_window", "window_seconds", "per_member_limit", "paused",
                     "shift_share"):
            value = getattr(body, name)
            if value is not UNSET:
                fields[name] = value
        fields.update(
            campaign_id=campaign_id, store_id=body.store_id, set_by=body.set_by,
            set_at=int(time.time() * 1000),
        )
        try:
            policy = CouponPolicy(**fields)
            check_policy(policy)
        except (TypeError, PolicyError) as exc:
            return view.error(400, f"bad policy: {exc}")
        try:
            sent = await self.policy_topic.send(
                key=policy_key(campaign_id, body.store_id),
                value=control_encoder.encode(policy),
                partition=partition,
            )
            await asyncio.wait_for(sent, DURABLE_TIMEOUT)
        except Exception as exc:
            return view.json({"error": f"the policy could not be written: {exc}"}, status=503)
        return view.json(
            {"policy": msgspec.to_builtins(policy), "note": "written; in force within a second"},
            status=202,
        )

    def overview(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "owned_partitions": self.ledger.owned(),
            "assigned_partitions": sorted(self._active_partitions()),
            "rebalance": rebalance_state(self.app),
            "worker": str(self.app.conf.canonical_url),
            "stats": dict(self.ledger.stats),
            "layout_error": self.layout_error,
        }


def _partition_of(campaign_id: str, partitions: int) -> int:
    return campaign_partition(campaign_id, partitions)


def _known_campaigns(master: MasterData | None) -> Callable[[str], bool]:
    if master is None:
        return lambda campaign_id: False
    campaigns = master.campaign_by_id
    return campaigns.__contains__


def _campaign_stores(master: MasterData | None) -> Callable[[str], list[str]]:
    """The stores a campaign runs in (its regions; all stores when it names none)."""
    if master is None:
        return lambda campaign_id: []

    def stores(campaign_id: str) -> list[str]:
        campaign = master.campaign_by_id.get(campaign_id)
        if campaign is None:
            return []
        return [
            s.store_id for s in master.stores
            if not campaign.regions or s.region_id in campaign.regions
        ]

    return stores


def _neighbours(master: MasterData | None) -> Callable[[str], list[tuple[str, float]]]:
    """The nearest stores of a store's region, with km (master data does not change
    while the worker runs, so each store's list is worked out once)."""
    if master is None:
        return lambda store_id: []
    return functools.lru_cache(maxsize=4096)(lambda store_id: master.nearest_stores(store_id, 5))


def install_coupon_service(app: faust.App, settings: Settings) -> CouponService:
    """Declare the ledger's table, the policy and signal agents, the 1 s upkeep
    timer, the revocation hook and the HTTP views on ``app``."""
    master = load_master_data(settings.master_data_file) if settings.master_data_file else None
    service = CouponService(app, settings, master)

    @app.agent(service.policy_topic, name="coupon-policy-agent")
    async def coupon_policies(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            service.on_policy(message.partition, message.offset, message.key, message.value)

    @app.agent(service.signal_topic, name="coupon-signal-agent")
    async def coupon_signals(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            service.on_signal(message.partition, message.offset, message.value)

    @app.timer(interval=1.0)
    async def coupon_upkeep() -> None:
        await service.tick()

    # faust sends the revoked set positionally; mode's handler type wants *args
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def coupon_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        await service.on_revoked(revoked)

    @app.page("/coupons/{campaign}/reserve", name="coupon_reserve")
    class Reserve(View):
        async def post(self, request: Request, campaign: str) -> Response:
            started = time.perf_counter()
            answer = await service.handle_reserve(self, request, campaign)
            if service.on_reserved is not None:  # the reservation histogram of /metrics
                service.on_reserved(time.perf_counter() - started)
            return answer

    @app.page("/coupons/{campaign}/status", name="coupon_status")
    class Status(View):
        async def get(self, request: Request, campaign: str) -> Response:
            return await service.handle_status(self, request, campaign)

    @app.page("/coupons/{campaign}/policy", name="coupon_policy")
    class Policy(View):
        async def post(self, request: Request, campaign: str) -> Response:
            return await service.handle_policy(self, request, campaign)

    @app.page("/coupons/", name="coupon_overview")
    async def overview(web: View, request: Request) -> Response:
        return web.json(service.overview())

    return service
