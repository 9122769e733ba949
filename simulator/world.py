"""The chain as the simulation indexes it: locations, SKUs and their shares.

:mod:`ctower.simulator.chain` is the master data as records; the hot paths
of the simulation want plain lists and ints instead (a stock key is an int,
a SKU an index), and the incidents want the same numbers the sessions draw
from. One place derives them, once per run, and nothing here draws from the
run's RNG.
"""

from __future__ import annotations

import zlib

from ctower.simulator.chain import Campaign, Chain, Store
from ctower.simulator.clock import local_hour

WH_BASE = 1000
"""Location index of the first central warehouse (stores are 0..n-1)."""
SKU_SLOTS = 4096
"""Stock keys are ``location * SKU_SLOTS + sku``: ints hash faster than tuples."""
DISTRICTS_PER_CITY = 6
"""Delivery districts (区) of a city; a member lives in one (derived from the id)."""
TOP_SKUS = 20
"""How many of the best sellers a live stream (and several incidents) pick from."""


class World:
    """Lookup tables of one chain: who is where, what sells how much."""

    def __init__(self, chain: Chain) -> None:
        if len(chain.skus) > SKU_SLOTS:
            raise ValueError(f"at most {SKU_SLOTS} SKUs")
        self.chain = chain
        self.regions = chain.regions
        self.region_idx = {r.region_id: i for i, r in enumerate(chain.regions)}
        self.store_region = [self.region_idx[s.region_id] for s in chain.stores]
        """Region index per store index."""
        self.loc_ids: dict[int, str] = {s.idx: s.store_id for s in chain.stores}
        """Location id (store or warehouse) per location index."""
        for i, r in enumerate(chain.regions):
            self.loc_ids[WH_BASE + i] = r.warehouse_id
        self.sku_ids = [s.sku for s in chain.skus]
        self.sku_price = [s.price_fen for s in chain.skus]
        self.sku_unit_price = [s.price_fen / 100 for s in chain.skus]
        total_pop = sum(s.popularity for s in chain.skus)
        self.sku_share = [s.popularity / total_pop for s in chain.skus]
        total_weight = sum(s.weight for s in chain.stores)
        self.store_share = [s.weight / total_weight for s in chain.stores]
        self.region_share = [0.0] * len(chain.regions)
        for s in chain.stores:
            self.region_share[self.store_region[s.idx]] += self.store_share[s.idx]
        # Top sellers a live stream may feature: a visible bump on SKUs whose
        # baseline is already high, not a spike (that is the demand_spike incident).
        ranked = sorted(range(len(chain.skus)), key=lambda i: (-chain.skus[i].popularity, i))
        self.top_skus = ranked[:TOP_SKUS]
        self._campaign_cache: tuple[int, list[list[Campaign]]] = (-1, [])

    @staticmethod
    def stock_key(loc: int, sku: int) -> int:
        """Key of a (location, SKU) in the stock dicts."""
        return loc * SKU_SLOTS + sku

    def warehouse_loc(self, store_idx: int) -> int:
        """Location index of a store's regional central warehouse."""
        return WH_BASE + self.store_region[store_idx]

    @staticmethod
    def district_of(store: Store, member: str) -> str:
        """Where a member's parcels go: a district of the store's city, fixed per member
        (no draw from the generator's RNG, so the other streams stay as they were)."""
        return f"{store.city}-{zlib.crc32(member.encode()) % DISTRICTS_PER_CITY + 1:02d}"

    def active_campaigns(self, ts: int, region: int) -> list[Campaign]:
        """The campaigns of a region running at ``ts`` (worked out once per local hour)."""
        hour = local_hour(ts)
        cached_hour, by_region = self._campaign_cache
        if cached_hour != hour:
            by_region = [
                [
                    c
                    for c in self.chain.campaigns
                    if r.region_id in c.regions and c.active_at_hour(hour)
                ]
                for r in self.regions
            ]
            self._campaign_cache = (hour, by_region)
        return by_region[region]
