"""The coupon service on real worker processes: the session's Kafka broker,
``python -m ctower worker`` children, real HTTP with 50 concurrent clients,
the ``ctower coupons`` command, SIGKILL and a second worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import faust
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ctower.coupons.policy import campaign_partition, publish_policy
from ctower.coupons.service import CouponService
from ctower.cpu_slice import slice_ms
from ctower.schemas.control import CouponPolicy, CouponSignal
from ctower.schemas.control import encoder as control_encoder
from ctower.settings import Settings
from ctower.topics import ensure_topics

pytestmark = pytest.mark.kafka

TOKEN = "test-token-5b1f"
CONCURRENCY = 50
# Counts live in tumbling windows aligned to the epoch, so a test that runs
# across a window's edge sees its counts start again (CI once crossed 14:00
# UTC between a SIGKILL and the restart). The tests count in 31-day windows
# and start at least EDGE_MARGIN seconds before the next edge.
WINDOW_SECONDS = 31 * 86400
EDGE_MARGIN = 900


@pytest.fixture
def coupon_settings(settings_factory: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings counting in ``WINDOW_SECONDS``, made clear of a window's edge."""

    def make(**fields: Any) -> Settings:
        left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
        if left < EDGE_MARGIN:
            time.sleep(left + 1)
        return settings_factory(coupon_default_window_seconds=WINDOW_SECONDS, **fields)

    return make


def base(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.worker_web_port}"


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, None


def status(settings: Settings, campaign: str, store: str | None = None) -> dict[str, Any] | None:
    code, body = get_json(
        f"{base(settings)}/coupons/{campaign}/status" + (f"?store={store}" if store else "")
    )
    return body if code == 200 else None


def start_worker(
    settings: Settings, ctower_process: Callable[..., Any], poll: Callable[..., Any],
    name: str = "worker", partitions: int | None = 4,
) -> Any:
    """A worker, once it answers for ``partitions`` ledger partitions (None: any)."""
    worker = ctower_process(settings, name, "worker")
    worker.wait_http(f"{base(settings)}/coupons/")

    def ready() -> Any:
        assert worker.alive(), worker.log_tail()
        code, body = get_json(f"{base(settings)}/coupons/")
        owned = body["owned_partitions"] if code == 200 else []
        return owned if (len(owned) == partitions if partitions else owned) else None

    poll(ready, 90, f"{name} never owned its partitions", every=0.2)
    return worker


