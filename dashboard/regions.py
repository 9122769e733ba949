"""Which region each store belongs to, for the region views and drill-down.

Events carry store ids only. The master data file (``master_data_file``,
written by ``ctower simulate --chain``) says where each store is; stores it
does not name take the region the rules reported with their pickup levels,
and otherwise fall into an "unknown region" bucket rather than vanishing
from the totals.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from ctower.schemas.master_data import MasterData, MasterDataError, load_master_data
from ctower.settings import Settings


@lru_cache(maxsize=4)
def _from_file(path: str, mtime_ns: int) -> dict[str, str]:
    data = load_master_data(Path(path))
    return {s.store_id: s.region_id for s in data.stores}


def master_regions(settings: Settings) -> dict[str, str]:
    """store_id -> region_id from the master data file (reread when it changes)."""
    path = settings.master_data_file
    if path is None:
        return {}
    try:
        return _from_file(str(path), path.stat().st_mtime_ns)
    except (OSError, MasterDataError):
        return {}


def store_regions(settings: Settings, pickup_levels: pd.DataFrame | None = None) -> dict[str, str]:
    """store_id -> region_id from the master data, completed by the rules' levels."""
    regions: dict[str, str] = {}
    if pickup_levels is not None and not pickup_levels.empty:
        regions.update(
            {str(s): str(r) for s, r in zip(pickup_levels["store_id"], pickup_levels["region"],
                                             strict=True) if r}
        )
    regions.update(master_regions(settings))
    return regions


def with_region(frame: pd.DataFrame, regions: dict[str, str], unknown: str) -> pd.DataFrame:
    """A copy of ``frame`` (which has ``store_id``) with a ``region`` column."""
    out = frame.copy()
    out["region"] = [regions.get(str(s), unknown) for s in out["store_id"]]
    return out


@lru_cache(maxsize=4)
def _master(path: str, mtime_ns: int) -> MasterData:
    return load_master_data(Path(path))


def master_data(settings: Settings) -> MasterData | None:
    """The master data file (reread when it changes), or None."""
    path = settings.master_data_file
    if path is None:
        return None
    try:
        return _master(str(path), path.stat().st_mtime_ns)
    except (OSError, MasterDataError):
        return None


def region_label(region_id: str, settings: Settings, lang: str) -> str:
    """A region as people say it: its name in Chinese (华东), its id in English."""
    data = master_data(settings)
    info = data.region_by_id.get(region_id) if data is not None else None
    if info is not None and info.name and lang == "zh":
        return info.name
    return region_id


def store_city(settings: Settings, lang: str = "zh") -> dict[str, str]:
    """store_id -> its city, in the page's language where a name is known."""
    from ctower.dashboard.labels import code_label

    data = master_data(settings)
    if data is None:
        return {}
    return {s.store_id: code_label("city", s.city, lang) for s in data.stores if s.city}


def sku_category(settings: Settings) -> dict[str, str]:
    data = master_data(settings)
    return {s.sku: s.category for s in data.skus if s.category} if data is not None else {}
