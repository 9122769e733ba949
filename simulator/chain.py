"""The simulated retail chain: master data every stream refers to.

Built from the seed alone, so two runs with the same seed talk about the same
stores, SKUs, members, carriers and campaigns, and a consumer can rebuild the
master data (capacities, coordinates, warehouses) with
``build_chain(seed)`` or read it from ``ctower simulate --chain PATH``.

Sizes default to what the brief asks for (60 stores in 6 regions, 600 SKUs):
large enough that per-store and per-SKU aggregates are sparse the way real
ones are, small enough to keep generation at hundreds of thousands of events
a second.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REGIONS: tuple[tuple[str, str, tuple[tuple[str, float, float], ...]], ...] = (
    ("EAST", "华东", (("上海", 31.23, 121.47), ("杭州", 30.27, 120.15), ("南京", 32.06, 118.80))),
    ("SOUTH", "华南", (("广州", 23.13, 113.26), ("深圳", 22.54, 114.06), ("厦门", 24.48, 118.09))),
    ("NORTH", "华北", (("北京", 39.90, 116.41), ("天津", 39.13, 117.20), ("济南", 36.65, 117.12))),
    (
        "CENTRAL",
        "华中",
        (("武汉", 30.59, 114.31), ("长沙", 28.23, 112.94), ("郑州", 34.75, 113.62)),
    ),
    ("SW", "西南", (("成都", 30.57, 104.07), ("重庆", 29.56, 106.55), ("昆明", 25.04, 102.71))),
    ("NW", "西北", (("西安", 34.34, 108.94), ("兰州", 36.06, 103.83), ("银川", 38.49, 106.23))),
)
"""Region id, display name, and three cities (name, latitude, longitude)."""

CATEGORIES: tuple[tuple[str, float, float], ...] = (
    ("fresh", 12.0, 0.6),
    ("dairy", 9.0, 0.4),
    ("bakery", 8.0, 0.4),
    ("frozen", 22.0, 0.5),
    ("snacks", 10.0, 0.5),
    ("beverages", 6.0, 0.5),
    ("grain_oil", 35.0, 0.5),
    ("personal_care", 30.0, 0.6),
    ("household", 25.0, 0.6),
    ("baby", 80.0, 0.5),
    ("alcohol", 60.0, 0.8),
    ("pet", 45.0, 0.6),
)
"""Category, median unit price (yuan), log-normal spread of prices."""

NATIONAL_CARRIERS = ("SF", "JD", "ZTO", "YTO")
"""Carriers for central-warehouse shipments. YTO's feed sends ISO 8601 times."""

GUIDE_CARRIER = "GUIDE"
"""Shipments a shopping guide delivers personally (origin_type ``guide``)."""

ISO_CARRIERS = frozenset({"YTO"})
"""Carriers whose tracking feed uses ISO 8601 text for ``ts``/``eta``."""


@dataclass(frozen=True, slots=True)
class Region:
    region_id: str
    name: str
    warehouse_id: str
    """The central warehouse of the region, ``WH-<region>``."""
    lat: float
    lon: float
    carriers: tuple[str, ...]
    """National carriers serving the region, the first one the main one."""
    carrier_weights: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Store:
    idx: int
    store_id: str
    region_id: str
    city: str
    lat: float
    lon: float
    weight: float
    """Relative traffic; big stores see several times the visits of small ones."""
    pickup_staff: int
    """Staff serving the pickup counter in parallel."""
    pickup_capacity: int
    """Customers waiting at the pickup counter the store can hold comfortably."""
    guides: int
    """Shopping guides (导购) who also deliver nearby orders."""
    member_pool: int
    legacy_pos: bool
    """Its scan feed sends ISO 8601 ``ts`` (an older POS integration)."""


@dataclass(frozen=True, slots=True)
class Guide:
    """A shopping guide (导购): delivers the store's nearby orders in a shift,
    up to ``daily_cap`` a day."""

    guide_id: str
    store_id: str
    daily_cap: int
    shift_start_hour: int
    """Local hour (UTC+8) the shift starts, inclusive."""
    shift_end_hour: int
    """Local hour the shift ends, exclusive."""

    def on_shift(self, hour: int) -> bool:
        return self.shift_start_hour <= hour < self.shift_end_hour