async def fire(
    url_for: Callable[[int], str], bodies: list[dict[str, Any]], token: str | None = TOKEN
) -> list[tuple[int, Any]]:
    """POST every body, ``CONCURRENCY`` at a time, each to ``url_for(index)``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(bodies)):
        queue.put_nowait(index)
    answers: list[tuple[int, Any]] = [(0, None)] * len(bodies)
    async with aiohttp.ClientSession(headers=headers) as session:

        async def client() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                async with session.post(url_for(index), json=bodies[index]) as answer:
                    answers[index] = (answer.status, await answer.json(content_type=None))

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return answers


def reserve_many(
    settings: Settings, campaign: str, bodies: list[dict[str, Any]]
) -> list[tuple[int, Any]]:
    url = f"{base(settings)}/coupons/{campaign}/reserve"
    return asyncio.run(fire(lambda _i: url, bodies))


def post(url: str, body: bytes, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def cli(settings: Settings, env_for: Callable[[Settings], dict[str, str]], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ctower", "coupons", *args],
        env=env_for(settings), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def policy(campaign: str, **fields: Any) -> CouponPolicy:
    return CouponPolicy(
        campaign_id=campaign, set_by="test", set_at=int(time.time() * 1000),
        window_seconds=WINDOW_SECONDS, **fields,
    )


def test_caps_are_exact_under_50_concurrent_clients(
    coupon_settings: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
    env_for: Callable[[Settings], dict[str, str]],
) -> None:
    settings = coupon_settings(coupon_api_token=TOKEN)
    ensure_topics(settings)
    start_worker(settings, ctower_process, poll)

    # policies set with the command; in force once the worker has them
    window = str(WINDOW_SECONDS)
    cli(settings, env_for, "cap", "CAP-A", "--cap", "100", "--window", window, "--by", "marketing")
    cli(settings, env_for, "cap", "CAP-B", "--cap", "1000", "--window", window, "--per-member", "3")
    poll(lambda: (status(settings, "CAP-A") or {}).get("policies"), 10, "CAP-A never in force")
    poll(lambda: (status(settings, "CAP-B") or {}).get("policies"), 10, "CAP-B never in force")

    # 400 requests of distinct members for a cap of 100
    answers = reserve_many(
        settings, "CAP-A", [{"store_id": f"S{i % 7}", "member_id": f"M{i}"} for i in range(400)]
    )
    assert {code for code, _ in answers} == {200}
    granted = [body for _, body in answers if body["granted"]]
    assert len(granted) == 100
    assert len({body["reservation_id"] for body in granted}) == 100
    assert Counter(body["reason"] for _, body in answers if not body["granted"]) == {
        "cap_reached": 300
    }
    assert min(body["remaining"]["campaign"] for body in granted) == 0
    answer = status(settings, "CAP-A", "S3")
    assert answer is not None
    assert answer["windows"]["*"]["count"] == 100
    assert answer["windows"]["S3"]["count"] == sum(1 for b in granted if b["store_id"] == "S3")

    # 20 members asking 10 times each, 3 per member
    answers = reserve_many(
        settings, "CAP-B", [{"store_id": "S1", "member_id": f"M{i % 20}"} for i in range(200)]
    )
    per_member = Counter(body["member_id"] for _, body in answers if body["granted"])
    assert per_member == {f"M{i}": 3 for i in range(20)}
    assert {body["reason"] for _, body in answers if not body["granted"]} == {"member_limit"}

    # a new cap is in force within a second of being written
    publish_policy(settings, policy("CAP-A", cap_per_window=150))
    written = time.monotonic()
    poll(lambda: (status(settings, "CAP-A") or {}).get("windows", {}).get("*", {}).get("cap")
         == 150, 1.0, "the new cap was not in force within 1 s", every=0.02)
    took = time.monotonic() - written
    answers = reserve_many(
        settings, "CAP-A", [{"store_id": "S1", "member_id": f"N{i}"} for i in range(120)]
    )
    assert sum(1 for _, body in answers if body["granted"]) == 50, f"(in force after {took:.2f} s)"

    # a pause with the command stops it; the status command shows it
    cli(settings, env_for, "pause", "CAP-B")
    poll(lambda: (status(settings, "CAP-B") or {}).get("state") == "paused", 5, "never paused")
    [(code, body)] = reserve_many(settings, "CAP-B", [{"store_id": "S1", "member_id": "Z"}])
    assert (code, body["granted"], body["reason"]) == (200, False, "paused")
    shown = cli(settings, env_for, "status", "CAP-B", "--store", "S1")
    assert "CAP-B: paused (policy_paused)" in shown and "60 issued, cap 1000" in shown
    cli(settings, env_for, "resume", "CAP-B")
    poll(lambda: (status(settings, "CAP-B") or {}).get("state") == "open", 5, "never resumed")
    assert (status(settings, "CAP-B") or {})["windows"]["*"]["cap"] == 1000  # the cap stayed


def test_bad_requests_get_clear_errors(
    coupon_settings: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
) -> None:
    settings = coupon_settings(coupon_api_token=TOKEN)
    ensure_topics(settings)
    start_worker(settings, ctower_process, poll)
    publish_policy(settings, policy("ERR", cap_per_window=5))
    poll(lambda: status(settings, "ERR"), 10, "ERR never in force")
    url = f"{base(settings)}/coupons/ERR/reserve"
    good = b'{"store_id": "S1", "member_id": "M1"}'

    code, body = post(url, good, None)
    assert code == 401 and "bearer token" in body["error"]
    assert post(url, good, "wrong")[0] == 401
    code, body = post(url, b"{not json", TOKEN)
    assert code == 400 and "malformed" in body["error"]
    code, body = post(url, b'{"store_id": "S1"}', TOKEN)
    assert code == 400 and "member_id" in body["error"]
    code, body = post(url, b'{"store_id": 7, "member_id": "M1"}', TOKEN)
    assert code == 400 and "store_id" in body["error"]
    code, body = post(f"{base(settings)}/coupons/NOPE/reserve", good, TOKEN)
    assert code == 404 and "unknown campaign 'NOPE'" in body["error"]
    assert get_json(f"{base(settings)}/coupons/NOPE/status")[0] == 404
    code, body = post(f"{base(settings)}/coupons/ERR/policy", b'{"cap_per_window": -3}', TOKEN)
    assert code == 400 and "cap_per_window" in body["error"]
    assert post(url, good, TOKEN)[0] == 200  # and a good one still works

    # a policy over HTTP, fields left out stay
    code, body = post(f"{base(settings)}/coupons/ERR/policy", b'{"per_member_limit": 1}', TOKEN)
    assert code == 202 and body["policy"]["cap_per_window"] == 5
    poll(lambda: (status(settings, "ERR") or {}).get("windows", {}).get("*", {})
         .get("per_member_limit") == 1, 5, "the HTTP policy was not applied")
    # members count from when a limit is set (per-member counts cost memory only then)
    assert post(url, good, TOKEN)[1]["granted"]
    code, body = post(url, good, TOKEN)
    assert (code, body["reason"]) == (200, "member_limit")


def test_without_a_token_the_api_refuses_and_names_the_setting(
    coupon_settings: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
) -> None:
    settings = coupon_settings()  # no CTOWER_COUPON_API_TOKEN
    ensure_topics(settings)
    worker = start_worker(settings, ctower_process, poll)
    code, body = post(f"{base(settings)}/coupons/ANY/reserve", b"{}", TOKEN)
    assert code == 503 and "CTOWER_COUPON_API_TOKEN" in body["error"]
    assert TOKEN not in worker.log_tail(100_000)


def test_counts_and_policies_survive_a_killed_worker(
    coupon_settings: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
) -> None:
    settings = coupon_settings(coupon_api_token=TOKEN)
    ensure_topics(settings)
    worker = start_worker(settings, ctower_process, poll)
    publish_policy(settings, policy("KILL", cap_per_window=30, per_member_limit=2))
    publish_policy(settings, policy("KILL", store_id="S9", cap_per_window=4))
    poll(lambda: "S9" in ((status(settings, "KILL", "S9") or {}).get("policies") or {}), 10,
         "the S9 policy never in force")
    # a policy arriving during the grants: its flush takes their counts along
    publish_policy(settings, policy("KILL", store_id="S8", cap_per_window=9))
    answers = reserve_many(
        settings, "KILL", [{"store_id": f"S{i % 10}", "member_id": f"M{i % 11}"}
                           for i in range(20)]
    )
    assert sum(1 for _, b in answers if b["granted"]) == 20
    before = status(settings, "KILL", "S9")
    assert before is not None
    counted_in = before["windows"]["*"]
    assert counted_in["window_end"] - counted_in["window_start"] == WINDOW_SECONDS * 1000
    worker.kill()  # SIGKILL: the answers given must be durable already

    start_worker(settings, ctower_process, poll, name="worker-again")
    after = status(settings, "KILL", "S9")
    assert after is not None
    assert after["policies"] == before["policies"]
    assert after["windows"] == before["windows"]
    assert after["windows"]["*"]["count"] == 20
    answers = reserve_many(
        settings, "KILL", [{"store_id": f"S{i % 10}", "member_id": f"N{i}"} for i in range(40)]
    )
    assert sum(1 for _, b in answers if b["granted"]) == 10  # 30 in all, not more
    # the member limit remembered the first run's members too: M0 had 2
    [(_, again)] = reserve_many(settings, "KILL", [{"store_id": "S1", "member_id": "M0"}])
    assert again["reason"] in ("member_limit", "cap_reached")


def test_a_grant_is_answered_only_once_every_write_of_its_partition_is_acknowledged(
    settings_factory: Callable[..., Settings],
) -> None:
    """CI lost 20 grants to a SIGKILL: a policy applied while they were made
    flushed their counts, so the grants' own flush found nothing to wait for
    and they were answered while the counts were still in the producer's buffer."""
    settings = settings_factory(coupon_api_token=TOKEN)
    app = faust.App("durable-check", broker=f"kafka://{settings.bootstrap}", store="memory://")
    service = CouponService(app, settings, None)

    async def scenario() -> None:
        writes: list[asyncio.Future[None]] = []

        class Changelog:
            def __init__(self) -> None:
                self.data: dict[bytes, bytes] = {}

            def send_changelog(self, partition: int | None, key: Any, value: Any) -> Any:
                writes.append(asyncio.get_running_loop().create_future())
                return writes[-1]

        service.ledger.table = Changelog()
        service.ledger.apply_policy(0, 0, "C1", None, policy("C1", cap_per_window=5))
        assert service.ledger.reserve(0, "C1", "S1", "M1", int(time.time() * 1000)).granted
        service.ledger.flush(0)  # the policy agent or the upkeep timer, first
        durable = service.durable(0)
        await asyncio.sleep(0.05)
        assert not durable.done(), "answered before Kafka acknowledged the count"
        for written in writes:
            written.set_result(None)
        await asyncio.wait_for(durable, 1)

    asyncio.run(scenario())


