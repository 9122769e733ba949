"""Where incidents plug into the running simulation, besides scheduling their own steps.

An incident changes the story from inside (see :mod:`ctower.simulator.incidents`):
it schedules handlers with :meth:`Generator.push
<ctower.simulator.generator.Generator.push>`, makes events through the event
families' public methods (``gen.sessions``, ``gen.orders``, ``gen.stock``,
``gen.shipments``...), and registers here to watch or hold what the generator
itself does. The generator calls these hooks at fixed points, with no draw
from its RNG, so registering one does not move any other event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ctower.simulator.state import ShipmentState

ScanWatcher = Callable[[int, str], None]
"""``(ts, action)``: called after every session scan of a watched (store, SKU)."""
PickupWatcher = Callable[[int, int, int, str], None]
"""``(arrived, service starts, served, order_id)``: every pickup arrival at a store."""


class ShipmentHold(Protocol):
    """Stands between a carrier's shipments of one region and their next step."""

    def intercept(self, ts: int, sh: ShipmentState) -> bool:
        """Called before each step is sent; True = held (the hold schedules it again)."""
        ...


class IncidentHooks:
    """The registries the generator consults; empty unless an incident fills them."""

    def __init__(self) -> None:
        self.scan_watch: dict[int, ScanWatcher] = {}
        """Stock key (``World.stock_key``) -> watcher of its session scans."""
        self.pickup_watch: dict[int, PickupWatcher] = {}
        """Store index -> watcher of its pickup counter."""
        self.carrier_delay: dict[tuple[str, str], ShipmentHold] = {}
        """(carrier, region id) -> the hold on its shipments."""
        self.incident_stores: list[int] = []
        """Store indexes already taken by an incident: incidents must not blur each other."""
