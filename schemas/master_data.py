"""Master data: the stores, regions, SKUs and campaigns the events refer to.

Events carry ids only; the rules need what the ids stand for (a store's
pickup capacity and region, the region's central warehouse, which SKUs a
campaign covers, where stores are so the nearest one can be named) and so
does the dashboard (regions for drill-down). The file is JSON, the shape
``ctower simulate --chain PATH`` writes; a real chain exports the same from
its ERP. ``CTOWER_MASTER_DATA_FILE`` names it; without one the rules fall
back to their configured defaults (a default pickup capacity, no campaign
scopes) and cannot name a transfer's source: a restock then says the source
is unknown ("?") and no transfer order is issued.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

import msgspec
from msgspec import Struct

from ctower.errors import CtowerError


class StoreInfo(Struct, kw_only=True, frozen=True):
    store_id: str
    region_id: str
    city: str = ""
    lat: float = 0.0
    lon: float = 0.0
    pickup_capacity: int = 0
    """Customers waiting at the pickup counter the store can hold comfortably."""
    pickup_staff: int = 1


class RegionInfo(Struct, kw_only=True, frozen=True):
    region_id: str
    name: str = ""
    warehouse_id: str
    """The central warehouse (中心仓) that restocks the region's stores."""


class SkuInfo(Struct, kw_only=True, frozen=True):
    sku: str
    category: str = ""
    price_fen: int = 0


class CampaignInfo(Struct, kw_only=True, frozen=True):
    campaign_id: str
    kind: str
    """``store_pickup`` (throttled by pickup pressure) or ``discount``."""
    skus: list[str] = []
    regions: list[str] = []
    """Regions where it runs; empty means everywhere."""


DEFAULT_GUIDE_DAILY_CAP = 20
"""Deliveries a shopping guide makes in a day when the master data names no cap."""


class GuideInfo(Struct, kw_only=True, frozen=True):
    """A shopping guide (导购): a last-mile delivery node of one store (about 3 km
    around it) with a daily cap of deliveries."""

    guide_id: str
    store_id: str
    daily_cap: int = DEFAULT_GUIDE_DAILY_CAP
    shift_start_hour: int = 0
    """Local hour (Asia/Shanghai) the guide's shift starts."""
    shift_end_hour: int = 24
    """Local hour the shift ends (exclusive)."""


class MasterData(Struct, kw_only=True, dict=True):
    regions: list[RegionInfo] = []
    stores: list[StoreInfo] = []
    skus: list[SkuInfo] = []
    campaigns: list[CampaignInfo] = []
    guides: list[GuideInfo] = []

    @cached_property
    def store_by_id(self) -> dict[str, StoreInfo]:
        return {s.store_id: s for s in self.stores}

    @cached_property
    def region_by_id(self) -> dict[str, RegionInfo]:
        return {r.region_id: r for r in self.regions}

    @cached_property
    def campaign_by_id(self) -> dict[str, CampaignInfo]:
        return {c.campaign_id: c for c in self.campaigns}

    @cached_property
    def guide_by_id(self) -> dict[str, GuideInfo]:
        return {g.guide_id: g for g in self.guides}

    @cached_property
    def guides_by_store(self) -> dict[str, list[GuideInfo]]:
        found: dict[str, list[GuideInfo]] = {}
        for guide in self.guides:
            found.setdefault(guide.store_id, []).append(guide)
        return found

    def guides_at(self, store_id: str) -> list[GuideInfo]:
        return self.guides_by_store.get(store_id, [])

    @cached_property
    def warehouses(self) -> frozenset[str]:
        return frozenset(r.warehouse_id for r in self.regions)

    def region_of(self, location_id: str) -> str | None:
        """The region of a store or of a central warehouse."""
        store = self.store_by_id.get(location_id)
        if store is not None:
            return store.region_id
        for region in self.regions:
            if region.warehouse_id == location_id:
                return region.region_id
        return None

    def warehouse_for(self, location_id: str) -> str | None:
        region = self.region_of(location_id)
        info = self.region_by_id.get(region) if region else None
        return info.warehouse_id if info else None

    def nearest_stores(self, store_id: str, k: int = 5) -> list[tuple[str, float]]:
        """Other stores of the same region, nearest first, with km.

        Transfers (调拨) between stores only make sense within a region.
        """
        here = self.store_by_id.get(store_id)
        if here is None:
            return []
        others = [
            (s.store_id, _km(here.lat, here.lon, s.lat, s.lon))
            for s in self.stores
            if s.region_id == here.region_id and s.store_id != store_id
        ]
        others.sort(key=lambda pair: (pair[1], pair[0]))
        return [(sid, round(km, 2)) for sid, km in others[:k]]

    def campaigns_at(self, store_id: str) -> list[CampaignInfo]:
        region = self.region_of(store_id)
        return [c for c in self.campaigns if not c.regions or region in c.regions]


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(math.sqrt(a))


class MasterDataError(CtowerError, ValueError):
    """The master-data file cannot be read; the message names the file and the field."""


_decoder = msgspec.json.Decoder(MasterData)


def load_master_data(path: Path) -> MasterData:
    """Read a master-data file (extra fields, such as the simulator's, are ignored)."""
    try:
        return _decoder.decode(path.read_bytes())
    except OSError as exc:
        raise MasterDataError(f"{path}: {exc.strerror or exc}") from None
    except msgspec.ValidationError as exc:
        raise MasterDataError(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MasterDataError(f"{path}: not JSON: {exc}") from None