def send_signal(settings: Settings, signal: CouponSignal) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    try:
        producer.send(
            settings.topic("coupon-signals"), key=signal.key().encode(),
            value=control_encoder.encode(signal),
            partition=campaign_partition(signal.campaign_id, settings.topic_partitions),
        ).get(timeout=10)
    finally:
        producer.close()


def decisions(settings: Settings, campaign: str) -> list[dict[str, Any]]:
    topic = settings.topic("coupon-decisions")
    tp = TopicPartition(topic, campaign_partition(campaign, settings.topic_partitions))
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                for record in records:
                    assert record.key.decode().startswith(f"{campaign}|")
                    found.append(json.loads(record.value))
        return found
    finally:
        consumer.close()


def test_signals_throttle_and_pause_stores_with_decisions_on_the_topic(
    coupon_settings: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
    tmp_path: Path,
) -> None:
    master = tmp_path / "master.json"  # S2 is 1.1 km from S1, in its region
    master.write_text(json.dumps({
        "regions": [{"region_id": "EAST", "warehouse_id": "WH-EAST"}],
        "stores": [{"store_id": "S1", "region_id": "EAST", "lat": 31.2, "lon": 121.4},
                   {"store_id": "S2", "region_id": "EAST", "lat": 31.21, "lon": 121.4}],
    }))
    settings = coupon_settings(coupon_api_token=TOKEN, master_data_file=master)
    ensure_topics(settings)
    start_worker(settings, ctower_process, poll)
    publish_policy(settings, policy("PICK", cap_per_window=100))
    poll(lambda: status(settings, "PICK"), 10, "PICK never in force")
    now = int(time.time() * 1000)

    def signal(cause: str, active: bool, **evidence: Any) -> CouponSignal:
        return CouponSignal(
            campaign_id="PICK", store_id="S1", cause=cause, active=active,  # type: ignore[arg-type]
            sku="K1" if cause == "stock_cover" else None, evidence=evidence, ts=now,
        )

    def state() -> str | None:
        return (status(settings, "PICK", "S1") or {}).get("state")

    def ask(store: str = "S1") -> Any:
        return reserve_many(settings, "PICK", [{"store_id": store, "member_id": "M1"}])[0][1]

    send_signal(settings, CouponSignal(
        campaign_id="PICK", store_id="S2", cause="pickup_room", active=True,
        evidence={"pressure": 0.3, "threshold": 0.5}, ts=now,
    ))
    send_signal(settings, signal("pickup_pressure", True, pressure=0.92, threshold=0.8))
    poll(lambda: state() == "throttled", 10, "pickup pressure never throttled S1")
    assert (ask()["granted"], ask()["reason"]) == (False, "throttled")
    assert ask()["hint"] == "not here: try S2, 1.11 km, pressure 0.3"
    assert ask("S2")["granted"]  # only that store

    send_signal(settings, signal("stock_cover", True, cover_hours=1.2, threshold=2.0))
    poll(lambda: state() == "paused", 10, "stock cover never paused S1")
    assert ask()["reason"] == "stock_short"
    send_signal(settings, signal("stock_cover", False, cover_hours=5.0, threshold=2.0))
    send_signal(settings, signal("pickup_pressure", False, pressure=0.41, threshold=0.6))
    poll(lambda: state() == "open", 10, "S1 never reopened")
    assert ask()["granted"]

    def all_decisions() -> Any:
        found = decisions(settings, "PICK")
        return found if len(found) >= 4 else None

    found = poll(all_decisions, 10, "the decisions never reached ct.coupon-decisions")
    assert [(d["store_id"], d["state"], d["reason"]) for d in found] == [
        ("S1", "throttled", "pickup_pressure"),
        ("S1", "paused", "stock_cover"),
        ("S1", "throttled", "pickup_pressure"),
        ("S1", "open", "pickup_pressure_cleared"),
    ]
    assert found[0]["evidence"] == {"cause": "pickup_pressure", "pressure": 0.92,
                                    "threshold": 0.8, "alternatives": [
                                        {"store_id": "S2", "km": 1.11, "pressure": 0.3}]}
    assert found[1]["evidence"]["sku"] == "K1" and found[1]["evidence"]["cover_hours"] == 1.2
    assert found[3]["evidence"]["threshold"] == 0.6 and found[3]["ts"] == now


