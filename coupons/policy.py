"""Writing marketing's coupon policies to ``ct.coupon-policy``.

The topic is compacted: it keeps the latest policy per (campaign, scope), so
a worker that starts reads every policy in force from the beginning. The key
is ``campaign|store`` (``*`` for all stores) so that a campaign-wide cap and a
store cap do not overwrite each other; the partition is the *campaign's*
partition of the coupon stream, so the worker that owns a campaign's coupons
and reservations also owns all its policies.
"""

from __future__ import annotations

import time

from kafka import KafkaProducer

from ctower.errors import CtowerError
from ctower.schemas.control import ALL_STORES, CouponPolicy
from ctower.schemas.control import encoder as control_encoder
from ctower.settings import Settings
from ctower.topics import partition_for


def policy_key(campaign_id: str, store_id: str | None) -> bytes:
    return f"{campaign_id}|{store_id or ALL_STORES}".encode()


def campaign_partition(campaign_id: str, partitions: int) -> int:
    """The partition of a campaign's records, the same as its coupon events'."""
    return partition_for(campaign_id.encode(), partitions)


class PolicyError(CtowerError, RuntimeError):
    """A policy could not be written; the message says why."""


def check_policy(policy: CouponPolicy) -> None:
    """Refuse policies that make no sense before they reach every worker."""
    if not policy.campaign_id.strip():
        raise PolicyError("campaign_id: must not be empty")
    if policy.cap_per_window is not None and policy.cap_per_window < 0:
        raise PolicyError(f"cap_per_window: must be 0 or more, got {policy.cap_per_window}")
    if policy.window_seconds < 1:
        raise PolicyError(f"window_seconds: must be at least 1, got {policy.window_seconds}")
    if policy.per_member_limit is not None and policy.per_member_limit < 1:
        raise PolicyError(
            f"per_member_limit: must be at least 1, got {policy.per_member_limit}"
        )
    if policy.shift_share is not None and not 0 <= policy.shift_share <= 1:
        raise PolicyError(f"shift_share: must be between 0 and 1, got {policy.shift_share}")


def publish_policy(settings: Settings, policy: CouponPolicy, timeout: float = 10.0) -> None:
    """Write one policy and wait until Kafka has it (acks=all); raise PolicyError if not."""
    check_policy(policy)
    topic = settings.topic("coupon-policy")
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", client_id="ctower-coupon-policy"
    )
    try:
        partitions = producer.partitions_for(topic)
        if not partitions:
            raise PolicyError(f"topic {topic} has no partitions on {settings.bootstrap}")
        future = producer.send(
            topic,
            key=policy_key(policy.campaign_id, policy.store_id),
            value=control_encoder.encode(policy),
            partition=campaign_partition(policy.campaign_id, len(partitions)),
        )
        future.get(timeout=timeout)
    except PolicyError:
        raise
    except Exception as exc:  # kafka-python raises many types; the caller needs one
        raise PolicyError(f"could not write the policy to {topic}: {exc}") from exc
    finally:
        producer.close(timeout=timeout)


def now_ms() -> int:
    return int(time.time() * 1000)
