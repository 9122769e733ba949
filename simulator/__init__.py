"""``ctower simulate``: the seeded retail chain and its seven event streams.

Programmatic use (tests, the benchmark)::

    from ctower.simulator import SimConfig, Simulator, send
    sim = Simulator(SimConfig(seed=1, events=100_000, incidents=("stock_out",)))
    stats = send(settings, sim.items(), batch=100)
    truth = sim.incident_truth()

Modules: ``chain`` (master data), ``world`` (the chain indexed for the run),
``clock`` (daily curve, pacing), ``generator`` (the event loop), one module
per event family (``sessions``, ``orders``, ``coupons``, ``pickups``,
``shipments``, ``stock``, ``service_desk``, ``guides``) over ``state``,
``hooks`` (where incidents plug in), ``incidents``, ``items`` (what is sent),
``truth``, ``jsonl`` (the ``--out`` file), ``producer`` (Kafka), ``replay``,
``command`` (the click command).
"""

from ctower.simulator.generator import SimConfig, Simulator
from ctower.simulator.producer import SendStats, send
from ctower.simulator.truth import load_truth, store_minute_truth

__all__ = ["SendStats", "SimConfig", "Simulator", "load_truth", "send", "store_minute_truth"]
