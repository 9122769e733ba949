"""The seeded chain: size, structure, and stability under the seed."""

from __future__ import annotations

from ctower.simulator.chain import build_chain


def test_chain_is_big_enough_and_well_formed():
    chain = build_chain(1)
    regions = {r.region_id for r in chain.regions}
    assert len(chain.stores) >= 50
    assert len(regions) >= 5
    assert len(chain.skus) >= 500
    assert len({s.sku for s in chain.skus}) == len(chain.skus)
    assert len({s.store_id for s in chain.stores}) == len(chain.stores)
    for region in chain.regions:
        assert region.warehouse_id == f"WH-{region.region_id}"
        assert len(chain.stores_in(region.region_id)) >= 5
    assert all(s.region_id in regions for s in chain.stores)
    assert all(s.price_fen > 0 for s in chain.skus)
    assert len({s.category for s in chain.skus}) >= 10
    assert all(s.pickup_capacity > 0 and s.pickup_staff > 0 for s in chain.stores)
    pickup = [c for c in chain.campaigns if c.kind == "store_pickup"]
    assert pickup and all(c.sku_idx for c in pickup)
    assert sum(s.legacy_pos for s in chain.stores) == 2


def test_nearest_stores_are_in_region_and_sorted():
    chain = build_chain(1)
    store = chain.stores[0]
    nearest = chain.nearest_stores(store.store_id, k=4)
    assert len(nearest) == 4
    assert all(chain.store(sid).region_id == store.region_id for sid, _ in nearest)
    assert [km for _, km in nearest] == sorted(km for _, km in nearest)
    assert store.store_id not in [sid for sid, _ in nearest]


def test_same_seed_same_chain_other_seed_other_chain():
    assert build_chain(5).to_dict() == build_chain(5).to_dict()
    assert build_chain(5).to_dict() != build_chain(6).to_dict()


def test_every_store_has_its_guides_in_the_master_data_with_shifts_and_caps(tmp_path):
    from ctower.schemas.master_data import load_master_data
    from ctower.simulator.chain import GUIDE_HOURS

    chain = build_chain(3)
    master = load_master_data(chain.write(tmp_path / "master.json"))
    assert len(master.guides) == sum(s.guides for s in chain.stores)
    for store in chain.stores:
        guides = master.guides_at(store.store_id)
        assert len(guides) == store.guides
        assert all(master.guide_by_id[g.guide_id].store_id == store.store_id for g in guides)
        # the store's guide hours are covered from first to last, by one guide or two shifts
        assert min(g.shift_start_hour for g in guides) == GUIDE_HOURS[0]
        assert max(g.shift_end_hour for g in guides) == GUIDE_HOURS[1]
    caps = [g.daily_cap for g in master.guides]
    assert max(set(caps), key=caps.count) == 20 and set(caps) <= {15, 20, 25}
    assert build_chain(3).guides == chain.guides  # stable under the seed