def test_two_workers_share_campaigns_and_forward_requests_to_the_owner(
    coupon_settings: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
    tmp_path: Path,
) -> None:
    first = coupon_settings(coupon_api_token=TOKEN)
    ensure_topics(first)
    free = coupon_settings()
    second = first.model_copy(
        update={"worker_web_port": free.worker_web_port, "data_dir": tmp_path / "second"}
    )
    start_worker(first, ctower_process, poll, partitions=None)
    start_worker(second, ctower_process, poll, name="second", partitions=None)

    def split() -> Any:
        owned = [get_json(f"{base(s)}/coupons/")[1]["owned_partitions"] for s in (first, second)]
        mine, theirs = set(owned[0]), set(owned[1])
        return owned if mine and theirs and not mine & theirs and mine | theirs == {
            0, 1, 2, 3} else None

    owned = poll(split, 90, "the two workers never split the partitions")
    campaigns: dict[int, str] = {}
    for n in range(200):  # one campaign per partition
        campaigns.setdefault(campaign_partition(f"TWO-{n}", 4), f"TWO-{n}")
        if len(campaigns) == 4:
            break
    for campaign in campaigns.values():
        publish_policy(first, policy(campaign, cap_per_window=7))
    for partition, campaign in campaigns.items():
        owner = first if partition in owned[0] else second

        def in_force(settings: Settings, campaign: str = campaign) -> Any:
            answer = status(settings, campaign)
            return answer if answer and answer["windows"]["*"]["cap"] == 7 else None

        # the policy reached the worker that holds the campaign's counts, and
        # either worker answers for it (the other forwards)
        via_owner = poll(lambda s=owner: in_force(s), 10, f"{campaign}: policy not at owner")
        via_other = poll(lambda s=(second if owner is first else first): in_force(s), 10,
                         f"{campaign}: not forwarded")
        assert via_owner["worker"] == via_other["worker"] == base(owner)
        assert via_owner["partition"] == partition

        urls = [f"{base(s)}/coupons/{campaign}/reserve" for s in (first, second)]
        answers = asyncio.run(fire(
            lambda i, urls=urls: urls[i % 2],
            [{"store_id": "S1", "member_id": f"M{i}"} for i in range(60)],
        ))
        assert {code for code, _ in answers} == {200}, answers
        assert sum(1 for _, body in answers if body["granted"]) == 7, campaign


