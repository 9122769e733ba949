"""``ctower coupons``: marketing's caps and pauses, and what a campaign stands at.

``cap``, ``pause`` and ``resume`` write a policy record to ``ct.coupon-policy``
(the workers apply it within a second). A policy record is whole, so each
command first reads the one in force from the compacted topic and changes
only what it was told to: a resume keeps the cap, a new cap keeps a pause.
``status`` asks a worker's HTTP API (any worker: it forwards to the owner).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

import click
import msgspec
from kafka import KafkaConsumer, TopicPartition

from ctower.cli import settings_or_exit
from ctower.coupons.policy import (
    PolicyError,
    campaign_partition,
    policy_key,
    publish_policy,
)
from ctower.schemas.control import ALL_STORES, CouponPolicy
from ctower.settings import Settings

_policy_decoder = msgspec.json.Decoder(CouponPolicy)


def current_policy(
    settings: Settings, campaign_id: str, store_id: str | None, timeout: float = 10.0
) -> CouponPolicy | None:
    """The policy in force for (campaign, store): the latest record of its key
    on the campaign's partition of the compacted topic (None if never set or deleted)."""
    topic = settings.topic("coupon-policy")
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False,
        client_id="ctower-coupons",
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise PolicyError(f"topic {topic} does not exist on {settings.bootstrap}")
        tp = TopicPartition(topic, campaign_partition(campaign_id, len(partitions)))
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        key = policy_key(campaign_id, store_id)
        latest: bytes | None = None
        deadline = time.monotonic() + timeout
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise PolicyError(f"could not read {topic} within {timeout:.0f} s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key == key:
                        latest = record.value
        if latest is None:
            return None
        try:
            return _policy_decoder.decode(latest)
        except msgspec.MsgspecError:
            return None  # a bad record was never in force (the workers dead-letter it)
    finally:
        consumer.close()


def change_policy(
    settings: Settings, campaign_id: str, store_id: str | None, set_by: str, **changes: Any
) -> CouponPolicy:
    """Write the policy in force with ``changes`` applied; return what was written."""
    current = current_policy(settings, campaign_id, store_id)
    fields = msgspec.structs.asdict(current) if current else {}
    fields.update(changes)
    fields.update(
        campaign_id=campaign_id, store_id=store_id, set_by=set_by,
        set_at=int(time.time() * 1000),
    )
    policy = CouponPolicy(**fields)
    publish_policy(settings, policy)
    return policy


def fetch_status(
    settings: Settings, campaign_id: str, store_id: str | None, url: str | None = None
) -> dict[str, Any]:
    base = url or f"http://{settings.worker_web_host}:{settings.worker_web_port}"
    query = f"?{urllib.parse.urlencode({'store': store_id})}" if store_id else ""
    target = f"{base.rstrip('/')}/coupons/{urllib.parse.quote(campaign_id, safe='')}/status{query}"
    try:
        with urllib.request.urlopen(target, timeout=5) as answer:
            status: dict[str, Any] = json.load(answer)
            return status
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            reason = exc.reason
        raise click.ClickException(f"{target}: {exc.code} {reason}") from None
    except OSError as exc:
        raise click.ClickException(f"no worker answered at {base}: {exc}") from None


def _describe(policy: CouponPolicy) -> str:
    scope = f"store {policy.store_id}" if policy.store_id else "all stores"
    cap = "no cap" if policy.cap_per_window is None else f"cap {policy.cap_per_window}"
    member = (
        f", {policy.per_member_limit} per member" if policy.per_member_limit is not None else ""
    )
    paused = ", PAUSED" if policy.paused else ""
    shift = f", shifts {policy.shift_share:g} when throttled" if policy.shift_share else ""
    return (
        f"{policy.campaign_id} ({scope}): {cap}, window {policy.window_seconds} s{member}"
        f"{shift}{paused} (set by {policy.set_by})"
    )


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _write(settings: Settings, campaign: str, store: str | None, by: str | None,
           **changes: Any) -> None:
    from ctower.cli import operator_name

    try:
        policy = change_policy(settings, campaign, store, by or operator_name(), **changes)
    except (PolicyError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"written: {_describe(policy)}")


@click.group()
def coupons() -> None:
    """Coupon caps and pauses (marketing), and the state of a campaign."""


@coupons.command()
def serve() -> None:
    """Run the coupon API with the coupon stream, apart from the aggregation.

    A worker of role ``coupons`` (its own consumer group, scaled on its own):
    run the others with CTOWER_WORKER_ROLE=aggregate so each stream is folded
    once.
    """
    from ctower.cli import settings_or_exit
    from ctower.streams.worker import run_worker

    run_worker(settings_or_exit(worker_role="coupons"))


STORE = click.option("--store", default=None, help="One store (default: the whole campaign).")
BY = click.option("--by", default=None, help="Who sets it (default: the OS user).")


@coupons.command()
@click.argument("campaign")
@click.option("--cap", type=click.IntRange(min=0), required=True,
              help="Coupons per window (0 stops issuing).")
@STORE
@click.option("--window", type=click.IntRange(min=1), default=None,
              help="Window in seconds (default: the one in force, else 3600).")
@click.option("--per-member", type=click.IntRange(min=1), default=None,
              help="Coupons per member per window.")
@click.option("--shift-share", type=click.FloatRange(0, 1), default=None,
              help="Share of a throttled store's cap shifted to its nearest stores with "
                   "room while the throttle lasts (0 stops shifting).")
@BY
def cap(campaign: str, cap: int, store: str | None, window: int | None,
        per_member: int | None, shift_share: float | None, by: str | None) -> None:
    """Set the cap of CAMPAIGN (a pause in force stays)."""
    changes: dict[str, Any] = {"cap_per_window": cap}
    if shift_share is not None:
        changes["shift_share"] = shift_share
    if window is not None:
        changes["window_seconds"] = window
    if per_member is not None:
        changes["per_member_limit"] = per_member
    _write(settings_or_exit(), campaign, store, by, **changes)


@coupons.command()
@click.argument("campaign")
@STORE
@BY
def pause(campaign: str, store: str | None, by: str | None) -> None:
    """Stop issuing CAMPAIGN (at one store, or everywhere)."""
    _write(settings_or_exit(), campaign, store, by, paused=True)


@coupons.command()
@click.argument("campaign")
@STORE
@BY
def resume(campaign: str, store: str | None, by: str | None) -> None:
    """Issue CAMPAIGN again (caps in force stay)."""
    _write(settings_or_exit(), campaign, store, by, paused=False)


@coupons.command()
@click.argument("campaign")
@STORE
@click.option("--url", default=None, help="A worker's base URL (default: the local worker).")
@click.option("--json", "as_json", is_flag=True, help="Print the worker's answer as JSON.")
def status(campaign: str, store: str | None, url: str | None, as_json: bool) -> None:
    """Caps, counts in the current window and state of CAMPAIGN."""
    answer = fetch_status(settings_or_exit(), campaign, store, url)
    if as_json:
        click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    click.echo(
        f"{campaign}: {answer['state']} ({answer['reason']})"
        f"  [partition {answer['partition']}, {answer['worker']}]"
    )
    for scope, window in answer["windows"].items():
        label = "all stores" if scope == ALL_STORES else f"store {scope}"
        cap_text = "no cap" if window["cap"] is None else f"cap {window['cap']}"
        member = window["per_member_limit"]
        click.echo(
            f"  {label}: {window['count']} issued, {cap_text}"
            + (f", {member} per member" if member is not None else "")
            + f", window until {_when(window['window_end'])}"
        )
    for signal in answer["signals"]:
        click.echo(f"  signal at {signal['store_id']}: {signal['cause']} {signal['evidence']}")
    if answer.get("hint"):
        click.echo(f"  {answer['hint']}")
