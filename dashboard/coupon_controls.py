"""What marketing's buttons mean, as :class:`CouponPolicy` records.

A policy record replaces the one in force for its campaign and scope (all
stores, or one store), so every record must carry the whole policy, not
just the field that changed: pausing keeps the cap that was set, setting a
cap keeps a pause. Kept out of the page so the meaning of each button is a
plain function with a test of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from ctower.schemas.control import CouponPolicy

Action = Literal["set_cap", "pause", "resume"]
ACTIONS: tuple[Action, ...] = ("set_cap", "pause", "resume")


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None  # NaN or NA from a DataFrame: no value set
    return number


def build_policy(
    action: Action,
    *,
    campaign_id: str,
    store_id: str | None,
    cap: int | None,
    window_seconds: int,
    per_member_limit: int | None,
    in_force: Mapping[str, Any] | None,
    operator: str,
    now_ms: int,
) -> CouponPolicy:
    """The record for ``action`` on (campaign, store), given the policy in force.

    ``cap`` None means no cap; ``store_id`` None or '' means every store.
    """
    store = store_id.strip() if store_id and store_id.strip() else None
    if action == "set_cap":
        paused = bool(in_force["paused"]) if in_force is not None else False
        return CouponPolicy(
            campaign_id=campaign_id, store_id=store, cap_per_window=cap,
            window_seconds=window_seconds, per_member_limit=per_member_limit,
            paused=paused, set_by=f"dashboard:{operator}", set_at=now_ms,
        )
    if action not in ("pause", "resume"):
        raise ValueError(f"unknown coupon action {action!r}")
    if in_force is not None:
        kept_cap = _optional_int(in_force.get("cap_per_window"))
        kept_window = _optional_int(in_force.get("window_seconds")) or window_seconds
        kept_member = _optional_int(in_force.get("per_member_limit"))
    else:
        kept_cap, kept_window, kept_member = None, window_seconds, None
    return CouponPolicy(
        campaign_id=campaign_id, store_id=store, cap_per_window=kept_cap,
        window_seconds=kept_window, per_member_limit=kept_member,
        paused=action == "pause", set_by=f"dashboard:{operator}", set_at=now_ms,
    )