GUIDE_HOURS = (8, 22)
"""Local hours guide deliveries are made in: an order placed outside waits for
the first shift of the next morning."""


def store_guides(seed: int, stores: list[Store]) -> list[Guide]:
    """The guides of every store: early (08-17) and late (13-22) shifts taking
    turns, one guide covering the whole day alone; most caps the default 20.

    Own RNG: adding guides to the master data moves nothing else of the chain.
    """
    rng = random.Random(f"guides:{seed}")
    guides: list[Guide] = []
    for store in stores:
        for k in range(store.guides):
            if store.guides == 1:
                shift = GUIDE_HOURS
            else:
                shift = (GUIDE_HOURS[0], 17) if k % 2 == 0 else (13, GUIDE_HOURS[1])
            x = rng.random()
            cap = 15 if x < 0.1 else 25 if x > 0.9 else 20
            guides.append(Guide(f"G-{store.store_id}-{k + 1}", store.store_id, cap, *shift))
    return guides


@dataclass(frozen=True, slots=True)
class Sku:
    idx: int
    sku: str
    category: str
    price_fen: int
    popularity: float


@dataclass(frozen=True, slots=True)
class Campaign:
    idx: int
    campaign_id: str
    kind: str
    """``store_pickup`` (valid on pickup orders of its SKUs) or ``discount``."""
    sku_idx: tuple[int, ...]
    value_fen: int
    regions: tuple[str, ...]
    hours: tuple[int, int]
    """Daily active hours, local time (UTC+8), start inclusive, end exclusive."""
    validity_s: int
    """How long a claimed coupon stays usable before it expires."""

    def active_at_hour(self, hour: int) -> bool:
        start, end = self.hours
        return start <= hour < end


