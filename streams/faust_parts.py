"""What every part of a worker (aggregation, rules, shadow rules, coupons)
declares on its Faust app the same way.

Topics are raw: ctower decodes its records itself, in bulk (msgspec), so Faust's
codecs must hand over the bytes untouched. State is adopted per partition only
once Faust has recovered the tables: adopting earlier would load a partition
from a half-read changelog.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import faust
    from faust.tables.manager import TableManager
    from faust.tables.recovery import Recovery
    from faust.types import TableT


def raw_topic(app: faust.App, name: str) -> faust.TopicT:
    """Topic ``name`` (the full name, prefix included) with bytes keys and values."""
    return app.topic(
        name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
    )


def tables_recovered(app: faust.App) -> bool:
    """Whether the app's tables hold every partition assigned here: no rebalance
    going on and the last recovery complete."""
    recovery = _recovery(app)
    return not app.rebalancing and not recovery.in_recovery and recovery.completed.is_set()


def rebalance_state(app: faust.App) -> dict[str, bool]:
    """:func:`tables_recovered` and the three flags it is made of, for whoever
    asks why a worker does not answer for its partitions."""
    recovery = _recovery(app)
    return {
        "recovered": tables_recovered(app),
        "rebalancing": bool(app.rebalancing),
        "in_recovery": bool(recovery.in_recovery),
        "recovery_completed": recovery.completed.is_set(),
    }


def active_partitions(app: faust.App, table: TableT[Any, Any]) -> list[int]:
    """The partitions of ``table`` this worker holds as active (not standby):
    the ones whose state it adopts once :func:`tables_recovered`."""
    return [tp.partition for tp in _recovery(app).actives_for_table.get(table, ())]


def _recovery(app: faust.App) -> Recovery:
    # app.tables is typed as the abstract TableManagerT, which has no recovery
    return cast("TableManager", app.tables).recovery