def test_the_coupon_role_serves_reservations_apart_from_the_aggregation(
    coupon_settings: Callable[..., Settings],
    ctower_process: Callable[..., Any],
    poll: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """``ctower coupons serve`` and a worker of role aggregate, as production runs
    them: each stream is folded by exactly one of them, the reservations are
    answered by the coupon server, and the aggregation has no coupon API."""
    settings = coupon_settings(coupon_api_token=TOKEN)
    ensure_topics(settings)
    aggregate = settings.model_copy(update={"worker_role": "aggregate"})
    coupons = settings.model_copy(update={
        "worker_web_port": coupon_settings().worker_web_port, "data_dir": tmp_path / "coupons",
    })
    aggregation = ctower_process(aggregate, "aggregate", "worker")
    server = ctower_process(coupons, "coupons", "coupons", "serve")
    aggregation.wait_http(f"{base(aggregate)}/stats/")

    def owned() -> Any:
        assert server.alive(), server.log_tail()
        code, body = get_json(f"{base(coupons)}/coupons/")
        return code == 200 and len(body["owned_partitions"]) == 4

    poll(owned, 90, "the coupon server never owned its partitions", every=0.2)
    overview = get_json(f"{base(coupons)}/coupons/")[1]  # alone in its group: settled
    assert overview["assigned_partitions"] == [0, 1, 2, 3], overview
    assert overview["rebalance"] == {"recovered": True, "rebalancing": False,
                                     "in_recovery": False, "recovery_completed": True}
    publish_policy(settings, policy("ROLE-A", cap_per_window=10))
    poll(lambda: (status(coupons, "ROLE-A") or {}).get("policies"), 10, "no policy in force")
    answers = reserve_many(
        coupons, "ROLE-A", [{"store_id": "S1", "member_id": f"M{i}"} for i in range(30)]
    )
    assert sum(1 for _, body in answers if body["granted"]) == 10

    folds = {name for name, value in get_json(f"{base(aggregate)}/stats/")[1].items()
             if isinstance(value, dict) and "events" in value}
    served = get_json(f"{base(coupons)}/stats/")[1]
    assert "coupon" not in folds and {"scan", "order", "pickup", "inventory"} <= folds
    assert {name for name, value in served.items()
            if isinstance(value, dict) and "events" in value} == {"coupon"}
    assert "decisions" not in served  # the rules run once, in the aggregation
    try:
        urllib.request.urlopen(f"{base(aggregate)}/coupons/", timeout=5)
        raise AssertionError("the aggregation answered for the coupon API")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
    assert aggregation.alive(), aggregation.log_tail()
    # the aggregation yields the cores to the coupon server (CTOWER_AGGREGATE_NICE)
    assert aggregation.proc is not None and server.proc is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, aggregation.proc.pid) == max(
        ours, aggregate.aggregate_nice), aggregation.log_tail()
    assert os.getpriority(os.PRIO_PROCESS, server.proc.pid) == ours
    # and the coupon server takes a core as it wakes (CTOWER_LATENCY_SLICE_MS)
    if slice_ms() is not None:  # a kernel that keeps a slice per thread (Linux 6.12+)
        assert slice_ms(server.proc.pid) == coupons.latency_slice_ms != slice_ms(
            aggregation.proc.pid), server.log_tail()
        assert "CPU time slice 0.3 ms (role coupons)" in server.log_tail(10**7)