@dataclass(slots=True)
class Chain:
    """Everything static about the simulated chain."""

    seed: int
    regions: list[Region]
    stores: list[Store]
    skus: list[Sku]
    campaigns: list[Campaign]
    store_cum_weights: list[float] = field(default_factory=list)
    sku_cum_weights: list[float] = field(default_factory=list)
    guides: list[Guide] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.guides:
            self.guides = store_guides(self.seed, self.stores)
        self.store_cum_weights = list(itertools.accumulate(s.weight for s in self.stores))
        self.sku_cum_weights = list(itertools.accumulate(s.popularity for s in self.skus))

    @property
    def region_by_id(self) -> dict[str, Region]:
        return {r.region_id: r for r in self.regions}

    @property
    def warehouses(self) -> list[str]:
        return [r.warehouse_id for r in self.regions]

    @property
    def carriers(self) -> list[str]:
        return [*NATIONAL_CARRIERS, GUIDE_CARRIER]

    def store(self, store_id: str) -> Store:
        return self.stores[int(store_id[1:]) - 1]

    def stores_in(self, region_id: str) -> list[Store]:
        return [s for s in self.stores if s.region_id == region_id]

    def nearest_stores(self, store_id: str, k: int = 3) -> list[tuple[str, float]]:
        """The k nearest other stores of the same region, with distances in km.

        Transfers (调拨) between stores only make sense within a region; the
        restock rule uses this to name a source when the warehouse is short.
        """
        here = self.store(store_id)
        others = [
            (s.store_id, haversine_km(here.lat, here.lon, s.lat, s.lon))
            for s in self.stores
            if s.region_id == here.region_id and s.store_id != store_id
        ]
        others.sort(key=lambda pair: (pair[1], pair[0]))
        return [(sid, round(km, 2)) for sid, km in others[:k]]

    def pick_store(self, rng: random.Random) -> Store:
        x = rng.random() * self.store_cum_weights[-1]
        return self.stores[bisect.bisect_right(self.store_cum_weights, x)]

    def pick_sku(self, rng: random.Random) -> int:
        x = rng.random() * self.sku_cum_weights[-1]
        return bisect.bisect_right(self.sku_cum_weights, x)

    def to_dict(self) -> dict[str, Any]:
        """Master data as plain JSON-able values (for ``--chain PATH``)."""
        return {
            "seed": self.seed,
            "regions": [asdict(r) for r in self.regions],
            "stores": [asdict(s) for s in self.stores],
            "skus": [asdict(s) for s in self.skus],
            "campaigns": [
                {**asdict(c), "skus": [self.skus[i].sku for i in c.sku_idx]} for c in self.campaigns
            ],
            "carriers": self.carriers,
            "guides": [asdict(g) for g in self.guides],
        }

    def write(self, path: Path) -> Path:
        """Write :meth:`to_dict` as the master-data file the rules and the dashboard
        read (``CTOWER_MASTER_DATA_FILE``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1),
                        encoding="utf-8")
        return path


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance: good enough to rank stores by distance."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(math.sqrt(a))


def build_chain(
    seed: int, *, stores_per_region: int = 10, n_skus: int = 600, n_campaigns: int = 12
) -> Chain:
    """The chain of a seed. Uses its own RNG so the event stream's draws do not move it."""
    rng = random.Random(f"chain:{seed}")
    regions: list[Region] = []
    stores: list[Store] = []
    for region_id, name, cities in REGIONS:
        lat, lon = cities[0][1], cities[0][2]
        carriers = tuple(rng.sample(NATIONAL_CARRIERS, 3))
        regions.append(
            Region(
                region_id=region_id,
                name=name,
                warehouse_id=f"WH-{region_id}",
                lat=lat,
                lon=lon,
                carriers=carriers,
                carrier_weights=(0.5, 0.3, 0.2),
            )
        )
        for k in range(stores_per_region):
            city, clat, clon = cities[k % len(cities)]
            weight = round(min(4.0, max(0.3, rng.lognormvariate(0, 0.5))), 3)
            staff = max(1, min(4, round(weight * 1.6)))
            idx = len(stores)
            stores.append(
                Store(
                    idx=idx,
                    store_id=f"S{idx + 1:03d}",
                    region_id=region_id,
                    city=city,
                    lat=round(clat + rng.uniform(-0.12, 0.12), 5),
                    lon=round(clon + rng.uniform(-0.12, 0.12), 5),
                    weight=weight,
                    pickup_staff=staff,
                    pickup_capacity=4 + 3 * staff,
                    guides=1 + int(weight * 2),
                    member_pool=int(800 * weight) + 100,
                    legacy_pos=False,
                )
            )
    # Two stores still run the old POS integration that sends ISO 8601 times.
    for idx in rng.sample(range(len(stores)), 2):
        s = stores[idx]
        stores[idx] = Store(**{**asdict(s), "legacy_pos": True})

    skus: list[Sku] = []
    for i in range(n_skus):
        category, median, spread = CATEGORIES[i % len(CATEGORIES)]
        price = max(0.5, median * rng.lognormvariate(0, spread))
        price_fen = round(price * 10) * 10 - 10 if price > 5 else round(price * 100)
        skus.append(
            Sku(
                idx=i,
                sku=f"SKU{i + 1:05d}",
                category=category,
                price_fen=max(50, price_fen),
                popularity=0.0,
            )
        )
    # Zipf-like popularity over a shuffled order: a few SKUs sell a lot, most little.
    order = list(range(n_skus))
    rng.shuffle(order)
    for rank, i in enumerate(order):
        sku = skus[i]
        skus[i] = Sku(
            sku.idx, sku.sku, sku.category, sku.price_fen, round(1.0 / (rank + 1) ** 0.8, 6)
        )

    campaigns: list[Campaign] = []
    windows = ((0, 24), (10, 14), (17, 22), (0, 24), (8, 20), (11, 21))
    region_ids = [r[0] for r in REGIONS]
    for c in range(n_campaigns):
        kind = "store_pickup" if c % 5 in (0, 3) else "discount"
        n = rng.randint(6, 20)
        sku_idx = tuple(sorted(rng.sample(order[: n_skus // 3], n)))
        scope = tuple(region_ids) if c % 3 == 0 else tuple(sorted(rng.sample(region_ids, 2)))
        campaigns.append(
            Campaign(
                idx=c,
                campaign_id=f"CMP{c + 1:02d}",
                kind=kind,
                sku_idx=sku_idx,
                value_fen=rng.choice((300, 500, 800, 1000, 1500, 2000)),
                regions=scope,
                hours=windows[c % len(windows)],
                validity_s=rng.choice((2, 3, 4, 6)) * 3600,
            )
        )
    return Chain(seed=seed, regions=regions, stores=stores, skus=skus, campaigns=campaigns)
